"""The files of this work tree as a commit of it would hold them (shared by the packaging tests)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def tree_files() -> list[Path]:
    """Tracked files plus untracked ones git does not ignore, relative to the root; deleted ones left out."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    return sorted({Path(name) for name in listed.split("\0") if name and (ROOT / name).is_file()})
