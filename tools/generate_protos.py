"""Generate sandboxd's Python stubs for the containerd API subset in proto/.

Usage: python tools/generate_protos.py [--check]

The stubs are written to sandboxd/containerd/_pb/. With --check nothing is written; the
exit status is 1 when the committed stubs differ from freshly generated ones.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "sandboxd" / "containerd" / "_pb"
PACKAGE = "sandboxd.containerd._pb"

# protoc writes imports relative to the proto root ("from containerd.types
# import mount_pb2"); the stubs live inside the sandboxd package instead.
_IMPORT = re.compile(r"^(from|import) containerd\.", re.MULTILINE)


def generate(out_dir: Path) -> None:
    """Run protoc over every file in proto/ and write importable stubs to out_dir."""
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    out_dir.mkdir(parents=True, exist_ok=True)
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            *protos,
        ]
    )
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")
    for stub in [*out_dir.rglob("*_pb2.py"), *out_dir.rglob("*_pb2.pyi")]:
        text = stub.read_text()
        stub.write_text(_IMPORT.sub(rf"\1 {PACKAGE}.containerd.", text))
    for directory in [out_dir, *(p for p in out_dir.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()


def differences(expected: Path, actual: Path) -> list[str]:
    """Return the relative paths whose content differs between two stub trees."""

    def files(root: Path) -> set[str]:
        return {
            str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
        }

    ours, theirs = files(expected), files(actual)
    changed = {
        name for name in ours & theirs if not filecmp.cmp(expected / name, actual / name, shallow=False)
    }
    return sorted((ours ^ theirs) | changed)


def main() -> int:
    """Generate the stubs, or with --check report stale ones."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the committed stubs are stale")
    args = parser.parse_args()
    if not args.check:
        shutil.rmtree(OUT_DIR, ignore_errors=True)
        generate(OUT_DIR)
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        fresh = Path(scratch) / "_pb"
        generate(fresh)
        stale = differences(fresh, OUT_DIR)
    for name in stale:
        print(f"stale: sandboxd/containerd/_pb/{name}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
