"""The public API's OpenAPI 3.1 document, derived from the contract (docs/http-api.md).

The HTTP/JSON edge (shopmesh_platform.http_api) serves ShopService through Envoy's gRPC-JSON transcoder,
which maps requests by the methods' `google.api.http` annotations and prints answers in proto3's JSON
mapping. This module writes down exactly that mapping as OpenAPI, from a descriptor set with source info
(the proto comments become descriptions), so that HTTP clients can be generated, browsed in Swagger UI
and fuzzed (tests/contract/test_http_api_fuzz.py) without a second, hand-written API description to drift.

Hand-written because the generators that do this (gnostic's protoc-gen-openapi, grpc-gateway's
protoc-gen-openapiv2) are Go programs on no registry this project can install from.

What it states, as the transcoder behaves (`transcoder()` in http_api/filters.py):
- paths and methods from `google.api.http`; path variables as path parameters; the other fields of a GET
  request as query parameters (JSON names); a `body: "*"` request's remaining fields as its JSON body;
- field names in their JSON form; int64 as strings, enums by name, Timestamp as RFC 3339, as
  proto3 JSON prints them (no field is marked required: a request may leave any out, and the same message
  schemas serve requests and responses);
- security from the method's `(shopmesh.common.v1.access)` option: bearer JWT unless ACCESS_PUBLIC;
- every error as a google.rpc.Status with its details (ErrorInfo, BadRequest, RetryInfo, ...), the HTTP
  status being gRPC's mapping of the code;
- the `idempotency-key` request and response header on IDEMPOTENT methods;
- the 429 and 503 a client may come back after, with the edge's `Retry-After` header;
- the 401 with the edge's `WWW-Authenticate` bearer challenge;
- a field violation's `field` as the proto name the services give (not the JSON name Google's comment promises).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

FieldProto = descriptor_pb2.FieldDescriptorProto

OPENAPI_VERSION = "3.1.0"
ACCESS_OPTION = "shopmesh.common.v1.access"
ACCESS_PUBLIC = "ACCESS_PUBLIC"
STATUS = "google.rpc.Status"
# Every detail a Status may carry, as the transcoder prints them (the descriptor set holds this file).
ERROR_DETAILS_FILE = "google/rpc/error_details.proto"
SECURITY_SCHEME = "bearerAuth"
IDEMPOTENCY_KEY = "idempotency-key"
# The statuses asking a client to come back later (RESOURCE_EXHAUSTED, UNAVAILABLE; the edge's own 429s and 503s:
# come_back_later_statuses), declared apart from the other errors for the header the edge's own carry when they
# made no call: HTTP's Retry-After, in seconds.
COME_BACK_LATER = "ComeBackLater"
RETRY_AFTER = "Retry-After"
# A 401 (UNAUTHENTICATED), declared apart from the other errors for the bearer challenge the edge adds to every one
# (http_api/challenges.py, RFC 6750 section 3).
UNAUTHENTICATED = "Unauthenticated"
WWW_AUTHENTICATE = "WWW-Authenticate"
# Field descriptions of the descriptor set's that do not hold for this API, by message and field: what the
# document says instead. google.rpc.BadRequest.FieldViolation.field's comment has a JSON client read `fullName`
# where proto has `full_name`; the services name fields by their proto names, and the transcoder passes the
# Status through as it is, so an HTTP/JSON client reads the proto name as a gRPC client does (the storefront
# finds its inputs by them).
_DESCRIPTIONS = {
    ("google.rpc.BadRequest.FieldViolation", "field"): (
        "The path of the field that is bad: dot-separated proto field names, with an index for a repeated one "
        "(`shipping_address.full_name`, `items[0].product_id`). In this API they are the proto names "
        "(snake_case) in JSON too, not the JSON names of the request's schema (`shippingAddress.fullName`): the "
        "same path a gRPC client reads. Empty or absent when the violation is of no one field."
    ),
}

_NOT_A_NUMBER = ["NaN", "Infinity", "-Infinity"]
_INT32 = {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
_UINT32 = {"type": "integer", "format": "uint32", "minimum": 0, "maximum": 2**32 - 1}
# proto3 JSON prints 64-bit integers as strings (a JavaScript number cannot hold them all).
_INT64 = {"type": "string", "format": "int64", "pattern": r"^-?[0-9]+$"}
_UINT64 = {"type": "string", "format": "uint64", "pattern": r"^[0-9]+$"}
_SCALARS: dict[int, dict[str, Any]] = {
    FieldProto.TYPE_STRING: {"type": "string"},
    FieldProto.TYPE_BOOL: {"type": "boolean"},
    FieldProto.TYPE_INT32: _INT32,
    FieldProto.TYPE_SINT32: _INT32,
    FieldProto.TYPE_SFIXED32: _INT32,
    FieldProto.TYPE_UINT32: _UINT32,
    FieldProto.TYPE_FIXED32: _UINT32,
    FieldProto.TYPE_INT64: _INT64,
    FieldProto.TYPE_SINT64: _INT64,
    FieldProto.TYPE_SFIXED64: _INT64,
    FieldProto.TYPE_UINT64: _UINT64,
    FieldProto.TYPE_FIXED64: _UINT64,
    # proto3 JSON writes the values a JSON number cannot hold as strings.
    FieldProto.TYPE_DOUBLE: {"oneOf": [{"type": "number", "format": "double"}, {"enum": _NOT_A_NUMBER}]},
    FieldProto.TYPE_FLOAT: {"oneOf": [{"type": "number", "format": "float"}, {"enum": _NOT_A_NUMBER}]},
    FieldProto.TYPE_BYTES: {"type": "string", "format": "byte"},
}
# Well-known types have their own JSON forms (proto3 JSON mapping).
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
    },
    "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BoolValue": {"type": "boolean"},
    "google.protobuf.Int32Value": _INT32,
    "google.protobuf.UInt32Value": _UINT32,
    "google.protobuf.Int64Value": _INT64,
    "google.protobuf.UInt64Value": _UINT64,
    "google.protobuf.DoubleValue": {"type": "number"},
    "google.protobuf.FloatValue": {"type": "number"},
    "google.protobuf.BytesValue": {"type": "string", "format": "byte"},
}
# descriptor.proto's field numbers, for SourceCodeInfo paths.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM = 2, 3, 4
_SERVICE_METHOD = 2
_ENUM_VALUE = 2
# A variable of a path template: `{order_id}` in `/v1/orders/{order_id}:cancel` (proto's and OpenAPI's alike).
PATH_VARIABLE = re.compile(r"\{([^}]+)\}")


class ContractError(ValueError):
    """The contract cannot be stated as OpenAPI (a method without a route or an access level, ...)."""


@dataclass
class _Contract:
    """The descriptor set, indexed: types by full name, comments by element."""

    pool: descriptor_pool.DescriptorPool
    messages: dict[str, descriptor_pb2.DescriptorProto] = field(default_factory=dict)
    enums: dict[str, descriptor_pb2.EnumDescriptorProto] = field(default_factory=dict)
    comments: dict[str, str] = field(default_factory=dict)
    files: dict[str, descriptor_pb2.FileDescriptorProto] = field(default_factory=dict)

    def method_options(self, method: descriptor_pb2.MethodDescriptorProto) -> Any:
        # Parsed again with the descriptor set's own classes, so that its extensions (google.api.http,
        # shopmesh.common.v1.access) are read without importing generated code, which may be stale
        # while the contracts are being regenerated.
        options_class = message_factory.GetMessageClass(
            self.pool.FindMessageTypeByName("google.protobuf.MethodOptions")
        )
        return options_class.FromString(method.options.SerializeToString())

    def extension(self, options: message.Message, name: str) -> Any:
        return options.Extensions[self.pool.FindExtensionByName(name)]  # type: ignore[index]


def document(descriptor_set: bytes, service: str, *, servers: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """The OpenAPI document of `service` (a full name) as served over HTTP/JSON, from a descriptor set that
    holds it with every import (`protoc --include_imports`; `--include_source_info` for descriptions)."""
    contract = _index(descriptor_pb2.FileDescriptorSet.FromString(descriptor_set))
    file, index, proto = _find_service(contract, service)
    schemas = _Schemas(contract)
    paths: dict[str, dict[str, Any]] = {}
    for method_index, method in enumerate(proto.method):
        comment = contract.comments.get(f"{file.name}:{_FILE_SERVICE}.{index}.{_SERVICE_METHOD}.{method_index}", "")
        route, operation = _operation(contract, schemas, service, method, comment)
        verb, path = route
        if verb in paths.setdefault(path, {}):
            raise ContractError(f"{service}.{method.name}: {verb.upper()} {path} is another method's route")
        paths[path][verb] = operation
    schemas.add(STATUS)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": service,
            "version": service.rsplit(".", 2)[-2],
            "description": contract.comments.get(f"{file.name}:{_FILE_SERVICE}.{index}", ""),
        },
        **({"servers": servers} if servers else {}),
        "tags": [{"name": proto.name}],
        "paths": paths,
        "components": {
            "schemas": schemas.all(),
            "responses": {
                "Error": _error_response(),
                UNAUTHENTICATED: _unauthenticated_response(),
                COME_BACK_LATER: _come_back_later_response(),
            },
            "securitySchemes": {
                SECURITY_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "The access token from Login (`POST /v1/login`).",
                }
            },
        },
    }


def _index(descriptors: descriptor_pb2.FileDescriptorSet) -> _Contract:
    pool = descriptor_pool.DescriptorPool()
    contract = _Contract(pool)
    for file in descriptors.file:
        pool.Add(file)
        contract.files[file.name] = file
        prefix = f".{file.package}" if file.package else ""
        for location in file.source_code_info.location:
            text = _comment(location)
            if text:
                contract.comments[f"{file.name}:{'.'.join(map(str, location.path))}"] = text
        for index, proto in enumerate(file.message_type):
            _index_message(contract, file.name, f"{prefix}.{proto.name}", proto, f"{_FILE_MESSAGE}.{index}")
        for index, enum in enumerate(file.enum_type):
            _index_enum(contract, file.name, f"{prefix}.{enum.name}", enum, f"{_FILE_ENUM}.{index}")
    return contract


def _index_message(contract: _Contract, file: str, name: str, proto: descriptor_pb2.DescriptorProto, path: str) -> None:
    contract.messages[name] = proto
    _name_comment(contract, file, path, name)
    for index, _ in enumerate(proto.field):
        text = contract.comments.get(f"{file}:{path}.{_MESSAGE_FIELD}.{index}")
        if text:
            contract.comments[f"{name}#{index}"] = text
    for index, nested in enumerate(proto.nested_type):
        _index_message(contract, file, f"{name}.{nested.name}", nested, f"{path}.{_MESSAGE_NESTED}.{index}")
    for index, enum in enumerate(proto.enum_type):
        _index_enum(contract, file, f"{name}.{enum.name}", enum, f"{path}.{_MESSAGE_ENUM}.{index}")


def _index_enum(contract: _Contract, file: str, name: str, enum: descriptor_pb2.EnumDescriptorProto, path: str) -> None:
    contract.enums[name] = enum
    _name_comment(contract, file, path, name)
    for index, value in enumerate(enum.value):
        _name_comment(contract, file, f"{path}.{_ENUM_VALUE}.{index}", f"{name}={value.name}")


def _name_comment(contract: _Contract, file: str, path: str, name: str) -> None:
    text = contract.comments.get(f"{file}:{path}")
    if text:
        contract.comments[name] = text


def _comment(location: descriptor_pb2.SourceCodeInfo.Location) -> str:
    lines = [line[1:] if line.startswith(" ") else line for line in location.leading_comments.splitlines()]
    return "\n".join(lines).strip()


def _find_service(
    contract: _Contract, service: str
) -> tuple[descriptor_pb2.FileDescriptorProto, int, descriptor_pb2.ServiceDescriptorProto]:
    package, _, name = service.rpartition(".")
    for file in contract.files.values():
        if file.package != package:
            continue
        for index, proto in enumerate(file.service):
            if proto.name == name:
                return file, index, proto
    raise ContractError(f"{service}: not in the descriptor set")


def _operation(
    contract: _Contract,
    schemas: _Schemas,
    service: str,
    method: descriptor_pb2.MethodDescriptorProto,
    comment: str,
) -> tuple[tuple[str, str], dict[str, Any]]:
    name = f"{service}.{method.name}"
    options = contract.method_options(method)
    rule = contract.extension(options, "google.api.http")
    verb = rule.WhichOneof("pattern")
    if verb is None or verb == "custom":
        raise ContractError(f"{name}: no google.api.http route (every method of the public API needs one)")
    if rule.additional_bindings:
        raise ContractError(f"{name}: additional_bindings are not stated in the OpenAPI document yet")
    if rule.response_body:
        raise ContractError(f"{name}: response_body is not stated in the OpenAPI document yet")
    if method.client_streaming or method.server_streaming:
        raise ContractError(f"{name}: a streaming method is not stated in the OpenAPI document yet")
    template = getattr(rule, verb)
    access = contract.extension(options, ACCESS_OPTION)
    access_name = contract.pool.FindEnumTypeByName("shopmesh.common.v1.Access").values_by_number[access].name
    if access_name == "ACCESS_UNSPECIFIED":
        raise ContractError(f"{name}: no ({ACCESS_OPTION}) option: say whether it is public")
    request_type = method.input_type.lstrip(".")
    request = contract.messages[f".{request_type}"]
    variables = [match.group(1) for match in PATH_VARIABLE.finditer(template)]
    fields = {f.name: f for f in request.field}
    for variable in variables:
        if "=" in variable or "." in variable:
            raise ContractError(f"{name}: path variable {{{variable}}}: only a plain field name is stated yet")
        if variable not in fields or fields[variable].type != FieldProto.TYPE_STRING:
            raise ContractError(f"{name}: path variable {{{variable}}} is not a string field of {request_type}")
    parameters: list[dict[str, Any]] = [
        {
            "name": variable,
            "in": "path",
            "required": True,
            "description": _field_comment(contract, request_type, request, variable),
            "schema": {"type": "string"},
        }
        for variable in variables
    ]
    idempotent = options.idempotency_level == descriptor_pb2.MethodOptions.IDEMPOTENT
    if idempotent:
        parameters.append(
            {
                "name": IDEMPOTENCY_KEY,
                "in": "header",
                "required": False,
                "description": "1-255 printable ASCII characters, no comma, a UUID per attempt at this change; "
                "the gateway makes one up when it is missing. A retry with the same key never repeats it.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            }
        )
    summary, _, _ = comment.partition("\n\n")
    operation: dict[str, Any] = {
        "operationId": method.name,
        "tags": [service.rsplit(".", 1)[-1]],
        "summary": " ".join(summary.split()).split(". ")[0].rstrip("."),
        "description": comment,
    }
    body = rule.body
    if body and body != "*":
        raise ContractError(f'{name}: body "{body}": only "*" or none is stated in the OpenAPI document yet')
    rest = [f for f in request.field if f.name not in variables]
    if body == "*":
        if variables:
            schema: dict[str, Any] = schemas.object(request_type, request, rest)
        else:
            schema = schemas.ref(request_type)
        # An empty or missing body is the empty message, as in gRPC.
        operation["requestBody"] = {"required": False, "content": {"application/json": {"schema": schema}}}
    else:
        parameters.extend(_query_parameters(contract, schemas, request_type, request, rest))
    if parameters:
        operation["parameters"] = parameters
    response_type = method.output_type.lstrip(".")
    success: dict[str, Any] = {
        "description": "OK",
        "content": {"application/json": {"schema": schemas.ref(response_type)}},
    }
    if idempotent:
        success["headers"] = {
            IDEMPOTENCY_KEY: {"description": "The key the gateway used.", "schema": {"type": "string"}}
        }
    come_back_later = {"$ref": f"#/components/responses/{COME_BACK_LATER}"}
    operation["responses"] = {
        "200": success,
        "401": {"$ref": f"#/components/responses/{UNAUTHENTICATED}"},
        **dict.fromkeys(come_back_later_statuses(), come_back_later),
        "default": {"$ref": "#/components/responses/Error"},
    }
    operation["security"] = [] if access_name == ACCESS_PUBLIC else [{SECURITY_SCHEME: []}]
    return (verb, template), operation


def _query_parameters(
    contract: _Contract,
    schemas: _Schemas,
    type_name: str,
    request: descriptor_pb2.DescriptorProto,
    fields: list[descriptor_pb2.FieldDescriptorProto],
) -> Iterator[dict[str, Any]]:
    for proto in fields:
        if proto.type in (FieldProto.TYPE_MESSAGE, FieldProto.TYPE_GROUP):
            raise ContractError(f"{type_name}.{proto.name}: a message field in a GET is not stated yet")
        yield {
            "name": proto.json_name,
            "in": "query",
            "required": False,
            "description": _field_comment(contract, type_name, request, proto.name),
            "schema": schemas.field(proto),
        }


def _field_comment(contract: _Contract, type_name: str, proto: descriptor_pb2.DescriptorProto, name: str) -> str:
    index = next(i for i, f in enumerate(proto.field) if f.name == name)
    return contract.comments.get(f".{type_name}#{index}", "")


def _error_response() -> dict[str, Any]:
    return {
        "description": "The call failed: the HTTP status is gRPC's mapping of the code (INVALID_ARGUMENT → "
        "400, UNAUTHENTICATED → 401, NOT_FOUND → 404, FAILED_PRECONDITION → 400, RESOURCE_EXHAUSTED → 429, "
        "UNAVAILABLE → 503, ...) and the body the google.rpc.Status with its details.",
        "headers": {
            IDEMPOTENCY_KEY: {
                "description": "On a change (IDEMPOTENT method): the key the gateway used, to retry with.",
                "schema": {"type": "string"},
            }
        },
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{STATUS}"}}},
    }


def come_back_later_statuses() -> list[str]:
    """The statuses declared ComeBackLater, as the document's response keys: the edge's COME_BACK_LATER_STATUSES
    (http_api/local_replies.py), the statuses of RESOURCE_EXHAUSTED and UNAVAILABLE too."""
    # Imported here: the edge's package imports this module (its routes read PATH_VARIABLE).
    from .http_api.local_replies import COME_BACK_LATER_STATUSES

    return [str(status) for status in sorted(COME_BACK_LATER_STATUSES)]


def _come_back_later_response() -> dict[str, Any]:
    """An Error asking the client to come back later: the Status's RetryInfo says when, and the edge's own answers
    that made no call (the gateway not taking the call; a 429 of the edge's own, which ships no rate limit) say it
    in Retry-After too, for a client reading no JSON. A 503 saying neither may come after the call was carried
    out."""
    error = _error_response()
    return {
        **error,
        "description": "Come back later: RESOURCE_EXHAUSTED → 429 (the gateway's rate limit), UNAVAILABLE → 503 "
        "(the gateway or a service behind it away); a 429 of the edge's own (none by default) carries UNAVAILABLE. "
        "The google.rpc.Status's RetryInfo, when it has one, says how long to wait. "
        "A 503 with neither a RetryInfo nor Retry-After (the gateway's connection lost after the request reached "
        "it) may have been carried out: send a change again only with the same idempotency-key.",
        "headers": {
            RETRY_AFTER: {
                "description": "On the edge's own answers that made no call (the gateway not taking the call; "
                "a 429 of the edge's own, none by default): the seconds to wait before trying again, as their "
                "RetryInfo says. The gateway's own say it in the RetryInfo only.",
                "schema": {"type": "integer", "minimum": 0},
            },
            **error["headers"],
        },
    }


def _unauthenticated_response() -> dict[str, Any]:
    """An Error of UNAUTHENTICATED (401), with the bearer challenge the edge adds to every one: any operation may
    answer it (a protected one without a valid token; Login for a wrong password), and a 401 of any carries the
    challenge: every operation declares it."""
    # Imported here: the edge's package imports this module (its routes read PATH_VARIABLE).
    from .http_api.challenges import BEARER_CHALLENGE, INVALID_TOKEN_CHALLENGE, INVALID_TOKEN_REASONS

    error = _error_response()
    return {
        **error,
        "description": "UNAUTHENTICATED: a protected operation's token missing (ErrorInfo reason TOKEN_MISSING), "
        f"or refused ({', '.join(INVALID_TOKEN_REASONS)}); Login's e-mail or password refused "
        "(INVALID_CREDENTIALS).",
        "headers": {
            WWW_AUTHENTICATE: {
                "description": f"The bearer challenge (RFC 6750): `{INVALID_TOKEN_CHALLENGE}` when the token sent "
                f"was refused ({', '.join(INVALID_TOKEN_REASONS)}), else `{BEARER_CHALLENGE}` (no token sent, "
                "or no token's refusal).",
                "required": True,
                "schema": {"type": "string", "enum": [BEARER_CHALLENGE, INVALID_TOKEN_CHALLENGE]},
            },
            **error["headers"],
        },
    }


class _Schemas:
    """The component schemas the document refers to, added as they are first referred to."""

    def __init__(self, contract: _Contract) -> None:
        self._contract = contract
        self._schemas: dict[str, dict[str, Any]] = {}

    def all(self) -> dict[str, dict[str, Any]]:
        return dict(sorted(self._schemas.items()))

    def ref(self, type_name: str) -> dict[str, Any]:
        if type_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[type_name])
        self.add(type_name)
        return {"$ref": f"#/components/schemas/{type_name}"}

    def add(self, type_name: str) -> None:
        if type_name in self._schemas:
            return
        if f".{type_name}" in self._contract.enums:
            self._schemas[type_name] = self._enum(type_name)
            return
        proto = self._contract.messages.get(f".{type_name}")
        if proto is None:
            raise ContractError(f"{type_name}: not in the descriptor set")
        self._schemas[type_name] = {}  # Placeholder: a message may refer to itself.
        self._schemas[type_name] = self.object(type_name, proto, list(proto.field))
        if type_name == STATUS:
            self._schemas[type_name]["properties"]["details"]["items"] = self._details()

    def object(
        self,
        type_name: str,
        proto: descriptor_pb2.DescriptorProto,
        fields: list[descriptor_pb2.FieldDescriptorProto],
    ) -> dict[str, Any]:
        if any(not f.proto3_optional and f.HasField("oneof_index") for f in fields):
            raise ContractError(f"{type_name}: a oneof is not stated in the OpenAPI document yet")
        properties = {}
        for proto_field in fields:
            schema = self.field(proto_field)
            text = _DESCRIPTIONS.get((type_name, proto_field.name)) or _field_comment(
                self._contract, type_name, proto, proto_field.name
            )
            properties[proto_field.json_name] = {**schema, "description": text} if text else schema
        # proto3 JSON ignores a key it does not know, but not an empty one ("Proto fields must have a name").
        schema = {"type": "object", "properties": properties, "propertyNames": {"minLength": 1}}
        description = self._contract.comments.get(f".{type_name}")
        return {"description": description, **schema} if description else schema

    def field(self, proto: descriptor_pb2.FieldDescriptorProto) -> dict[str, Any]:
        entry = self._map_entry(proto)
        if entry is not None:
            key, value = entry.field
            if key.type != FieldProto.TYPE_STRING:
                raise ContractError(f"{proto.name}: only maps with string keys are stated yet")
            return {"type": "object", "additionalProperties": self._single(value)}
        single = self._single(proto)
        if proto.label == FieldProto.LABEL_REPEATED:
            return {"type": "array", "items": single}
        return single

    def _single(self, proto: descriptor_pb2.FieldDescriptorProto) -> dict[str, Any]:
        if proto.type in _SCALARS:
            return dict(_SCALARS[proto.type])
        if proto.type in (FieldProto.TYPE_MESSAGE, FieldProto.TYPE_ENUM):
            return self.ref(proto.type_name.lstrip("."))
        raise ContractError(f"{proto.name}: field type {proto.type} is not stated yet")

    def _map_entry(self, proto: descriptor_pb2.FieldDescriptorProto) -> descriptor_pb2.DescriptorProto | None:
        if proto.type != FieldProto.TYPE_MESSAGE or proto.label != FieldProto.LABEL_REPEATED:
            return None
        entry = self._contract.messages.get(proto.type_name)
        return entry if entry is not None and entry.options.map_entry else None

    def _enum(self, type_name: str) -> dict[str, Any]:
        enum = self._contract.enums[f".{type_name}"]
        schema: dict[str, Any] = {"type": "string", "enum": [value.name for value in enum.value]}
        # The values' own comments, as a list under the type's: JSON Schema has no place per value.
        values = [
            f"- `{value.name}`: {' '.join(text.split())}"
            for value in enum.value
            if (text := self._contract.comments.get(f".{type_name}={value.name}"))
        ]
        description = "\n\n".join(filter(None, [self._contract.comments.get(f".{type_name}"), "\n".join(values)]))
        return {"description": description, **schema} if description else schema

    def _details(self) -> dict[str, Any]:
        """Any detail of google/rpc/error_details.proto, told apart by its "@type"."""
        file = self._contract.files.get(ERROR_DETAILS_FILE)
        if file is None:
            raise ContractError(f"{ERROR_DETAILS_FILE}: not in the descriptor set (the transcoder needs it too)")
        variants = []
        for proto in file.message_type:
            type_name = f"{file.package}.{proto.name}"
            self.add(type_name)
            variants.append(
                {
                    "allOf": [
                        {
                            "type": "object",
                            "properties": {"@type": {"const": f"type.googleapis.com/{type_name}"}},
                            "required": ["@type"],
                        },
                        {"$ref": f"#/components/schemas/{type_name}"},
                    ]
                }
            )
        return {"oneOf": variants}
