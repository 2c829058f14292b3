"""Run mypy on the package dbintel, which lives in services/ (setup.py maps the name).

mypy resolves imports by folder name and cannot follow setuptools' editable finder, so
`import dbintel.common` would not resolve against services/. This script gives mypy a folder
(.ci/work/typecheck, gitignored) holding one link, dbintel -> services, and reports every finding
with its path in services/. The settings are pyproject.toml's [tool.mypy].
Run: python scripts/typecheck.py   (exit code is mypy's; 0 means no errors)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parent.parent
LINK_DIR = ROOT / ".ci" / "work" / "typecheck"


def linked_package() -> Path:
    link = LINK_DIR / "dbintel"
    LINK_DIR.mkdir(parents=True, exist_ok=True)
    if not (link.is_symlink() and link.resolve() == (ROOT / "services").resolve()):
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(ROOT / "services", link, target_is_directory=True)
    return link


def main(argv: list[str]) -> int:
    link = linked_package()
    os.chdir(ROOT)
    stdout, stderr, status = api.run(
        ["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(LINK_DIR / "cache"), *argv, str(link)]
    )
    prefix = f"{link.relative_to(ROOT)}/"
    sys.stdout.write(stdout.replace(prefix, "services/").replace(str(link) + "/", "services/"))
    sys.stderr.write(stderr)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
