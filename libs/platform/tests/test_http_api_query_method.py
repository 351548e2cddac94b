"""HTTP's QUERY method (RFC 10008, The HTTP QUERY Method) at the edge, with the real Envoy of `bootstrap()`
(docs/http-api.md): the API takes none, and Envoy itself refuses one without a content type."""

from __future__ import annotations

import httpx
import pytest

from shopmesh_platform.http_api import QUERY_WITHOUT_CONTENT_TYPE

from .conftest import RecordingShop

INVALID_ARGUMENT = 3


@pytest.mark.parametrize("path", ["/v1/products", "/v1/orders/ord_1:cancel", "/v1/nothing"])
def test_a_query_without_a_content_type_is_told_to_send_one(edge: tuple[str, RecordingShop], path: str) -> None:
    # Envoy refuses it before any route, whatever the path, with an empty body of its own: the client must
    # still be told what is wrong, in the API's error shape.
    url, shop = edge
    shop.calls.clear()
    refused = httpx.request("QUERY", url + path, timeout=10)
    assert refused.status_code == 400, refused.text
    assert refused.headers["content-type"] == "application/json"
    status = refused.json()
    assert status["code"] == INVALID_ARGUMENT, status
    assert "Content-Type" in status["message"], status
    [info, bad_request] = status["details"]
    assert info["reason"] == "VALIDATION_FAILED"
    assert [v["reason"] for v in bad_request["fieldViolations"]] == [QUERY_WITHOUT_CONTENT_TYPE]
    assert shop.calls == []


def test_a_query_with_a_content_type_is_a_405_and_other_400s_keep_their_own_message(
    edge: tuple[str, RecordingShop],
) -> None:
    # The Status above is given to Envoy's reason for that refusal only, not to every 400 of the edge's.
    url, _ = edge
    with_content = httpx.request("QUERY", url + "/v1/products", json={}, timeout=10)
    assert (with_content.status_code, with_content.headers["allow"]) == (405, "GET, HEAD"), with_content.text
    not_json = httpx.post(url + "/v1/login", content=b"{x", headers={"content-type": "application/json"}, timeout=10)
    assert not_json.status_code == 400, not_json.text
    assert QUERY_WITHOUT_CONTENT_TYPE not in not_json.text
    assert not_json.json()["message"], not_json.text
