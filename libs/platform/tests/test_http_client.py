"""The HTTP/JSON client of the shoppers maps what the edge answers to gRPC codes, as a gRPC client would see
them (its calls through the real edge: tests/e2e/test_http_api.py)."""

from __future__ import annotations

import aiohttp
import grpc
import pytest

from shopmesh.gateway.v1 import shop_pb2
from shopmesh_chassis.testing import free_port
from shopmesh_platform.http_client import HttpCallError, HttpShop, _error


@pytest.mark.parametrize(
    ("status", "content_type", "body", "code"),
    [
        (400, "application/json", '{"code": 9, "message": "declined"}', grpc.StatusCode.FAILED_PRECONDITION),
        (401, "application/json", '{"code": 16}', grpc.StatusCode.UNAUTHENTICATED),
        # Envoy's own plain-text refusals, by gRPC's HTTP mapping reversed.
        (400, "text/plain", "Could not find field", grpc.StatusCode.INVALID_ARGUMENT),
        (404, "text/plain", "Could not resolve /v1/x to a method.", grpc.StatusCode.UNIMPLEMENTED),
        (502, "text/plain", "upstream connect error", grpc.StatusCode.UNAVAILABLE),
        # A JSON body that is not a Status.
        (500, "application/json", "[1, 2]", grpc.StatusCode.INTERNAL),
        (503, "application/json", "not json", grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_an_answer_that_is_not_ok_becomes_its_grpc_code(
    status: int, content_type: str, body: str, code: grpc.StatusCode
) -> None:
    assert _error(status, content_type, body).code() == code


async def test_an_edge_that_does_not_answer_is_unavailable_as_over_grpc() -> None:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{free_port()}") as session:
        with pytest.raises(HttpCallError) as caught:
            await HttpShop(session).ListProducts(shop_pb2.ListProductsRequest(page_size=1), timeout=2)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_an_error_keeps_its_error_info_for_the_caller_to_act_on() -> None:
    # PRICE_CHANGED as the edge answers it: the shopper confirms the new total from the metadata.
    body = (
        '{"code": 9, "message": "prices changed", "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest"},'
        ' {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "PRICE_CHANGED", "domain": "shopmesh.orders",'
        ' "metadata": {"current_total_minor": "8900", "currency": "USD"}}]}'
    )
    info = _error(400, "application/json", body).error_info
    assert info is not None
    assert (info.reason, dict(info.metadata)) == ("PRICE_CHANGED", {"current_total_minor": "8900", "currency": "USD"})


@pytest.mark.parametrize(
    "details",
    [
        "",
        ', "details": []',
        ', "details": "x"',
        ', "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "metadata": "x"}]',
    ],
)
def test_a_status_without_a_readable_error_info_has_none(details: str) -> None:
    error = _error(400, "application/json", f'{{"code": 9{details}}}')
    assert (error.code(), error.error_info) == (grpc.StatusCode.FAILED_PRECONDITION, None)


def test_an_error_keeps_its_retry_delay_for_the_shoppers_to_wait() -> None:
    # The gateway's RATE_LIMITED as the edge answers it (429): the shoppers over --http wait as asked, as over gRPC.
    body = (
        '{"code": 8, "message": "slow down", "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",'
        ' "reason": "RATE_LIMITED"}, {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.250s"}]}'
    )
    error = _error(429, "application/json", body)
    assert (error.code(), error.retry_delay) == (grpc.StatusCode.RESOURCE_EXHAUSTED, 0.25)
    unreadable = '{"code": 8, "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "x"}]}'
    assert _error(429, "application/json", unreadable).retry_delay is None
