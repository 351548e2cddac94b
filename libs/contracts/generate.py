"""Regenerate the Python contracts package from protos/.

Writes messages (`*_pb2.py`), gRPC stubs (`*_pb2_grpc.py`) and mypy stubs for both (`*.pyi`) into
libs/contracts/src/shopmesh/. The output is committed; `make lint` runs this and fails if git sees a
difference, so the committed code always matches the contracts.

Generation uses grpcio-tools' bundled protoc (the same version that pins the protobuf runtime) rather
than `buf generate`, whose remote plugins need a registry we cannot reach; buf still lints and checks
breaking changes.

Also written: the public API's descriptor set (`shopmesh/gateway/v1/shop.binpb`: ShopService with every file it
imports, and google.rpc's error details), which Envoy's gRPC-JSON transcoder reads to serve the API as HTTP/JSON
(docs/http-api.md), and the same API's OpenAPI document (`shopmesh/gateway/v1/shop.openapi.json`, from
shopmesh_platform.openapi, with the proto comments as descriptions), which the edge serves at /openapi.json.
protos/google/api holds googleapis' HTTP annotations, vendored so that buf and protoc resolve
the import without a registry; they must stay the very files googleapis-common-protos ships, whose generated
Python (`google.api.annotations_pb2`) the contracts import at run time.
"""

from __future__ import annotations

import filecmp
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Needs no generated contracts (unlike shopmesh_platform.http_api, imported where used).
from shopmesh_platform.openapi import ContractError

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
OUT = ROOT / "libs" / "contracts" / "src"
PACKAGE = OUT / "shopmesh"
# Vendored third-party protos (not generated here: googleapis-common-protos ships their Python).
VENDORED = PROTOS / "google"
# The public API, whose descriptor set the HTTP/JSON edge (Envoy) transcodes with.
PUBLIC_API = "shopmesh/gateway/v1/shop.proto"
DESCRIPTOR_SET = "shopmesh/gateway/v1/shop.binpb"
OPENAPI = "shopmesh/gateway/v1/shop.openapi.json"
# Where the HTTP API is: wherever the document itself was fetched from (OpenAPI resolves a relative server URL
# against the document's own address). A fixed http://localhost:8080 sent a Swagger UI or a generated client on
# another machine (a stack in a VM, `make run HOST=`), or beside a --free-ports stack, to an address with nothing.
OPENAPI_SERVERS = [{"url": "/", "description": "the edge that served this document (make run, port-forward, ingress)"}]
# The error details the services send, so the transcoder can print them as JSON.
ERROR_DETAILS = ("google/rpc/status.proto", "google/rpc/error_details.proto")


def googleapis_protos() -> Path:
    """Where googleapis-common-protos keeps its .proto files (google/api, google/rpc)."""
    import google.rpc.status_pb2

    return Path(google.rpc.status_pb2.__file__).resolve().parents[2]


def generate(out: Path) -> int:
    """Write the package for every .proto under protos/ into `out` (which must not exist yet)."""
    sources = sorted(p.relative_to(PROTOS).as_posix() for p in PROTOS.rglob("*.proto") if VENDORED not in p.parents)
    if not sources:
        raise SystemExit("generate: no .proto files under protos/")
    package = out / "shopmesh"
    package.mkdir(parents=True)
    bin_dir = Path(sys.executable).parent
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTOS}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out=quiet:{out}",
        f"--mypy_grpc_out=quiet:{out}",
        *sources,
    ]
    subprocess.run(cmd, check=True, cwd=PROTOS)
    _write_descriptor_set(out / DESCRIPTOR_SET)
    _write_openapi(out / OPENAPI)
    # Regular packages (not namespace packages) so that mypy, hatchling and importlib agree.
    for directory in [package, *(d for d in package.rglob("*") if d.is_dir())]:
        (directory / "__init__.py").touch()
    (package / "py.typed").touch()
    return len(sources)


def _write_descriptor_set(path: Path, *options: str) -> None:
    """The public API with every file it imports, and the error details, as one descriptor set."""
    argv = [sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={PROTOS}", f"--proto_path={googleapis_protos()}"]
    argv += ["--include_imports", *options, f"--descriptor_set_out={path}", PUBLIC_API, *ERROR_DETAILS]
    subprocess.run(argv, check=True, cwd=PROTOS)


def _write_openapi(path: Path) -> None:
    """The OpenAPI document, from the descriptor set again, this time with the comments (source info) the
    transcoder does not need."""
    # Imported here: the contracts are regenerated before anything that uses them is.
    from shopmesh_platform.http_api import PUBLIC_SERVICE
    from shopmesh_platform.openapi import document

    with tempfile.TemporaryDirectory() as scratch:
        annotated = Path(scratch) / "annotated.binpb"
        _write_descriptor_set(annotated, "--include_source_info")
        spec = document(annotated.read_bytes(), PUBLIC_SERVICE, servers=OPENAPI_SERVERS)
    path.write_text(json.dumps(spec, indent=2, ensure_ascii=False) + "\n")


def _differences(left: Path, right: Path) -> list[str]:
    comparison = filecmp.dircmp(left, right, ignore=["__pycache__"])
    found = [f"only in {left}: {n}" for n in comparison.left_only] + [
        f"only in {right}: {n}" for n in comparison.right_only
    ]
    for name in comparison.common_files:
        if (left / name).read_bytes() != (right / name).read_bytes():
            found.append(f"differs: {right / name}")
    for name in comparison.common_dirs:
        found.extend(_differences(left / name, right / name))
    return found


def _vendored_drift() -> list[str]:
    upstream = googleapis_protos()
    return [
        f"differs from googleapis-common-protos' {upstream / path.relative_to(PROTOS)}: {path} "
        "(copy it over: the generated Python of that package is what runs)"
        for path in sorted(VENDORED.rglob("*.proto"))
        if not (upstream / path.relative_to(PROTOS)).is_file()
        or (upstream / path.relative_to(PROTOS)).read_bytes() != path.read_bytes()
    ]


def main() -> int:
    with tempfile.TemporaryDirectory() as scratch:
        try:
            count = generate(Path(scratch) / "out")
        except ContractError as error:
            # A contract mistake (a method without a route or an access option): its message names the method
            # and the fix, which a traceback through the OpenAPI writer would bury.
            print(f"error: {error}", file=sys.stderr)
            return 1
        fresh = Path(scratch) / "out" / "shopmesh"
        if "--check" in sys.argv[1:]:
            stale = _differences(fresh, PACKAGE) if PACKAGE.exists() else [f"missing: {PACKAGE}"]
            stale += _vendored_drift()
            if stale:
                print("\n".join(stale), file=sys.stderr)
                print(
                    "error: generated contracts are stale: run `make proto` and commit libs/contracts/src",
                    file=sys.stderr,
                )
                return 1
            print(f"generate: {PACKAGE.relative_to(ROOT)} matches {count} proto files")
            return 0
        shutil.rmtree(PACKAGE, ignore_errors=True)
        shutil.copytree(fresh, PACKAGE)
    print(f"generate: {count} proto files -> {PACKAGE.relative_to(ROOT)}")
    # The gateway chart holds its own copy of the descriptor set and OpenAPI document; `make proto` runs both.
    print("generate: now run k8s/http_api.py for the gateway chart's copies (`make proto` runs both)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
