"""Regenerate the Python contracts package from protos/.

Writes messages (`*_pb2.py`), gRPC stubs (`*_pb2_grpc.py`) and mypy stubs for both (`*.pyi`) into
libs/contracts/src/shopmesh/. The output is committed; `make lint` runs this and fails if git sees a
difference, so the committed code always matches the contracts.

Generation uses grpcio-tools' bundled protoc (the same version that pins the protobuf runtime) rather
than `buf generate`, whose remote plugins need a registry we cannot reach; buf still lints and checks
breaking changes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
OUT = ROOT / "libs" / "contracts" / "src"
PACKAGE = OUT / "shopmesh"


def main() -> int:
    sources = sorted(p.relative_to(PROTOS).as_posix() for p in PROTOS.rglob("*.proto"))
    if not sources:
        print("generate: no .proto files under protos/", file=sys.stderr)
        return 1
    shutil.rmtree(PACKAGE, ignore_errors=True)
    PACKAGE.mkdir(parents=True)
    bin_dir = Path(sys.executable).parent
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTOS}",
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={OUT}",
        f"--mypy_grpc_out={OUT}",
        *sources,
    ]
    subprocess.run(cmd, check=True, cwd=PROTOS)
    # Regular packages (not namespace packages) so that mypy, hatchling and importlib agree.
    for directory in [PACKAGE, *(d for d in PACKAGE.rglob("*") if d.is_dir())]:
        (directory / "__init__.py").touch()
    (PACKAGE / "py.typed").touch()
    print(f"generate: {len(sources)} proto files -> {PACKAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
