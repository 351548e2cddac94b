"""The edge's refusals (path variable in the query, 405) on the paths of a custom verb, with the real Envoy of
`bootstrap()` in front of a gateway that only records the calls it gets."""

from __future__ import annotations

import httpx
import pytest

from shopmesh_platform.http_api import PATH_VARIABLE_IN_QUERY

from .conftest import RecordingShop


@pytest.mark.parametrize(
    "path",
    [
        "/v1/orders/ord_from_the_path/:cancel?orderId=ord_from_the_query",
        "/v1/orders/ord_from_the_path//:cancel?order_id=ord_from_the_query",
        "/v1/orders/ord_from_the_path/:cancel?order%5Fid=ord_from_the_query",
    ],
)
def test_a_path_variable_in_the_query_is_refused_with_a_slash_before_the_custom_verb(
    edge: tuple[str, RecordingShop], path: str
) -> None:
    # The transcoder takes `/v1/orders/A/:cancel` for `/v1/orders/{order_id}:cancel` (order A); the edge's
    # regex `/v1/orders/[^/]+:cancel/*` does not, so the query's order is the one cancelled.
    url, shop = edge
    shop.calls.clear()
    response = httpx.post(url + path, json={}, timeout=10)
    assert ("CancelOrder", "ord_from_the_query") not in shop.calls
    assert response.status_code == 400, (response.status_code, response.text)
    assert PATH_VARIABLE_IN_QUERY in response.text


@pytest.mark.parametrize(
    "path",
    ["/v1/orders/ord_1:cancel/", "/v1/products:search/"],
)
def test_a_405_names_only_methods_the_path_takes(edge: tuple[str, RecordingShop], path: str) -> None:
    # docs/http-api.md: the transcoder takes a path with trailing slashes for the path without them, "and so
    # do this refusal and the 405s". For a custom verb it does not (404, "Could not resolve"), yet the edge
    # answers the other methods 405 with an Allow whose method then gets that 404.
    # A path no method takes is a 404 for every method, as the transcoder answers it.
    url, _ = edge
    refused = httpx.request("DELETE", url + path, timeout=10)
    assert refused.status_code in (404, 405), (refused.status_code, refused.text)
    if refused.status_code == 404:
        return
    for method in refused.headers["allow"].split(", "):
        allowed = httpx.request(method, url + path, json={} if method == "POST" else None, timeout=10)
        assert allowed.status_code != 404, (method, path, refused.headers["allow"], allowed.text)


def test_a_slash_after_a_custom_verb_makes_the_verb_part_of_the_order_id_and_never_cancels(
    edge: tuple[str, RecordingShop],
) -> None:
    # docs/http-api.md ("Errors"): `/v1/orders/ord_1:cancel/` is the order `ord_1:cancel`: a GET asks for
    # it, a POST is the 405 of `/v1/orders/{order_id}`; neither cancels `ord_1`.
    url, shop = edge
    shop.calls.clear()
    posted = httpx.post(url + "/v1/orders/ord_1:cancel/", json={}, timeout=10)
    assert (posted.status_code, posted.headers.get("allow")) == (405, "GET, HEAD"), posted.text
    assert shop.calls == []
    httpx.get(url + "/v1/orders/ord_1:cancel/", timeout=10)
    assert shop.calls == [("GetOrder", "ord_1:cancel")]


@pytest.mark.parametrize(("query", "named"), [("orderId", "order_id (orderId in the query)"), ("order_id", "order_id")])
def test_a_path_variable_in_the_query_is_named_in_the_message_as_its_field(
    edge: tuple[str, RecordingShop], query: str, named: str
) -> None:
    # The field violation names the field by its proto name (as every field path of the API's errors): so does
    # the message, with the query's own spelling beside it when that is another.
    url, _ = edge
    response = httpx.get(f"{url}/v1/orders/ord_1?{query}=ord_2", timeout=10)
    assert response.status_code == 400, response.text
    status = response.json()
    assert status["details"][1]["fieldViolations"][0]["field"] == "order_id", status
    assert status["message"] == f"{named}: given by the path (/v1/orders/{{order_id}}), not as a query parameter"


def test_an_empty_product_id_with_its_trailing_slash_lists_the_products(edge: tuple[str, RecordingShop]) -> None:
    # docs/http-api.md: a trailing slash is dropped, so `/v1/products/` (a client's `/v1/products/${id}` with an
    # empty id) is ListProducts, not GetProductPage of an empty id: the client must refuse the empty id itself.
    url, shop = edge
    shop.calls.clear()
    answer = httpx.get(url + "/v1/products/", timeout=10)
    assert answer.status_code == 200, answer.text
    assert shop.calls == [("ListProducts", "0")]
