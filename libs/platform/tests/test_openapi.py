"""The OpenAPI document as shopmesh_platform.openapi derives it from a contract: compiled by the real protoc
(grpcio-tools) from the shop's own protos, and from small contracts written here for the cases the shop's
does not have. (That the document matches what the edge answers: tests/contract/test_http_api_fuzz.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
from openapi_spec_validator import validate

from shopmesh.common.v1 import access_pb2
from shopmesh.gateway.v1 import shop_pb2
from shopmesh_platform.http_api import BEARER_CHALLENGE, INVALID_TOKEN_CHALLENGE, openapi_document
from shopmesh_platform.openapi import SECURITY_SCHEME, ContractError, document

ROOT = Path(__file__).resolve().parents[3]
PROTOS = ROOT / "protos"
SERVICE = "shopmesh.gateway.v1.ShopService"


def googleapis() -> Path:
    import google.rpc.status_pb2

    return Path(google.rpc.status_pb2.__file__).resolve().parents[2]


def compiled(proto_path: Path, *files: str) -> bytes:
    """The descriptor set protoc makes of these files, with their imports and comments."""
    out = proto_path / "out.binpb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={proto_path}",
            f"--proto_path={PROTOS}",
            f"--proto_path={googleapis()}",
            "--include_imports",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *files,
            "google/rpc/status.proto",
            "google/rpc/error_details.proto",
        ],
        check=True,
        cwd=proto_path,
    )
    return out.read_bytes()


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return document(compiled(tmp_path_factory.mktemp("shop"), "shopmesh/gateway/v1/shop.proto"), SERVICE)


def test_the_document_is_valid_openapi_3_1(shop: dict[str, Any]) -> None:
    validate(shop)
    assert shop["openapi"] == "3.1.0"


def test_the_committed_document_is_the_one_the_contract_gives(shop: dict[str, Any]) -> None:
    committed = json.loads(openapi_document().read_text())
    # Relative: the edge that served the document, wherever it is (a VM's address, a --free-ports port).
    assert committed.pop("servers") == [{"url": "/", "description": ANY}], "the serving edge's address"
    assert committed == shop, "run `make proto`"


def test_every_method_is_one_operation_at_its_http_route(shop: dict[str, Any]) -> None:
    from google.api import annotations_pb2

    service = shop_pb2.DESCRIPTOR.services_by_name["ShopService"]
    operations = {
        op["operationId"]: (verb, path) for path, verbs in shop["paths"].items() for verb, op in verbs.items()
    }
    expected = {}
    for method in service.methods:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        expected[method.name] = (verb, getattr(rule, verb))
    assert operations == expected


def test_security_follows_the_access_option(shop: dict[str, Any]) -> None:
    security = {op["operationId"]: op["security"] for verbs in shop["paths"].values() for op in verbs.values()}
    service = shop_pb2.DESCRIPTOR.services_by_name["ShopService"]
    public = {
        method.name
        for method in service.methods
        if method.GetOptions().Extensions[access_pb2.access] == access_pb2.ACCESS_PUBLIC
    }
    # Read right, the option makes some methods public and leaves others behind the token.
    assert "Login" in public, public
    assert public < security.keys(), public
    assert {name for name, s in security.items() if s == []} == public
    assert all(s == [{SECURITY_SCHEME: []}] for name, s in security.items() if name not in public)
    assert shop["components"]["securitySchemes"][SECURITY_SCHEME]["scheme"] == "bearer"


def test_a_get_takes_its_fields_as_query_parameters_by_json_name(shop: dict[str, Any]) -> None:
    parameters = shop["paths"]["/v1/products"]["get"]["parameters"]
    assert [(p["name"], p["in"]) for p in parameters] == [
        ("pageSize", "query"),
        ("pageToken", "query"),
        ("category", "query"),
    ]
    assert parameters[0]["schema"]["type"] == "integer"
    assert parameters[0]["description"].startswith("Maximum number of products"), "the field's comment"


def test_a_path_variable_is_a_parameter_and_not_part_of_the_body(shop: dict[str, Any]) -> None:
    cancel = shop["paths"]["/v1/orders/{order_id}:cancel"]["post"]
    assert {(p["name"], p["in"]) for p in cancel["parameters"]} == {("order_id", "path"), ("idempotency-key", "header")}
    body = cancel["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"reason"}, "order_id would collide with the path's (Envoy refuses it)"


def test_idempotent_methods_take_and_return_the_idempotency_key(shop: dict[str, Any]) -> None:
    place = shop["paths"]["/v1/orders"]["post"]
    assert any(p["name"] == "idempotency-key" and p["in"] == "header" for p in place["parameters"])
    assert "idempotency-key" in place["responses"]["200"]["headers"]
    assert "parameters" not in shop["paths"]["/v1/users"]["post"], "Register is not idempotent"


def test_json_forms_are_proto3_jsons(shop: dict[str, Any]) -> None:
    schemas = shop["components"]["schemas"]
    money = schemas["shopmesh.common.v1.Money"]["properties"]
    assert money["amountMinor"]["type"] == "string", "int64 is a JSON string"
    order = schemas["shopmesh.orders.v1.Order"]["properties"]
    assert order["createdAt"] == {**order["createdAt"], "type": "string", "format": "date-time"}
    assert order["state"]["$ref"] == "#/components/schemas/shopmesh.orders.v1.OrderState"
    assert "ORDER_STATE_CONFIRMED" in schemas["shopmesh.orders.v1.OrderState"]["enum"]


def test_errors_are_a_status_with_the_details_told_apart_by_type(shop: dict[str, Any]) -> None:
    error = shop["components"]["responses"]["Error"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/google.rpc.Status"}
    details = shop["components"]["schemas"]["google.rpc.Status"]["properties"]["details"]["items"]["oneOf"]
    types = {variant["allOf"][0]["properties"]["@type"]["const"] for variant in details}
    assert {f"type.googleapis.com/google.rpc.{t}" for t in ("BadRequest", "ErrorInfo", "RetryInfo")} <= types


def test_the_served_document_declares_retry_after_on_every_operations_429_and_503() -> None:
    # The edge's own 429s and 503s carry Retry-After (docs/http-api.md): a client generated from the document
    # reads it only where a response declares it. Read from the file the edge serves at /openapi.json.
    served = json.loads(openapi_document().read_text())
    responses = served["components"]["responses"]
    operations = [operation for methods in served["paths"].values() for operation in methods.values()]
    assert operations
    for operation in operations:
        for status in ("429", "503"):
            ref = operation["responses"][status]["$ref"]
            declared = responses[ref.removeprefix("#/components/responses/")]
            assert declared["headers"]["Retry-After"]["schema"] == {"type": "integer", "minimum": 0}, declared
            assert declared["content"] == responses["Error"]["content"], "a google.rpc.Status like every error"
        assert operation["responses"]["default"] == {"$ref": "#/components/responses/Error"}


def test_the_served_document_declares_the_bearer_challenge_on_every_operations_401() -> None:
    # The edge adds WWW-Authenticate to every 401 (RFC 6750; docs/http-api.md): declared where the 401 is.
    served = json.loads(openapi_document().read_text())
    responses = served["components"]["responses"]
    operations = [operation for methods in served["paths"].values() for operation in methods.values()]
    assert operations
    for operation in operations:
        ref = operation["responses"]["401"]["$ref"]
        declared = responses[ref.removeprefix("#/components/responses/")]
        challenge = declared["headers"]["WWW-Authenticate"]
        assert challenge["required"] is True, declared
        assert challenge["schema"]["enum"] == [BEARER_CHALLENGE, INVALID_TOKEN_CHALLENGE], declared
        assert declared["content"] == responses["Error"]["content"], "a google.rpc.Status like every error"


def test_a_field_violations_field_is_said_to_be_the_proto_name_in_json_too(shop: dict[str, Any]) -> None:
    # The services name fields by their proto names, and the transcoder passes the Status on as it is: an
    # HTTP/JSON client reads `shipping_address.full_name`. googleapis' comment on the field promised the JSON
    # name (`fullName`) "in JSON", which this API never sends.
    served = json.loads(openapi_document().read_text())
    for document_ in (shop, served):
        field = document_["components"]["schemas"]["google.rpc.BadRequest.FieldViolation"]["properties"]["field"]
        text = field["description"]
        assert "proto names (snake_case) in JSON too" in text, text
        assert "`shipping_address.full_name`" in text, text
        assert "In JSON, the same values are represented as" not in text, text
        assert "`fullName` for a violation" not in text, text


PUBLIC = "option (shopmesh.common.v1.access) = ACCESS_PUBLIC;"
ROUTE = f'option (google.api.http) = {{post: "/v1/things" body: "*"}}; {PUBLIC}'
CONTRACT = """
syntax = "proto3";
package test.v1;
import "google/api/annotations.proto";
import "shopmesh/common/v1/access.proto";
message Thing {{ string id = 1; map<string, int64> counts = 2; }}
message GetThingRequest {{ {request} }}
// How a thing shines.
enum Shine {{
  // Not said.
  SHINE_UNSPECIFIED = 0;
  // Like the sun.
  SHINE_BRIGHT = 1;
}}
message Outer {{
  // Inside.
  message Inner {{
    // The inner field.
    Shine shine = 1;
  }}
  Inner inner = 1;
}}
service ThingService {{
  rpc GetThing(GetThingRequest) returns (Thing) {{
    {options}
  }}
  rpc {stream_name}(GetThingRequest) returns ({stream} Outer) {{
    option (google.api.http) = {{get: "/v1/outer/{{id}}"}};
    {PUBLIC}
  }}
}}
"""


def contract_of(tmp_path: Path, options: str, request: str = "string id = 1;", stream: str = "") -> bytes:
    name = "WatchOuter" if stream else "GetOuter"
    text = CONTRACT.format(options=options, request=request, stream=stream, stream_name=name, PUBLIC=PUBLIC)
    (tmp_path / "test.proto").write_text(text)
    return compiled(tmp_path, "test.proto")


def test_a_map_is_an_object_of_its_values(tmp_path: Path) -> None:
    route = 'option (google.api.http) = {get: "/v1/things/{id}"}; option (shopmesh.common.v1.access) = ACCESS_PUBLIC;'
    spec = document(contract_of(tmp_path, route), "test.v1.ThingService")
    validate(spec)
    counts = spec["components"]["schemas"]["test.v1.Thing"]["properties"]["counts"]
    assert counts == {
        "type": "object",
        "additionalProperties": {"type": "string", "format": "int64", "pattern": r"^-?[0-9]+$"},
    }


@pytest.mark.parametrize(
    ("options", "request_fields", "problem"),
    [
        ("option (shopmesh.common.v1.access) = ACCESS_PUBLIC;", "string id = 1;", "no google.api.http route"),
        ('option (google.api.http) = {get: "/v1/things/{id}"};', "string id = 1;", "say whether it is public"),
        (
            'option (google.api.http) = {get: "/v1/things/{id}"}; option (shopmesh.common.v1.access) = ACCESS_PUBLIC;',
            "int32 id = 1;",
            "is not a string field",
        ),
        (
            'option (google.api.http) = {get: "/v1/things/{id}"}; option (shopmesh.common.v1.access) = ACCESS_PUBLIC;',
            "string id = 1; Thing filter = 2;",
            "a message field in a GET",
        ),
        (f'{PUBLIC} option (google.api.http) = {{get: "/v1/{{id=things/*}}"}};', "string id = 1;", "plain field"),
        (f'{PUBLIC} option (google.api.http) = {{post: "/v1/things" body: "id"}};', "string id = 1;", 'body "id"'),
        (
            f'{PUBLIC} option (google.api.http) = {{get: "/v1/things/{{id}}" response_body: "id"}};',
            "string id = 1;",
            "response_body",
        ),
        (
            f'{PUBLIC} option (google.api.http) = {{get: "/v1/things/{{id}}" additional_bindings {{get: "/v2/x"}}}};',
            "string id = 1;",
            "additional_bindings",
        ),
        (ROUTE, "string id = 1; oneof pick { string a = 2; string b = 3; }", "a oneof"),
    ],
)
def test_what_the_document_cannot_state_is_refused_by_name(
    tmp_path: Path, options: str, request_fields: str, problem: str
) -> None:
    with pytest.raises(ContractError, match=problem):
        document(contract_of(tmp_path, options, request_fields), "test.v1.ThingService")


def test_an_unknown_service_is_refused(tmp_path: Path) -> None:
    route = 'option (google.api.http) = {get: "/v1/things/{id}"}; option (shopmesh.common.v1.access) = ACCESS_PUBLIC;'
    with pytest.raises(ContractError, match="not in the descriptor set"):
        document(contract_of(tmp_path, route), "test.v1.OtherService")


def test_nested_types_and_enum_values_keep_their_comments(tmp_path: Path) -> None:
    spec = document(contract_of(tmp_path, ROUTE), "test.v1.ThingService")
    schemas = spec["components"]["schemas"]
    assert schemas["test.v1.Outer.Inner"]["description"] == "Inside."
    assert schemas["test.v1.Outer.Inner"]["properties"]["shine"]["description"] == "The inner field."
    assert (
        schemas["test.v1.Shine"]["description"]
        == "How a thing shines.\n\n- `SHINE_UNSPECIFIED`: Not said.\n- `SHINE_BRIGHT`: Like the sun."
    )


def test_a_streaming_method_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="WatchOuter: a streaming method"):
        document(contract_of(tmp_path, ROUTE, stream="stream"), "test.v1.ThingService")
