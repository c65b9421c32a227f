"""Generate the Python gRPC code beside the .proto files.

    python protos/gen.py           # write speechadapt/v1/*_pb2*.py(i)
    python protos/gen.py --check   # exit 1 if the committed code is stale
"""

from __future__ import annotations

import argparse
import filecmp
import pathlib
import sys
import tempfile

from grpc_tools import protoc

import grpc_tools

ROOT = pathlib.Path(__file__).resolve().parent
PROTOS = sorted((ROOT / "speechadapt" / "v1").glob("*.proto"))


def generate(out: pathlib.Path) -> list[pathlib.Path]:
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"]
    args += [str(p.relative_to(ROOT)) for p in PROTOS]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p.relative_to(out) for p in (out / "speechadapt" / "v1").glob("*_pb2*"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare with the committed code instead of writing")
    args = ap.parse_args()
    if not args.check:
        for f in generate(ROOT):
            print("wrote", f)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(pathlib.Path(tmp))
        committed = sorted(p.relative_to(ROOT) for p in (ROOT / "speechadapt" / "v1").glob("*_pb2*"))
        stale = [str(f) for f in fresh if not (ROOT / f).exists() or not filecmp.cmp(ROOT / f, pathlib.Path(tmp) / f, shallow=False)]
        stale += [str(f) for f in committed if f not in fresh]
        if stale:
            print("stale generated code (run `make proto`):", ", ".join(stale))
            return 1
    print("generated code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
