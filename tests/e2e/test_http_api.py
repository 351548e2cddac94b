"""The public API over HTTP/JSON and gRPC-Web, as a browser or `curl` calls it: through the real Envoy that
`make run` puts in front of the gateway (shopmesh_platform.http_api), every real service behind it.

The routes are the `google.api.http` annotations of shopmesh/gateway/v1/shop.proto; Envoy transcodes with
the descriptor set generated beside the stubs. Errors keep their gRPC meaning: the HTTP status of the code
and the google.rpc.Status, details included, as the JSON body.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shopmesh.gateway.v1 import shop_pb2, shop_pb2_grpc
from shopmesh_chassis import testing
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_chassis.testing.grpc_web import GRPC_WEB_HEADERS, TRAILERS_FLAG, frame, frames, status_details
from shopmesh_inventory.seed import SEED_STOCK
from shopmesh_platform.http_api import (
    BEARER_CHALLENGE,
    BODY_ON_GET,
    INCOMPLETE_GRPC_MESSAGE_TEXT,
    INVALID_GRPC_FRAME_FLAG_MESSAGE,
    INVALID_TOKEN_CHALLENGE,
    MALFORMED_GRPC_ENCODING_MESSAGE,
    MALFORMED_GRPC_TIMEOUT,
    MALFORMED_GRPC_TIMEOUT_MESSAGE,
    MAX_REQUEST_BYTES,
    MAX_REQUEST_HEADERS_KIB,
    PATH_VARIABLE_IN_QUERY,
    QUERY_WITH_BODY,
    REQUEST_TOO_LARGE_MESSAGE,
    UNREADABLE_BODY_MESSAGE,
    UNREADABLE_QUERY_MESSAGE,
    UNSUPPORTED_GRPC_ENCODING_MESSAGE,
    WWW_AUTHENTICATE,
    allowed_methods,
    api_paths,
)
from shopmesh_platform.stack import HTTP_API, Stack

from .shop import (
    CHEAP_PASSWORD_HASHING,
    FAST_RECOVERY,
    GOOD_CARD,
    NO_RATE_LIMITS,
    PASSWORD,
    assert_answered_but_for_checkouts,
    assert_each_checkout_kept,
    eventually,
    shop_client,
    spans_of_trace,
    stock_levels,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED.value[0]
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


ENV = {
    "orders": FAST_RECOVERY,
    "users": CHEAP_PASSWORD_HASHING,
    "gateway": {
        **NO_RATE_LIMITS,
        # A deadline floor far above the default 250 ms, so that a call below it (DEADLINE_BELOW_THE_FLOOR) is
        # refused by the gateway long before the call's own deadline ends it, however loaded the machine. No
        # other call of the module sends a deadline shorter than this (HTTP/JSON sends none).
        "MIN_CLIENT_DEADLINE_SECONDS": "5",
    },
}
DEADLINE_BELOW_THE_FLOOR = 3.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(module_dir: Path) -> AsyncIterator[Stack]:
    async with Stack.for_tests(module_dir, env=ENV, http=True, traces=True) as running:
        yield running


def address(full_name: str = "Grace Hopper") -> dict[str, str]:
    return {
        "fullName": full_name,
        "street": "1 Compiler Road",
        "city": "Arlington",
        "postalCode": "22201",
        "country": "US",
    }


def order(product_id: str, card: str = GOOD_CARD) -> dict[str, Any]:
    return {
        "items": [{"productId": product_id, "quantity": 1}],
        "currency": "USD",
        "shippingAddress": address(),
        "card": {"number": card, "expMonth": 12, "expYear": 2031, "cvv": "123"},
    }


async def signed_up(http: httpx.AsyncClient, name: str) -> tuple[str, dict[str, str]]:
    """A new account over HTTP: (its e-mail, the authorization header)."""
    email = f"{name}-{uuid.uuid4().hex[:8]}@example.com"
    registered = await http.post("/v1/users", json={"email": email, "password": PASSWORD, "displayName": name})
    assert registered.status_code == 200, registered.text
    login = await http.post("/v1/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    assert login.json()["tokenType"] == "Bearer"
    return email, {"authorization": f"Bearer {login.json()['accessToken']}"}


def status_of(response: httpx.Response) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the google.rpc.Status JSON body of a failed call."""
    assert response.headers["content-type"] == "application/json", response.text
    return response.status_code, response.json()


def detail(status: dict[str, Any], kind: str) -> dict[str, Any]:
    [found] = [d for d in status.get("details", []) if d["@type"] == kind]
    return found


