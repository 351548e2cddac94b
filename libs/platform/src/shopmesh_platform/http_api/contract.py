"""The API the edge serves, as the contracts package generates it: ShopService, its descriptor set (which
the transcoder reads) and its OpenAPI document (which the routes are made from)."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

from google.protobuf import descriptor_pb2

PUBLIC_SERVICE = "shopmesh.gateway.v1.ShopService"
# The descriptor set generated with the contracts (libs/contracts/generate.py).
DESCRIPTOR_PACKAGE = "shopmesh.gateway.v1"
DESCRIPTOR_FILE = "shop.binpb"
OPENAPI_FILE = "shop.openapi.json"


def descriptor_set() -> Path:
    """The generated descriptor set of the public API, where the contracts package keeps it."""
    return _generated(DESCRIPTOR_FILE, "descriptor set")


def openapi_document() -> Path:
    """The generated OpenAPI document of the public API, where the contracts package keeps it."""
    return _generated(OPENAPI_FILE, "OpenAPI document")


def _generated(name: str, what: str) -> Path:
    path = Path(str(importlib.resources.files(DESCRIPTOR_PACKAGE) / name))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the API's {what} is missing; run `make proto`")
    return path


def api_paths() -> dict[str, list[str]]:
    """The API's paths (as OpenAPI templates, `/v1/orders/{order_id}`) → their HTTP methods, from the OpenAPI
    document generated with the contracts."""
    document = json.loads(openapi_document().read_text())
    return {path: sorted(verb.upper() for verb in verbs) for path, verbs in document["paths"].items()}


def body_methods() -> dict[str, list[str]]:
    """The API's paths → their HTTP methods whose body is the whole request (`body: "*"`: the OpenAPI document
    gives them a request body and no query parameters; its generator states no other body)."""
    document = json.loads(openapi_document().read_text())
    return {
        path: sorted(verb.upper() for verb, operation in verbs.items() if "requestBody" in operation)
        for path, verbs in document["paths"].items()
    }


def singular_query_parameters() -> dict[str, list[str]]:
    """The API's paths → the query parameters of their GET (by the JSON names the OpenAPI document gives them)
    that take one value: every one whose schema is not an array (a repeated field's)."""
    document = json.loads(openapi_document().read_text())
    return {
        path: sorted(
            parameter["name"]
            for parameter in verbs["get"].get("parameters", [])
            if parameter["in"] == "query" and parameter.get("schema", {}).get("type") != "array"
        )
        for path, verbs in document["paths"].items()
        if "get" in verbs
    }


def _public_methods() -> list[descriptor_pb2.MethodDescriptorProto]:
    """ShopService's methods, from the descriptor set the transcoder reads."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set().read_bytes())
    package, service = PUBLIC_SERVICE.rsplit(".", 1)
    return [
        method
        for file in files.file
        if file.package == package
        for declared in file.service
        if declared.name == service
        for method in declared.method
    ]


def api_methods() -> list[str]:
    """ShopService's methods, by name."""
    return sorted(method.name for method in _public_methods())


def single_request_methods() -> list[str]:
    """ShopService's methods whose client sends one message (unary, or server streaming), by name."""
    return sorted(method.name for method in _public_methods() if not method.client_streaming)
