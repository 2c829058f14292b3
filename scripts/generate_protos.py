"""Generate the Python gRPC stubs (with .pyi) from protos/ into services/v1 (import path dbintel.v1).

The stubs are committed and never hand-edited; tests/unit/test_protos_fresh.py fails when they
are stale. Run: python scripts/generate_protos.py [--check]
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUTPUT_PACKAGE = ROOT / "services" / "v1"  # installed as the package dbintel.v1
INIT_TEXT = '"""Generated gRPC stubs for the dbintel.v1 protocol (scripts/generate_protos.py). Do not edit."""\n'


def generate(into: Path) -> list[Path]:
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={into}",
        f"--pyi_out={into}",
        f"--grpc_python_out={into}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated = into / "dbintel" / "v1"
    (generated / "__init__.py").write_text(INIT_TEXT)
    return sorted(generated.iterdir())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed stubs are stale")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
        if options.check:
            stale = [
                f.name
                for f in files
                if not (OUTPUT_PACKAGE / f.name).exists() or not filecmp.cmp(f, OUTPUT_PACKAGE / f.name, shallow=False)
            ]
            extra = sorted({p.name for p in OUTPUT_PACKAGE.glob("*.py*")} - {f.name for f in files})
            if stale or extra:
                print(f"stale stubs: {stale} extra: {extra}; run python scripts/generate_protos.py")
                return 1
            return 0
        if OUTPUT_PACKAGE.exists():
            shutil.rmtree(OUTPUT_PACKAGE)
        OUTPUT_PACKAGE.mkdir(parents=True)
        for f in files:
            shutil.copy2(f, OUTPUT_PACKAGE / f.name)
    print(f"generated {len(files)} files into {OUTPUT_PACKAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