async def test_signing_out_over_http_ends_the_token_over_http_and_grpc_and_a_new_login_works(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    email, auth = await signed_up(http, "sol")
    copied = dict(auth)  # a copy taken before the sign-out: a shared computer, a leaked log
    assert (await http.get("/v1/orders", headers=auth)).status_code == 200

    signed_out = await http.post("/v1/session:signout", json={}, headers=auth)
    assert signed_out.status_code == 200, signed_out.text
    assert signed_out.json()["tokensValidAfter"]

    answer = await http.get("/v1/orders", headers=copied)
    refused, status = status_of(answer)
    assert (refused, detail(status, ERROR_INFO)["reason"]) == (401, "TOKEN_REVOKED")
    # RFC 6750's invalid_token covers a revoked token: a generic client drops it instead of sending it again.
    assert answer.headers["www-authenticate"] == 'Bearer realm="shopmesh", error="invalid_token"'
    async with grpc.aio.insecure_channel(stack.address("gateway")) as channel:
        shop = shop_pb2_grpc.ShopServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await shop.ListOrders(shop_pb2.ListOrdersRequest(), metadata=tuple(copied.items()), timeout=30)
        revoked = details_of(caught.value)
        assert (revoked.code, revoked.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_REVOKED")

        # At once, within the sign-out's second most likely: users stamps the new token after the cutoff.
        login = await http.post("/v1/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        fresh = {"authorization": f"Bearer {login.json()['accessToken']}"}
        assert (await http.get("/v1/orders", headers=fresh)).status_code == 200
        await shop.ListOrders(shop_pb2.ListOrdersRequest(), metadata=tuple(fresh.items()), timeout=30)


async def test_a_shopper_browses_checks_out_and_cancels_over_http_json(http: httpx.AsyncClient) -> None:
    email, auth = await signed_up(http, "ada")

    listed = await http.get("/v1/products", params={"pageSize": 2, "category": "kitchen"})
    assert listed.status_code == 200, listed.text
    products = listed.json()["products"]
    assert len(products) == 2
    assert {p["category"] for p in products} == {"kitchen"}
    # Money as proto3 JSON has it: int64 minor units as a string, with the currency.
    assert products[0]["price"]["amountMinor"].isdigit()
    assert listed.json()["nextPageToken"]
    found = await http.get("/v1/products:search", params={"query": "french press"})
    assert found.json()["products"][0]["id"] == "prod_french_press"
    page = await http.get("/v1/products/prod_french_press", params={"maxRecommendations": 2})
    assert page.status_code == 200, page.text
    assert page.json()["product"]["id"] == "prod_french_press"
    assert page.json()["availability"]["inStock"] is True
    assert len(page.json()["recommendations"]) <= 2

    key = str(uuid.uuid4())
    placed = await http.post("/v1/orders", json=order("prod_french_press"), headers={**auth, "idempotency-key": key})
    assert placed.status_code == 200, placed.text
    confirmed = placed.json()["order"]
    assert confirmed["state"] == "ORDER_STATE_CONFIRMED"
    assert confirmed["email"] == email
    # The gateway's trailer comes back as a header; the same key again is the same order, charged once.
    assert placed.headers["idempotency-key"] == key
    again = await http.post("/v1/orders", json=order("prod_french_press"), headers={**auth, "idempotency-key": key})
    assert again.json()["order"]["id"] == confirmed["id"]

    fetched = await http.get(f"/v1/orders/{confirmed['id']}", headers=auth)
    assert fetched.json()["order"]["state"] == "ORDER_STATE_CONFIRMED"
    mine = await http.get("/v1/orders", headers=auth)
    assert [o["id"] for o in mine.json()["orders"]] == [confirmed["id"]]
    cancelled = await http.post(
        f"/v1/orders/{confirmed['id']}:cancel",
        json={"reason": "changed my mind"},
        headers={**auth, "idempotency-key": str(uuid.uuid4())},
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["order"]["state"] == "ORDER_STATE_CANCELLED"

    async def notified() -> list[Any] | None:
        listed = (await http.get("/v1/notifications", headers=auth)).json()["notifications"]
        return [n for n in listed if n["orderId"] == confirmed["id"]] or None

    assert await eventually(notified, f"the notifications of {confirmed['id']} listed over HTTP")


async def test_a_checkout_over_http_json_is_charged_only_the_expected_total(http: httpx.AsyncClient) -> None:
    """expectedTotal reaches orders through the transcoder (its JSON name, an int64 as a string): a total that
    is not the current one is a 400 PRICE_CHANGED naming the current total, nothing placed; another currency
    names expected_total.currency; the current total places the order."""
    _, auth = await signed_up(http, "barbara")
    price = (await http.get("/v1/products/prod_french_press")).json()["product"]["price"]

    def expecting(amount_minor: str, currency: str = "USD") -> dict[str, Any]:
        return order("prod_french_press") | {"expectedTotal": {"amountMinor": amount_minor, "currency": currency}}

    stale = str(int(price["amountMinor"]) - 100)
    code, refused = status_of(
        await http.post("/v1/orders", json=expecting(stale), headers={**auth, "idempotency-key": str(uuid.uuid4())})
    )
    info = detail(refused, "type.googleapis.com/google.rpc.ErrorInfo")
    assert (code, info["reason"]) == (400, "PRICE_CHANGED")
    assert info["metadata"] == {"current_total_minor": price["amountMinor"], "currency": "USD"}
    assert (await http.get("/v1/orders", headers=auth)).json().get("orders", []) == []

    code, invalid = status_of(
        await http.post(
            "/v1/orders",
            json=expecting(price["amountMinor"], "EUR"),
            headers={**auth, "idempotency-key": str(uuid.uuid4())},
        )
    )
    violations = detail(invalid, "type.googleapis.com/google.rpc.BadRequest")["fieldViolations"]
    assert (code, [v["field"] for v in violations]) == (400, ["expected_total.currency"])

    placed = await http.post(
        "/v1/orders", json=expecting(price["amountMinor"]), headers={**auth, "idempotency-key": str(uuid.uuid4())}
    )
    assert placed.status_code == 200, placed.text
    assert placed.json()["order"]["total"]["amountMinor"] == price["amountMinor"]


async def test_client_mistakes_are_http_4xx_with_the_status_and_its_details_as_json(http: httpx.AsyncClient) -> None:
    code, invalid = status_of(await http.post("/v1/users", json={"email": "not-an-address", "password": "short"}))
    assert (code, invalid["code"]) == (400, grpc.StatusCode.INVALID_ARGUMENT.value[0])
    violations = {v["field"]: v["reason"] for v in detail(invalid, BAD_REQUEST)["fieldViolations"]}
    assert violations == {"email": "INVALID_FORMAT", "password": "TOO_SHORT", "display_name": "REQUIRED"}

    email, auth = await signed_up(http, "bob")
    code, taken = status_of(
        await http.post("/v1/users", json={"email": email, "password": PASSWORD, "displayName": "Bob"})
    )
    assert (code, detail(taken, ERROR_INFO)["reason"]) == (409, "EMAIL_ALREADY_REGISTERED")

    code, missing = status_of(await http.get("/v1/products/prod_no_such_thing"))
    assert (code, detail(missing, ERROR_INFO)["reason"]) == (404, "PRODUCT_NOT_FOUND")
    assert detail(missing, ERROR_INFO)["domain"] == "shopmesh.catalog"

    code, anonymous = status_of(await http.get("/v1/orders"))
    assert (code, detail(anonymous, ERROR_INFO)["reason"]) == (401, "TOKEN_MISSING")

    declined_response = await http.post("/v1/orders", json=order("prod_chef_knife", "4000000000000002"), headers=auth)
    code, declined = status_of(declined_response)
    # The key the gateway generated for the attempt, to retry it with: errors are trailers-only, so their
    # trailers are the response's headers.
    assert declined_response.headers["idempotency-key"]
    # FAILED_PRECONDITION is a 400 in gRPC's HTTP mapping; the reason tells the client what to do.
    assert (code, declined["code"]) == (400, grpc.StatusCode.FAILED_PRECONDITION.value[0])
    assert (detail(declined, ERROR_INFO)["reason"], detail(declined, ERROR_INFO)["domain"]) == (
        "CARD_DECLINED",
        "shopmesh.orders",
    )

    code, negative = status_of(await http.get("/v1/orders", params={"pageSize": -1}, headers=auth))
    assert (code, detail(negative, BAD_REQUEST)["fieldViolations"][0]["field"]) == (400, "page_size")


@pytest.mark.parametrize(
    ("method", "path", "params", "expected"),
    [
        # Not a route of the API: refused by the edge, never guessed at.
        ("GET", "/v1/nothing", {}, 404),
        # A path of the API, with a method it does not take there.
        ("DELETE", "/v1/orders", {}, 405),
        # A misspelt query parameter is the client's mistake, not silently ignored.
        ("GET", "/v1/products", {"pageSise": "2"}, 400),
        ("GET", "/v1/products", {"pageSize": "two"}, 400),
        # Health and reflection are the platform's, not the public's.
        ("POST", "/grpc.health.v1.Health/Check", {}, 404),
    ],
)
async def test_the_edge_refuses_what_the_api_does_not_have(
    http: httpx.AsyncClient, method: str, path: str, params: dict[str, str], expected: int
) -> None:
    response = await http.request(method, path, params=params, json={} if method == "POST" else None)
    assert response.status_code == expected, response.text
    # Answered by Envoy itself, in the API's error shape: a google.rpc.Status with Envoy's reason as message.
    code, status = status_of(response)
    assert status["code"] == (UNIMPLEMENTED if code in (404, 405) else INVALID_ARGUMENT), status
    assert status["message"]


async def test_a_method_a_path_does_not_take_is_405_with_the_methods_it_does(http: httpx.AsyncClient) -> None:
    for template, methods in api_paths().items():
        # HEAD with every GET (RFC 9110), though the contract names only the GET.
        allowed = allowed_methods(methods)
        path = template.replace("{product_id}", "prod_x").replace("{order_id}", "ord_x")
        for method in sorted({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "TRACE"} - set(allowed)):
            response = await http.request(method, path)
            assert response.status_code == 405, (method, path, response.text)
            assert response.headers["allow"] == ", ".join(allowed), (method, path)
            if method != "HEAD":
                assert response.json()["code"] == UNIMPLEMENTED
        # QUERY without content is malformed (RFC 10008), whatever the path; with content it is a 405 too.
        assert (await http.request("QUERY", path)).status_code == 400
        assert (await http.request("QUERY", path, json={})).status_code == 405
    # A method's own path is not taken for another's: `:cancel` is a POST, not GetOrder of "ord_x:cancel".
    assert (await http.get("/v1/orders/ord_x:cancel")).headers["allow"] == "POST"
    assert (await http.post("/v1/orders/ord_x:cancel", json={})).status_code == 401, "the method, reached"
    # While a variable may hold a colon (the transcoder splits off only the API's own verbs).
    assert (await http.get("/v1/products/prod:x")).status_code == 404, "GetProductPage of 'prod:x'"
    assert (await http.post("/v1/products/prod:x", json={})).status_code == 405
    # The document's own path takes GET and HEAD only.
    assert (await http.post("/openapi.json")).headers["allow"] == "GET, HEAD"
    head = await http.head("/openapi.json")
    assert (head.status_code, head.content) == (200, b"")


@pytest.mark.parametrize(
    "headers",
    [
        # Valid in HTTP, not in gRPC metadata: the gRPC server would answer INTERNAL ("Illegal header key").
        [("x-trace!id", "1")],
        # Binary metadata must be base64.
        [("x-debug-bin", "!!!")],
        # gRPC's own headers, malformed, from an HTTP/JSON client.
        [("grpc-timeout", "soon")],
        [("grpc-encoding", "zip")],
        # ... which the transcoder also takes for JSON when its content type only looks like gRPC's.
        [("content-type", "application/grpc-json"), ("grpc-timeout", "soon")],
    ],
)
async def test_headers_a_grpc_server_would_refuse_never_make_a_client_request_a_server_error(
    http: httpx.AsyncClient, headers: list[tuple[str, str]]
) -> None:
    response = await http.get("/v1/products/prod_nope", headers=headers)
    assert response.status_code == 404, response.text
    assert detail(response.json(), ERROR_INFO)["reason"] == "PRODUCT_NOT_FOUND", "answered by the catalog"


@pytest.mark.parametrize("size", [12_000, 20_000])
async def test_a_long_query_string_reaches_the_service_not_answered_as_rate_limiting(
    http: httpx.AsyncClient, size: int
) -> None:
    # The query reaches the gateway twice (the transcoder's x-envoy-original-path copies the path): more than
    # gRPC's default metadata limits (8 KiB at random, 16 KiB always), answered RESOURCE_EXHAUSTED, 429.
    for _ in range(3):
        response = await http.get("/v1/products:search", params={"query": "knife " + "x" * size})
        code, status = status_of(response)
        assert (code, detail(status, ERROR_INFO)["domain"]) == (400, "shopmesh.catalog"), "the catalog's answer"
        assert detail(status, BAD_REQUEST)["fieldViolations"][0]["field"] == "query"


@pytest.mark.parametrize("size", [10_000, 17_000])
async def test_a_browsers_cookies_are_not_forwarded_to_the_gateway(http: httpx.AsyncClient, size: int) -> None:
    # The API reads no cookie, but a browser sends every cookie of the host (of any app on it) with the
    # storefront's calls: as metadata they made the gateway's gRPC server refuse the call (429).
    for _ in range(3):
        response = await http.get("/v1/products", params={"pageSize": 1}, headers={"cookie": "other_app=" + "c" * size})
        assert response.status_code == 200, response.text


async def test_headers_over_the_edges_limit_are_a_431_in_the_apis_error_shape(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/products", headers={"x-padding": "p" * (MAX_REQUEST_HEADERS_KIB * 1024)})
    code, status = status_of(response)
    assert (code, status["code"]) == (431, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])


@pytest.mark.parametrize(
    ("method", "path", "parameter", "field"),
    [
        ("GET", "/v1/orders/ord_from_the_path", "orderId", "order_id"),
        ("GET", "/v1/orders/ord_from_the_path", "order_id", "order_id"),
        ("POST", "/v1/orders/ord_from_the_path:cancel", "orderId", "order_id"),
        ("GET", "/v1/products/prod_chef_knife", "productId", "product_id"),
        ("GET", "/v1/products/prod_chef_knife", "product_id", "product_id"),
    ],
)
async def test_a_query_parameter_naming_a_path_variable_is_refused_not_taken_over_the_path(
    http: httpx.AsyncClient, method: str, path: str, parameter: str, field: str
) -> None:
    # The transcoder binds the query after the path: /v1/orders/A?orderId=B answered about order B, while
    # an access log, a WAF or a per-path policy in front saw A.
    response = await http.request(
        method, path, params={parameter: "from_the_query"}, json={} if method == "POST" else None
    )
    code, status = status_of(response)
    assert (code, status["code"]) == (400, INVALID_ARGUMENT), status
    assert "from_the_query" not in response.text
    assert detail(status, ERROR_INFO)["reason"] == "VALIDATION_FAILED"
    [violation] = detail(status, BAD_REQUEST)["fieldViolations"]
    assert (violation["field"], violation["reason"]) == (field, PATH_VARIABLE_IN_QUERY)
    # A browser's preflight of the same URL is still answered.
    preflight = await http.options(
        path,
        params={parameter: "from_the_query"},
        headers={"origin": "https://shop.example", "access-control-request-method": method},
    )
    assert preflight.headers["access-control-allow-origin"] == "https://shop.example"


@pytest.mark.parametrize(
    ("method", "path", "query"),
    [
        ("GET", "/v1/products/prod_chef_knife", "product%5Fid=from_the_query"),
        ("GET", "/v1/products/prod_chef_knife", "%70roductId=from_the_query"),
        ("GET", "/v1/orders/ord_from_the_path", "order%5Fid=from_the_query"),
        ("POST", "/v1/orders/ord_from_the_path:cancel", "%6FrderId=from_the_query"),
    ],
)
async def test_a_path_variable_named_with_percent_escapes_in_the_query_is_refused_too(
    http: httpx.AsyncClient, method: str, path: str, query: str
) -> None:
    # The transcoder decodes a query parameter's name before it binds it: `product%5Fid` is `product_id`, and
    # would take over the path as `product_id` itself would, past an edge that matched the name as written.
    response = await http.request(method, f"{path}?{query}", json={} if method == "POST" else None)
    code, status = status_of(response)
    assert (code, status["code"]) == (400, INVALID_ARGUMENT), status
    assert "from_the_query" not in response.text
    [violation] = detail(status, BAD_REQUEST)["fieldViolations"]
    assert violation["reason"] == PATH_VARIABLE_IN_QUERY


@pytest.mark.parametrize(
    ("method", "path", "parameter"),
    [
        ("GET", "/v1/products/prod_chef_knife/", "productId"),
        ("GET", "/v1/orders/ord_from_the_path/", "orderId"),
    ],
)
async def test_a_path_variable_in_the_query_of_a_path_with_a_trailing_slash_is_refused_too(
    http: httpx.AsyncClient, method: str, path: str, parameter: str
) -> None:
    # The transcoder takes `/v1/products/{product_id}/` for its route, trailing slash and all: the query
    # would take over the path there as well.
    response = await http.request(method, path, params={parameter: "from_the_query"})
    code, status = status_of(response)
    assert (code, status["code"]) == (400, INVALID_ARGUMENT), status
    assert "from_the_query" not in response.text
    [violation] = detail(status, BAD_REQUEST)["fieldViolations"]
    assert violation["reason"] == PATH_VARIABLE_IN_QUERY


async def test_a_post_whose_body_is_the_request_refuses_its_fields_as_query_parameters(
    http: httpx.AsyncClient,
) -> None:
    # Every POST route's body is `*`: the whole request is the JSON body, and google.api.http allows no query
    # parameters then (the OpenAPI document declares none). The transcoder binds them anyway, so a card's
    # number and CVV in the URL were charged, and written to the edge's access log (`http_path`) and sent
    # on as `x-envoy-original-path`: the contract says a card is never logged.
    _, auth = await signed_up(http, "query-card")
    body = order("prod_chef_knife")
    card = body.pop("card")
    query = {"card.number": card["number"], "card.cvv": card["cvv"], "card.expMonth": 12, "card.expYear": 2031}
    placed = await http.post("/v1/orders", params=query, json=body, headers=auth)
    assert placed.status_code == 400, placed.text
    assert status_of(placed)[1]["code"] == INVALID_ARGUMENT
    assert (await http.get("/v1/orders", headers=auth)).json().get("orders", []) == []


async def test_a_get_with_a_body_is_refused_not_read_as_the_request(http: httpx.AsyncClient) -> None:
    # The transcoder read a GET's body into the call and bound the query over it: `GET /v1/products` with this
    # body listed two kitchen products, while the edge's access log (and a WAF or a cache in front) saw an
    # unfiltered list.
    body = {"category": "kitchen", "pageSize": 2}
    refused = await http.request("GET", "/v1/products", json=body)
    code, status = status_of(refused)
    assert (code, status["code"]) == (400, INVALID_ARGUMENT), status
    assert detail(status, ERROR_INFO)["reason"] == "VALIDATION_FAILED"
    assert [v["reason"] for v in detail(status, BAD_REQUEST)["fieldViolations"]] == [BODY_ON_GET]
    # The same fields as the query parameters they are.
    listed = await http.get("/v1/products", params=body)
    assert listed.status_code == 200, listed.text
    assert [product["category"] for product in listed.json()["products"]] == ["kitchen", "kitchen"], listed.text


async def test_every_401_carries_the_bearer_challenge_its_reason_asks_for(http: httpx.AsyncClient) -> None:
    # RFC 6750 section 3: a 401 of a bearer-protected resource carries WWW-Authenticate; `invalid_token` for a
    # token the gateway refused, no error code for a request that sent none (section 3.1).
    anonymous = await http.get("/v1/orders")
    assert (anonymous.status_code, detail(anonymous.json(), ERROR_INFO)["reason"]) == (401, "TOKEN_MISSING")
    assert anonymous.headers.get_list(WWW_AUTHENTICATE) == [BEARER_CHALLENGE], anonymous.headers
    forged = await http.get("/v1/orders", headers={"authorization": "Bearer not.a.token"})
    assert (forged.status_code, detail(forged.json(), ERROR_INFO)["reason"]) == (401, "TOKEN_INVALID")
    assert forged.headers.get_list(WWW_AUTHENTICATE) == [INVALID_TOKEN_CHALLENGE], forged.headers
    email, _ = await signed_up(http, "challenged")
    wrong = await http.post("/v1/login", json={"email": email, "password": PASSWORD + "-not"})
    assert (wrong.status_code, detail(wrong.json(), ERROR_INFO)["reason"]) == (401, "INVALID_CREDENTIALS")
    assert wrong.headers.get_list(WWW_AUTHENTICATE) == [BEARER_CHALLENGE], wrong.headers


async def test_no_query_is_logged_or_traced_by_the_edge_neither_a_gets_nor_a_refused_ones(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    # A GET's query is its fields: search terms, page tokens, an e-mail address a client searched for. A
    # refused one's is anything: the password in the URL is refused (QUERY_WITH_BODY). The edge's access log
    # and its span keep the path only (the GET's was logged whole, query and all).
    secret = f"hunter-{uuid.uuid4().hex[:8]}"
    searched = f"{secret}@example.com"
    refused_trace, get_trace = uuid.uuid4().hex, uuid.uuid4().hex

    def traceparent(trace_id: str) -> dict[str, str]:
        return {"traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"}

    query = {"email": "a@example.com", "password": secret}
    refused = await http.post("/v1/login", params=query, json={}, headers=traceparent(refused_trace))
    assert refused.status_code == 400, refused.text
    assert detail(status_of(refused)[1], BAD_REQUEST)["fieldViolations"][0]["reason"] == QUERY_WITH_BODY
    search = {"query": searched, "pageSize": 2}
    found = await http.get("/v1/products:search", params=search, headers=traceparent(get_trace))
    assert found.status_code == 200, found.text
    assert stack.logs is not None

    def logged(trace_id: str) -> Callable[[], Awaitable[dict[str, Any] | None]]:
        async def probe() -> dict[str, Any] | None:
            lines = [json.loads(line) for line in stack.logs.text(HTTP_API).splitlines() if trace_id in line]
            return lines[-1] if lines else None

        return probe

    line = await eventually(logged(refused_trace), "the edge's access log line of the refused login")
    assert (line["http_path"], line["method"], line["http_status"]) == ("/v1/login", "/v1/login", 400)
    line = await eventually(logged(get_trace), "the edge's access log line of the search")
    assert (line["http_path"], line["method"], line["http_status"]) == (
        "/v1/products:search",
        "/shopmesh.gateway.v1.ShopService/SearchProducts",
        200,
    )
    for trace_id in (refused_trace, get_trace):
        spans = await eventually(functools.partial(_spans, stack, trace_id), "the edge's span of the request")
        assert all(secret not in json.dumps(span) for span in spans)
    assert secret not in stack.logs.text(HTTP_API)


async def _spans(stack: Stack, trace_id: str) -> list[dict[str, Any]] | None:
    return spans_of_trace(stack, trace_id) or None


async def test_the_edges_access_log_states_the_grpc_status_the_gateway_answered(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    # Each line of the edge's log has a `grpc_status`. The transcoder turns an error into an HTTP status and a
    # JSON body, so Envoy derives the field from the HTTP status instead (400 -> Internal, 404 ->
    # Unimplemented): every client mistake was logged as the server fault INTERNAL, a missing product as
    # UNIMPLEMENTED.
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    refused = await http.get("/v1/products:search?query=", headers={"traceparent": traceparent})
    assert refused.status_code == 400, refused.text
    assert refused.json()["code"] == INVALID_ARGUMENT
    assert stack.logs is not None

    async def logged() -> dict[str, Any] | None:
        lines = [json.loads(line) for line in stack.logs.text(HTTP_API).splitlines() if trace_id in line]
        return lines[-1] if lines else None

    line = await eventually(logged, "the edge's access log line of the refused search")
    assert (line["http_status"], line["grpc_status"]) == (400, "InvalidArgument")


async def test_json_answers_are_gzipped_for_a_client_that_accepts_it(http: httpx.AsyncClient) -> None:
    page = {"pageSize": 20}
    zipped = await http.get("/v1/products", params=page, headers={"accept-encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert len(zipped.json()["products"]) == 20, "httpx undid the gzip: the same JSON"
    plain = await http.get("/v1/products", params=page, headers={"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert plain.json() == zipped.json()
    assert len(zipped.content) == len(plain.content)
    assert int(zipped.num_bytes_downloaded) < len(plain.content) / 2, "compressed on the wire"
    # A short answer is not worth compressing.
    small = await http.get("/v1/orders", headers={"accept-encoding": "gzip"})
    assert small.status_code == 401
    assert "content-encoding" not in small.headers
    assert "Accept-Encoding" in zipped.headers["vary"], "a shared cache keeps both forms apart"
    # gRPC-Web answers keep their own framing, uncompressed by the edge.
    message = shop_pb2.ListProductsRequest(page_size=20).SerializeToString()
    grpc_web = await http.post(
        "/shopmesh.gateway.v1.ShopService/ListProducts",
        content=frame(message),
        headers={**GRPC_WEB_HEADERS, "accept-encoding": "gzip"},
    )
    assert grpc_web.status_code == 200
    assert "content-encoding" not in grpc_web.headers


async def test_a_malformed_json_body_is_a_400(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/login", content=b'{"email": ', headers={"content-type": "application/json"})
    code, status = status_of(response)
    # Envoy's own answer, in the shape of the gateway's errors: `details` there, empty.
    assert (code, status["code"], status["details"]) == (400, INVALID_ARGUMENT, []), status
    assert status["message"], status


@pytest.mark.parametrize(
    ("path", "field", "reason"),
    [
        # A page token a client mangled: common/v1 has a malformed token INVALID_PAGE_TOKEN.
        ("/v1/products?pageToken=%FF", "page_token", "INVALID_PAGE_TOKEN"),
        # Search text a Latin-1 form sent ("café" as ISO-8859-1): no UTF-8, so no string protobuf takes.
        ("/v1/products:search?query=caf%E9", "query", None),
    ],
)
async def test_a_query_parameter_that_is_not_utf8_is_invalid_argument_naming_its_field(
    http: httpx.AsyncClient, path: str, field: str, reason: str | None
) -> None:
    # docs/chassis.md: "the HTTP/JSON transcoder always sends well-formed messages". It does not: it puts the
    # percent-decoded bytes into the string field as they are, and the gateway answers MALFORMED_REQUEST, "the
    # request body is not a valid message" (a GET has no body), naming no field.
    code, status = status_of(await http.get(path))
    assert (code, status["code"]) == (400, INVALID_ARGUMENT)
    assert reason is None or detail(status, ERROR_INFO)["reason"] == reason, status
    assert [v["field"] for v in detail(status, BAD_REQUEST)["fieldViolations"]] == [field], status


async def test_a_body_over_the_limit_is_refused_before_it_is_parsed(http: httpx.AsyncClient) -> None:
    huge = {"email": "x@example.com", "password": "p" * (MAX_REQUEST_BYTES + 1)}
    response = await http.post("/v1/login", json=huge)
    code, status = status_of(response)
    assert (code, status["code"]) == (413, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
    # A gRPC-Web client gets a status its library reads, RESOURCE_EXHAUSTED as a gRPC server answers a message
    # over its limit, not a text/plain page (nor Envoy's gRPC mapping of a 413, UNKNOWN).
    message = shop_pb2.LoginRequest(email="x@example.com", password="p" * (MAX_REQUEST_BYTES + 1)).SerializeToString()
    grpc_web = await http.post(
        "/shopmesh.gateway.v1.ShopService/Login",
        content=frame(message),
        headers=GRPC_WEB_HEADERS,
    )
    assert grpc_web.headers["content-type"] == "application/grpc-web+proto"
    assert (grpc_web.headers["grpc-status"], grpc_web.headers["grpc-message"]) == (
        str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]),
        REQUEST_TOO_LARGE_MESSAGE,
    )


@pytest.mark.parametrize(
    "content_type",
    ["application/grpc-web+proto; charset=utf-8", "application/grpc-web+json", "application/grpc-web;x=y"],
)
async def test_a_grpc_web_type_envoy_does_not_take_is_refused_in_a_form_the_client_reads(
    http: httpx.AsyncClient, content_type: str
) -> None:
    # Envoy's gRPC-Web filter takes four exact types only; the edge's own idea of gRPC (GRPC_CONTENT_TYPE) takes
    # these as well, so the transcoder's refusal is neither a gRPC-Web status nor mapped to a JSON Status.
    message = shop_pb2.ListProductsRequest(page_size=1).SerializeToString()
    response = await http.post(
        "/shopmesh.gateway.v1.ShopService/ListProducts",
        content=frame(message),
        headers={"content-type": content_type, "x-grpc-web": "1"},
    )
    readable = "grpc-status" in response.headers or response.headers.get("content-type") == "application/json"
    assert readable, (response.status_code, dict(response.headers), response.text)


async def test_grpc_web_and_grpc_reach_the_same_api_on_the_same_port(stack: Stack, http: httpx.AsyncClient) -> None:
    request = shop_pb2.ListProductsRequest(page_size=1).SerializeToString()
    framed = frame(request)
    response = await http.post(
        "/shopmesh.gateway.v1.ShopService/ListProducts",
        content=framed,
        headers=GRPC_WEB_HEADERS,
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/grpc-web+proto"
    [(flags, answered), (last, trailers)] = frames(response.content)
    assert flags == 0
    assert len(shop_pb2.ListProductsResponse.FromString(answered).products) == 1
    # gRPC-Web sends the trailers as a last frame in the body.
    assert last == TRAILERS_FLAG
    assert b"grpc-status:0" in trailers

    # An error reaches a browser's gRPC-Web client whole: trailers-only, so status and details are headers.
    missing = shop_pb2.GetProductPageRequest(product_id="prod_no_such_thing").SerializeToString()
    failed = await http.post(
        "/shopmesh.gateway.v1.ShopService/GetProductPage",
        content=frame(missing),
        headers=GRPC_WEB_HEADERS,
    )
    assert failed.status_code == 200
    assert failed.headers["grpc-status"] == str(grpc.StatusCode.NOT_FOUND.value[0])
    details = status_details(failed.headers)
    reasons = set()
    for detail in details.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reasons.add(info.reason)
    assert reasons == {"PRODUCT_NOT_FOUND"}

    assert stack.http_url is not None
    async with grpc.aio.insecure_channel(stack.http_url.removeprefix("http://")) as channel:
        products = await shop_pb2_grpc.ShopServiceStub(channel).ListProducts(shop_pb2.ListProductsRequest(page_size=1))
        assert len(products.products) == 1
        # Only ShopService is routed: the gateway's health and reflection are not on the public port.
        # A client's own x-envoy-original-path does not make its gRPC error an HTTP/JSON one.
        spoofed = (("x-envoy-original-path", "/v1/products"),)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), metadata=spoofed)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert not (caught.value.details() or "").startswith("{"), "Envoy's own grpc-message, not a JSON body"


async def test_a_deadline_below_the_gateways_floor_is_refused_through_the_edge_as_the_clients_mistake(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    # gRPC-Web: a browser's client may send grpc-timeout (CORS allows it).
    message = shop_pb2.ListProductsRequest(page_size=1).SerializeToString()
    refused = await http.post(
        "/shopmesh.gateway.v1.ShopService/ListProducts",
        content=frame(message),
        headers={
            "content-type": "application/grpc-web+proto",
            "x-grpc-web": "1",
            "grpc-timeout": f"{DEADLINE_BELOW_THE_FLOOR:.0f}S",
        },
    )
    assert refused.status_code == 200
    assert refused.headers["grpc-status"] == str(INVALID_ARGUMENT), refused.headers
    details = status_details(refused.headers)
    violations = []
    for packed in details.details:
        bad_request = error_details_pb2.BadRequest()
        if packed.Unpack(bad_request):
            violations += [(v.field, v.reason) for v in bad_request.field_violations]
    assert violations == [("grpc-timeout", "DEADLINE_TOO_SHORT")]

    # gRPC through the edge: the same refusal.
    assert stack.http_url is not None
    async with grpc.aio.insecure_channel(stack.http_url.removeprefix("http://")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await shop_pb2_grpc.ShopServiceStub(channel).ListProducts(
                shop_pb2.ListProductsRequest(), timeout=DEADLINE_BELOW_THE_FLOOR
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # HTTP/JSON sends no deadline of its own: the edge drops gRPC's headers from it and bounds the call at 30 s,
    # so a grpc-timeout header changes nothing and the call is answered.
    answered = await http.get("/v1/products", params={"pageSize": 1}, headers={"grpc-timeout": "20m"})  # 20 ms
    assert answered.status_code == 200, answered.text


def grpc_web_list_products(timeout: str) -> tuple[bytes, dict[str, str]]:
    """A gRPC-Web ListProducts (body, headers) with this grpc-timeout."""
    message = shop_pb2.ListProductsRequest(page_size=1).SerializeToString()
    headers = {**GRPC_WEB_HEADERS, "grpc-timeout": timeout}
    return frame(message), headers


def grpc_web_status(answer: httpx.Response) -> int:
    """The grpc-status of a gRPC-Web answer: in its headers (trailers-only) or its trailer frame."""
    if "grpc-status" in answer.headers:
        return int(answer.headers["grpc-status"])
    [trailers] = [payload.decode() for flags, payload in frames(answer.content) if flags == TRAILERS_FLAG]
    [status] = [line.split(":", 1)[1].strip() for line in trailers.split("\r\n") if line.startswith("grpc-status:")]
    return int(status)


# A deadline the module's gateway takes (above its floor, MIN_CLIENT_DEADLINE_SECONDS).
ACCEPTED_DEADLINE = "20S"


async def test_a_malformed_grpc_timeout_is_refused_at_the_edge_and_never_reaches_another_clients_call(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    # The gateway's gRPC server answered `zzz` INTERNAL and kept its failed parse in the HPACK table of the one
    # connection the edge shares for every client: after a short deadline and then `zzz`, every other client's
    # call with a deadline was INTERNAL "Error parsing 'grpc-timeout' metadata".
    for timeout in ("1m", "zzz", "1m", "1.5S", "123456789S", "5s"):
        body, headers = grpc_web_list_products(timeout)
        answer = await http.post("/shopmesh.gateway.v1.ShopService/ListProducts", content=body, headers=headers)
        if timeout == "1m":
            continue
        assert answer.status_code == 200, (timeout, answer.status_code, answer.text)
        assert answer.headers["grpc-status"] == str(INVALID_ARGUMENT), (timeout, answer.headers)
        assert answer.headers["grpc-message"] == MALFORMED_GRPC_TIMEOUT_MESSAGE
        details = status_details(answer.headers)
        assert details.code == INVALID_ARGUMENT
        reasons, violations = set(), []
        for packed in details.details:
            info, bad_request = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
            if packed.Unpack(info):
                reasons.add(info.reason)
            if packed.Unpack(bad_request):
                violations += [(v.field, v.reason) for v in bad_request.field_violations]
        assert reasons == {"VALIDATION_FAILED"}
        assert violations == [("grpc-timeout", MALFORMED_GRPC_TIMEOUT)]

    # Another client, each protocol, a deadline the gateway takes: answered.
    async with httpx.AsyncClient(base_url=http.base_url, timeout=60) as other:
        body, headers = grpc_web_list_products(ACCEPTED_DEADLINE)
        answered = await other.post("/shopmesh.gateway.v1.ShopService/ListProducts", content=body, headers=headers)
        assert (answered.status_code, grpc_web_status(answered)) == (200, 0), answered.headers
        json_answer = await other.get("/v1/products", params={"pageSize": 1})
        assert json_answer.status_code == 200, json_answer.text
    assert stack.http_url is not None
    async with grpc.aio.insecure_channel(stack.http_url.removeprefix("http://")) as channel:
        products = await shop_pb2_grpc.ShopServiceStub(channel).ListProducts(
            shop_pb2.ListProductsRequest(page_size=1), timeout=float(ACCEPTED_DEADLINE.removesuffix("S"))
        )
        assert len(products.products) == 1


@pytest.mark.parametrize("name", ["grpc-status", "grpc-retry-pushback-ms"])
async def test_a_grpc_header_of_an_answer_in_a_grpc_web_request_is_dropped_not_a_server_error(
    http: httpx.AsyncClient, name: str
) -> None:
    # The gateway's gRPC server parses them from a request too: `zzz` was INTERNAL "Error parsing ... metadata".
    body, headers = grpc_web_list_products(ACCEPTED_DEADLINE)
    answer = await http.post(
        "/shopmesh.gateway.v1.ShopService/ListProducts", content=body, headers={**headers, name: "zzz"}
    )
    assert (answer.status_code, grpc_web_status(answer)) == (200, 0), dict(answer.headers)


async def test_a_bad_grpc_encoding_is_refused_at_the_edge_and_never_fails_another_clients_gzip_call(
    http: httpx.AsyncClient,
) -> None:
    # The gateway's gRPC server answered each INTERNAL "Error parsing 'grpc-encoding' metadata" and kept its
    # failed parse in the HPACK table of the one connection the edge shares for every client: the next gzip
    # call, anyone's, was INTERNAL too.
    message = gzip.compress(shop_pb2.ListProductsRequest(page_size=1).SerializeToString())
    body = frame(message, flags=1)
    _, headers = grpc_web_list_products(ACCEPTED_DEADLINE)
    refusals = {
        "GZIP": UNSUPPORTED_GRPC_ENCODING_MESSAGE,
        "zzz": UNSUPPORTED_GRPC_ENCODING_MESSAGE,
        "gzip;q=1": MALFORMED_GRPC_ENCODING_MESSAGE,
        "": MALFORMED_GRPC_ENCODING_MESSAGE,
    }
    for encoding, refusal in refusals.items():
        answer = await http.post(
            "/shopmesh.gateway.v1.ShopService/ListProducts",
            content=body,
            headers={**headers, "grpc-encoding": encoding},
        )
        assert answer.status_code == 200, (encoding, answer.status_code, answer.text)
        assert answer.headers["grpc-message"] == refusal, (encoding, answer.headers)
    async with httpx.AsyncClient(base_url=http.base_url, timeout=60) as other:
        answered = await other.post(
            "/shopmesh.gateway.v1.ShopService/ListProducts", content=body, headers={**headers, "grpc-encoding": "gzip"}
        )
        assert (answered.status_code, grpc_web_status(answered)) == (200, 0), answered.headers


async def test_a_grpc_web_trailers_frame_as_a_request_is_refused_not_called(http: httpx.AsyncClient) -> None:
    # The gateway's gRPC server read a frame flagged 0x80 (gRPC-Web's trailers) as the request and answered it.
    message = shop_pb2.ListProductsRequest(page_size=1).SerializeToString()
    _, headers = grpc_web_list_products(ACCEPTED_DEADLINE)
    answer = await http.post(
        "/shopmesh.gateway.v1.ShopService/ListProducts",
        content=frame(message, flags=TRAILERS_FLAG),
        headers=headers,
    )
    assert answer.status_code == 200, dict(answer.headers)
    assert answer.headers["grpc-status"] == str(INVALID_ARGUMENT), dict(answer.headers)
    assert answer.headers["grpc-message"] == INVALID_GRPC_FRAME_FLAG_MESSAGE


@pytest.mark.parametrize(
    "body", [b"", b"\x00\x00\x00", frame(b"\x08\x01", length=1000)], ids=["empty", "3 bytes", "cut short"]
)
async def test_a_grpc_web_body_that_is_not_one_whole_message_is_the_clients_mistake(
    http: httpx.AsyncClient, body: bytes
) -> None:
    # The gateway's gRPC server (grpc.aio) never answered a unary call that ended without a whole message: it
    # waited for the edge's 30 s bound, then UNAVAILABLE, which a client retries.
    _, headers = grpc_web_list_products(ACCEPTED_DEADLINE)
    answer = await http.post("/shopmesh.gateway.v1.ShopService/ListProducts", content=body, headers=headers)
    assert answer.status_code == 200, dict(answer.headers)
    assert answer.headers["grpc-status"] == str(INVALID_ARGUMENT), dict(answer.headers)
    assert answer.headers["grpc-message"] == INCOMPLETE_GRPC_MESSAGE_TEXT


@pytest.mark.parametrize("timeout", ["0n", "1n", "1u"])
async def test_a_deadline_that_runs_out_at_the_edge_is_deadline_exceeded_not_a_status_to_retry(
    http: httpx.AsyncClient, timeout: str
) -> None:
    # The edge's bound of the stream ran out before the gateway could answer: Envoy said UNAVAILABLE ("downstream
    # duration timeout", gRPC's reading of its 504), which a client retries at once, or UNKNOWN (its 408, when
    # the body had not been read yet). A call that reaches the gateway first (Envoy may take `0n` as no bound of
    # its own) is refused below the gateway's floor (INVALID_ARGUMENT, DEADLINE_TOO_SHORT) or, already past,
    # DEADLINE_EXCEEDED by its gRPC server. None is retried.
    body, headers = grpc_web_list_products(timeout)
    answer = await http.post("/shopmesh.gateway.v1.ShopService/ListProducts", content=body, headers=headers)
    assert answer.status_code == 200, (answer.status_code, dict(answer.headers))
    status = int(answer.headers["grpc-status"])
    if status == INVALID_ARGUMENT:
        details = status_details(answer.headers)
        info = error_details_pb2.ErrorInfo()
        assert any(packed.Unpack(info) and info.reason == "DEADLINE_TOO_SHORT" for packed in details.details)
    else:
        # The edge's (DEADLINE_RAN_OUT_MESSAGE), or the gateway's gRPC server's when the call reached it first.
        assert status == DEADLINE_EXCEEDED, dict(answer.headers)


async def test_a_browser_preflight_is_answered_and_responses_expose_the_idempotency_key(
    http: httpx.AsyncClient,
) -> None:
    origin = "https://shop.example"
    preflight = await http.options(
        "/v1/orders",
        headers={
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type,idempotency-key",
        },
    )
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == origin
    allowed = {h.strip() for h in preflight.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "idempotency-key", "x-grpc-web"} <= allowed
    assert "Origin" in preflight.headers["vary"], "a shared cache keeps a preflight's answer per origin too"
    listed = await http.get("/v1/products", params={"pageSize": 1}, headers={"origin": origin})
    assert listed.headers["access-control-allow-origin"] == origin
    assert "idempotency-key" in listed.headers["access-control-expose-headers"]
    assert "Origin" in listed.headers["vary"], "a shared cache keeps an answer per origin"


async def test_api_answers_are_kept_by_no_cache_and_never_sniffed(http: httpx.AsyncClient) -> None:
    # A shopper's orders, refusals, the edge's own 404 and the catalog: personal or not, none may stay
    # in a browser's disk cache after sign-out (Chromium kept GET /v1/orders there), nor be read as HTML.
    _, auth = await signed_up(http, "Hedy")
    answers = {
        "orders": await http.get("/v1/orders", headers=auth),
        "an order not found": await http.get("/v1/orders/ord_nope", headers=auth),
        "unauthenticated": await http.get("/v1/orders"),
        "the edge's 404": await http.get("/v1/nothing"),
        "products": await http.get("/v1/products", params={"pageSize": 1}),
    }
    for what, answer in answers.items():
        assert answer.headers.get("cache-control") == "no-store", (what, answer.status_code, dict(answer.headers))
        assert answer.headers.get("x-content-type-options") == "nosniff", (what, dict(answer.headers))
    # The storefront's files keep their own policy (revalidated, not unstored).
    page = await http.get("/")
    assert page.headers["cache-control"] == "no-cache", dict(page.headers)


async def test_an_http_request_is_one_trace_from_the_edge_through_the_gateway(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    response = await http.get("/v1/products/prod_chef_knife", headers={"traceparent": traceparent})
    assert response.status_code == 200, response.text

    def spans() -> list[dict[str, Any]] | None:
        found = spans_of_trace(stack, trace_id)
        return found if {HTTP_API, "gateway", "catalog", "inventory"} <= {s["service"] for s in found} else None

    trace = await eventually(lambda: asyncio.to_thread(spans), "the edge's, gateway's and callees' spans in one trace")
    [edge] = [s for s in trace if s["service"] == HTTP_API]
    [gateway] = [s for s in trace if s["service"] == "gateway" and s["kind"] == "server"]
    assert gateway["parent_span_id"] == edge["span_id"]


# Room for the shoppers' runs (the fixture's bound) besides the stack's start on a loaded machine.
@pytest.mark.timeout(300)
async def test_simulated_shoppers_over_http_json_get_answers_and_never_a_server_fault(
    stack: Stack, shoppers: Callable[..., Awaitable[Any]]
) -> None:
    # `make shoppers SHOPPERS_ARGS="--http ..."`: every step on its route through the edge, --strict.
    assert stack.http_url is not None
    args = ("--http", stack.http_url, "--shoppers", "3", "--duration", "5", "--think", "0.1,0.3")
    async with shop_client(stack) as shop:
        before = await stock_levels(shop, SEED_STOCK)
        shopping = await shoppers(stack.address("gateway"), *args, seed=5)
        assert_answered_but_for_checkouts(shopping)
        assert [run["Login"] for run in shopping.runs] == [{"OK": 3}] * len(shopping.runs)
        await assert_each_checkout_kept(shop, before, shopping.checkouts)


async def test_a_downstream_outage_is_a_503_the_client_may_retry(stack: Stack, http: httpx.AsyncClient) -> None:
    await stack.stop_service("catalog")
    try:
        code, unavailable = status_of(await http.get("/v1/products"))
        assert (code, unavailable["code"]) == (503, grpc.StatusCode.UNAVAILABLE.value[0])
    finally:
        await stack.start_service("catalog")

    # The gateway itself gone: Envoy answers in the API's error shape too, saying when to come back.
    await stack.stop_service("gateway")
    try:
        answer = await http.get("/v1/products")
        code, unreachable = status_of(answer)
        retry_info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}
        assert (code, unreachable["code"]) == (503, grpc.StatusCode.UNAVAILABLE.value[0])
        assert (unreachable["details"], answer.headers.get("retry-after")) == ([retry_info], "1"), answer.headers
        assert unreachable["message"]
    finally:
        await stack.start_service("gateway")

    async def answered() -> bool:
        # The gateway's breaker for catalog lets a probe through after its open period.
        return (await http.get("/v1/products")).status_code == 200

    # Polled gently, as a client backing off would.
    await testing.eventually(answered, "the products listed again once catalog is back", timeout=30, interval=0.5)


# Bodies the JSON parser or the transcoder cannot read, each with a secret in it: their messages quoted the
# value or the text around the error ("card.number: invalid value 4111111111111111 for type TYPE_STRING").
UNREADABLE_BODIES = [
    ("/v1/orders", '{"card": {"cvv": "737", "number": "4111111111111111"x}}', "4111111111111111"),
    ("/v1/orders", '{"card": {"number": 4111111111111111, "cvv": "737"}}', "4111111111111111"),
    ("/v1/orders", '{"card": {"number": ["4111111111111111"]}}', "4111111111111111"),
    ("/v1/orders", '{"card": {"number": "4242424242424242", "cvv": 737, "expMonth": "twelve"}}', "737"),
    ("/v1/login", '{"email": "leak@example.com", "password": "Zq9-secret-PW"x}', "Zq9-secret-PW"),
    ("/v1/login", '{"email": "leak@example.com", "password": 12345678}', "12345678"),
]


@pytest.mark.parametrize(("path", "body", "secret"), UNREADABLE_BODIES)
async def test_a_body_the_edge_cannot_read_is_refused_without_quoting_it(
    http: httpx.AsyncClient, path: str, body: str, secret: str
) -> None:
    # The storefront shows an error's message: the card number or password was put on the screen.
    refused = await http.post(path, content=body, headers={"content-type": "application/json"})
    code, status = status_of(refused)
    assert (code, status["code"]) == (400, INVALID_ARGUMENT), status
    assert status["message"] == UNREADABLE_BODY_MESSAGE
    assert secret not in refused.text


# Query parameters the transcoder cannot bind, each with a secret in it: for a value not of its field's type its
# message quoted the value ('page_size: invalid value "..." for type TYPE_INT32'), a secret pasted into a URL.
# A name the request has no field for shares Envoy's reason, so its message (which named it) is the same one.
UNREADABLE_QUERIES = [
    ("/v1/products", {"Zq9-secret-PW": "1"}, "Zq9-secret-PW"),
    ("/v1/products", {"pageSize": "Zq9-secret-PW"}, "Zq9-secret-PW"),
    ("/v1/products", {"pageSize": "4111111111111111"}, "4111111111111111"),
    ("/v1/products", {"category": "kitchen", "pageSize": "2.5e-secret"}, "2.5e-secret"),
    ("/v1/products/prod_french_press", {"maxRecommendations": "leak@example.com"}, "leak@example.com"),
    ("/v1/orders", {"pageSize": "hunter2-secret"}, "hunter2-secret"),
]


@pytest.mark.parametrize(("path", "params", "secret"), UNREADABLE_QUERIES)
async def test_a_query_parameter_the_edge_cannot_read_is_refused_without_quoting_it(
    http: httpx.AsyncClient, path: str, params: dict[str, str], secret: str
) -> None:
    # The storefront shows an error's message: the secret in the link was put on the screen.
    refused = await http.get(path, params=params)
    code, status = status_of(refused)
    assert (code, status["code"]) == (400, INVALID_ARGUMENT), status
    assert status["message"] == UNREADABLE_QUERY_MESSAGE
    assert secret not in refused.text
