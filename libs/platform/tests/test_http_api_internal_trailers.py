"""What of the services' internal trailers reaches a client of the edge, with the real Envoy of `bootstrap()`
(docs/http-api.md, "What the edge removes from answers"): the gateway relays a dependency's error with the
chassis' markers (`shopmesh-final-answer`, `shopmesh-shed`, `shopmesh-retried`) and gRPC's
`grpc-retry-pushback-ms`, trailers-only, so in the answer's headers. The markers reach no client; the pushback
reaches the gRPC and gRPC-Web clients, whose channels read it, and not the HTTP/JSON one, which reads the
Status' RetryInfo."""

from __future__ import annotations

import base64
from urllib.parse import urlsplit

import grpc
import httpx
import pytest

from shopmesh.gateway.v1 import shop_pb2, shop_pb2_grpc
from shopmesh_chassis.grpc_errors import FINAL_ANSWER, RETRIED_ANSWER, RETRY_PUSHBACK, SHED_ANSWER
from shopmesh_chassis.testing.grpc_web import frame, status_in_headers
from shopmesh_platform.http_api import PUBLIC_SERVICE

from .conftest import MARKED, MARKED_FINAL_AND_SHED, RecordingShop

MARKERS = {FINAL_ANSWER, SHED_ANSWER, RETRIED_ANSWER}


def test_an_http_json_client_gets_neither_the_services_markers_nor_grpcs_pushback(
    edge: tuple[str, RecordingShop],
) -> None:
    url, _ = edge
    answer = httpx.get(url + "/v1/products:search", params={"query": MARKED_FINAL_AND_SHED}, timeout=10)
    assert answer.status_code == 503, answer.text
    assert not MARKERS & set(answer.headers), answer.headers
    assert RETRY_PUSHBACK not in answer.headers, answer.headers
    # When to come back is still in the Status, where an HTTP client reads it.
    assert answer.json()["details"][1]["retryDelay"] == "7s", answer.text


@pytest.mark.parametrize("content_type", ["application/grpc-web+proto", "application/grpc-web-text"])
def test_a_grpc_web_client_gets_the_pushback_but_not_the_services_markers(
    edge: tuple[str, RecordingShop], content_type: str
) -> None:
    url, _ = edge
    message = shop_pb2.SearchProductsRequest(query=MARKED_FINAL_AND_SHED).SerializeToString()
    framed = frame(message)
    answer = httpx.post(
        f"{url}/{PUBLIC_SERVICE}/SearchProducts",
        content=base64.b64encode(framed) if content_type.endswith("-text") else framed,
        headers={"content-type": content_type, "x-grpc-web": "1"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.headers
    # Trailers-only: the status and its trailers are the answer's headers.
    assert status_in_headers(answer.headers).code == grpc.StatusCode.UNAVAILABLE, answer.headers
    assert not MARKERS & set(answer.headers), answer.headers
    assert answer.headers[RETRY_PUSHBACK] == "-1", answer.headers


def test_a_grpc_client_gets_the_pushback_but_not_the_services_markers(edge: tuple[str, RecordingShop]) -> None:
    url, _ = edge
    with grpc.insecure_channel(urlsplit(url).netloc) as channel, pytest.raises(grpc.RpcError) as refused:
        shop_pb2_grpc.ShopServiceStub(channel).SearchProducts(
            shop_pb2.SearchProductsRequest(query=MARKED_FINAL_AND_SHED), timeout=10
        )
    call = refused.value
    assert call.code() == grpc.StatusCode.UNAVAILABLE, call
    trailers = dict(call.trailing_metadata())  # type: ignore[attr-defined]
    assert not MARKERS & set(trailers), trailers
    # gRFC A6: the client's channel does not retry the call.
    assert trailers[RETRY_PUSHBACK] == "-1", trailers


def test_a_grpc_client_gets_no_services_marker_in_the_trailers_of_an_answer_with_a_body(
    edge: tuple[str, RecordingShop],
) -> None:
    url, _ = edge
    with grpc.insecure_channel(urlsplit(url).netloc) as channel:
        _, call = shop_pb2_grpc.ShopServiceStub(channel).GetOrder.with_call(
            shop_pb2.GetOrderRequest(order_id=MARKED), timeout=10
        )
    trailers = dict(call.trailing_metadata())
    assert not MARKERS & set(trailers), trailers
    assert trailers[RETRY_PUSHBACK] == "-1", trailers
