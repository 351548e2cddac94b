"""The services' contracts as one descriptor set (a protoset) for grpcurl: the mesh admits no caller to a
service's reflection (as the charts' policy on Kubernetes), so a tool calling a service through its sidecar
takes the contracts from a file instead (`grpcurl -protoset`)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from grpc_health.v1 import health_pb2

from shopmesh_chassis.local_stack import make_private_folder, write_private_file

PROTOSET_FILE = "contracts.binpb"


def write_protoset(path: Path, grpc_services: Iterable[str]) -> Path:
    """The files that declare `grpc_services` (full names) and grpc.health.v1, with everything they import."""
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def add(file: FileDescriptor) -> None:
        if file.name in files:
            return
        # grpcurl wants a file's imports in the set before it.
        for dependency in file.dependencies:
            add(dependency)
        files[file.name] = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(files[file.name])

    for name in grpc_services:
        add(_service_file(name))
    add(descriptor_pool.Default().FindFileByName(health_pb2.DESCRIPTOR.name))
    make_private_folder(path.parent)
    write_private_file(path, descriptor_pb2.FileDescriptorSet(file=list(files.values())).SerializeToString())
    return path


def methods_of(grpc_service: str) -> tuple[str, ...]:
    """The method names of the gRPC service `grpc_service` (full name), in the contract's order."""
    return tuple(method.name for method in _service(grpc_service).methods)


def _service_file(name: str) -> FileDescriptor:
    file: FileDescriptor = _service(name).file
    return file


def _service(name: str) -> ServiceDescriptor:
    """The gRPC service `name`, once its package's generated modules are imported (they add their files to
    the default pool)."""
    package = importlib.import_module(name.rpartition(".")[0])
    for module in pkgutil.iter_modules(package.__path__):
        if module.name.endswith("_pb2"):
            importlib.import_module(f"{package.__name__}.{module.name}")
    service: ServiceDescriptor = descriptor_pool.Default().FindServiceByName(name)
    return service
