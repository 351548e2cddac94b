"""gRPC's request headers that the gateway's gRPC server parses and remembers, at the real Envoy of `bootstrap()`
(docs/http-api.md): a grpc-previous-rpc-attempts that is not a count is refused before any call, and grpc-core's
internal grpc-internal-encoding-request is dropped, so that neither fails a later call of another client's."""

from __future__ import annotations

import grpc
import httpx
import pytest

from shopmesh.gateway.v1 import shop_pb2
from shopmesh_chassis.testing.grpc_web import GRPC_WEB_HEADERS, frame, status_in_headers
from shopmesh_platform.http_api import (
    MALFORMED_PREVIOUS_RPC_ATTEMPTS,
    MALFORMED_PREVIOUS_RPC_ATTEMPTS_MESSAGE,
    PUBLIC_SERVICE,
)

from .conftest import RecordingShop

FRAME = frame(shop_pb2.ListProductsRequest(page_size=1).SerializeToString())


def list_products(url: str, headers: dict[str, str]) -> httpx.Response:
    """A gRPC-Web ListProducts on a connection of its own, as another client's."""
    with httpx.Client() as client:
        return client.post(
            f"{url}/{PUBLIC_SERVICE}/ListProducts", content=FRAME, headers={**GRPC_WEB_HEADERS, **headers}
        )


def answered_ok(answer: httpx.Response) -> bool:
    return answer.status_code == 200 and "grpc-status" not in answer.headers and b"grpc-status:0" in answer.content


@pytest.mark.parametrize("attempts", ["-1", "+1", "1.0", "1234", "x", "1,1"])
def test_a_previous_rpc_attempts_that_is_no_count_is_refused_before_any_call(
    edge: tuple[str, RecordingShop], attempts: str
) -> None:
    url, shop = edge
    before = list(shop.calls)
    answer = list_products(url, {"grpc-previous-rpc-attempts": attempts})
    assert answer.status_code == 200, answer.headers
    status = status_in_headers(answer.headers)
    assert (status.code, status.message) == (grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_PREVIOUS_RPC_ATTEMPTS_MESSAGE)
    assert status.reason == "VALIDATION_FAILED"
    assert [(v.field, v.reason) for v in status.field_violations] == [
        ("grpc-previous-rpc-attempts", MALFORMED_PREVIOUS_RPC_ATTEMPTS)
    ]
    assert shop.calls == before, "refused at the edge: the gateway was not called"


def test_after_a_malformed_previous_rpc_attempts_another_clients_retry_is_answered(
    edge: tuple[str, RecordingShop],
) -> None:
    # Forwarded, a `-1` left grpc-core's failed parse in the HPACK table of the edge's one connection to the
    # gateway: every later retry (any count) of any client's was INTERNAL until the entry was evicted.
    url, shop = edge
    list_products(url, {"grpc-previous-rpc-attempts": "-1"})
    for attempts in ("1", "2"):
        answer = list_products(url, {"grpc-previous-rpc-attempts": attempts})
        assert answered_ok(answer), (attempts, answer.headers, answer.content)
    assert shop.calls[-1] == ("ListProducts", "1")


def test_grpc_cores_internal_encoding_request_is_dropped_and_fails_no_call(edge: tuple[str, RecordingShop]) -> None:
    # grpc-core's own metadata, never on the wire from a gRPC client: forwarded, any value was INTERNAL "Error
    # parsing 'grpc-internal-encoding-request' metadata", for the sender and, remembered, for later callers.
    url, _ = edge
    for value in ("zzz", "gzip", "identity"):
        answer = list_products(url, {"grpc-internal-encoding-request": value})
        assert answered_ok(answer), (value, answer.headers, answer.content)
