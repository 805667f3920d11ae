"""Regenerates gpupack/kubeletapi/*_pb2*.py from proto/*.proto with grpcio-tools.

Run `python proto/generate.py` after changing a .proto file; tests/test_proto_generated.py fails
while the committed modules differ from what this would write. The proto file is mapped to the
virtual path gpupack/kubeletapi/ so the generated modules import each other by package path.
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PACKAGE = "gpupack/kubeletapi"


def generate(out_root: pathlib.Path) -> list[pathlib.Path]:
    """Writes generated modules under out_root/gpupack/kubeletapi and returns their paths."""
    from grpc_tools import protoc  # tool dependency, only needed to regenerate

    protos = sorted(PROTO_DIR.glob("*.proto"))
    (out_root / PACKAGE).mkdir(parents=True, exist_ok=True)
    include = str(pathlib.Path(protoc.__file__).parent / "_proto")
    for proto in protos:
        args = [
            "protoc",
            f"-I{PACKAGE}={PROTO_DIR}",
            f"-I{include}",
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}",
            f"{PACKAGE}/{proto.name}",
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto}")
    return sorted((out_root / PACKAGE).glob("*_pb2*.py*"))


def main() -> int:
    check = "--check" in sys.argv
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(pathlib.Path(tmp))
        stale = []
        for path in fresh:
            committed = ROOT / PACKAGE / path.name
            text = path.read_text()
            if not committed.exists() or committed.read_text() != text:
                stale.append(committed)
                if not check:
                    committed.write_text(text)
    if check and stale:
        print("stale generated modules: " + ", ".join(str(p) for p in stale))
        return 1
    print("generated modules are up to date" if not stale else f"wrote {len(stale)} module(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
