"""Every 401 of the edge carries the bearer challenge (RFC 6750, section 3), with `error="invalid_token"` when the
gateway refused the token it was sent and without an error code when none was sent (section 3.1), readable by a
cross-origin page (docs/http-api.md, "Errors"). The real Envoy of `bootstrap()` in front of a gateway answering
UNAUTHENTICATED as the real one does (conftest's RecordingShop)."""

from __future__ import annotations

import httpx
import pytest

from shopmesh_gateway import sign_outs, tokens
from shopmesh_platform.http_api import (
    BEARER_CHALLENGE,
    INVALID_TOKEN_CHALLENGE,
    INVALID_TOKEN_REASONS,
    WWW_AUTHENTICATE,
)

from .conftest import EXPIRED, RecordingShop


def test_the_edges_invalid_token_reasons_are_the_gateways() -> None:
    # The edge restates them (it imports no service): a reason the gateway adds or renames must be told here.
    assert set(INVALID_TOKEN_REASONS) == {tokens.TOKEN_INVALID, tokens.TOKEN_EXPIRED, sign_outs.TOKEN_REVOKED}
    assert tokens.TOKEN_MISSING not in INVALID_TOKEN_REASONS


def test_a_401_without_a_token_is_challenged_without_an_error_code(edge: tuple[str, RecordingShop]) -> None:
    url, _ = edge
    answer = httpx.get(url + "/v1/orders", timeout=10)
    assert answer.status_code == 401, answer.text
    assert answer.json()["details"][0]["reason"] == "TOKEN_MISSING", answer.text
    assert answer.headers.get_list(WWW_AUTHENTICATE) == ['Bearer realm="shopmesh"'], answer.headers


@pytest.mark.parametrize("token", ["not-a-token", EXPIRED])
def test_a_401_for_a_refused_token_says_invalid_token(edge: tuple[str, RecordingShop], token: str) -> None:
    url, _ = edge
    answer = httpx.get(url + "/v1/orders", headers={"authorization": f"Bearer {token}"}, timeout=10)
    assert answer.status_code == 401, answer.text
    assert answer.json()["details"][0]["reason"] in INVALID_TOKEN_REASONS, answer.text
    assert answer.headers.get_list(WWW_AUTHENTICATE) == ['Bearer realm="shopmesh", error="invalid_token"'], (
        answer.headers
    )
    assert answer.headers[WWW_AUTHENTICATE] == INVALID_TOKEN_CHALLENGE


def test_a_401_of_a_refused_password_is_challenged_without_an_error_code(edge: tuple[str, RecordingShop]) -> None:
    # RFC 9110: every 401 carries a challenge. Login's wrong password is no token's: no error code.
    url, _ = edge
    answer = httpx.post(url + "/v1/login", json={"email": "x@example.com", "password": "wrong"}, timeout=10)
    assert answer.status_code == 401, answer.text
    assert answer.headers.get_list(WWW_AUTHENTICATE) == [BEARER_CHALLENGE], answer.headers


def test_a_head_that_is_a_401_is_challenged_too(edge: tuple[str, RecordingShop]) -> None:
    url, _ = edge
    answer = httpx.head(url + "/v1/orders", headers={"authorization": f"Bearer {EXPIRED}"}, timeout=10)
    assert answer.status_code == 401, answer.headers
    assert answer.headers[WWW_AUTHENTICATE] == INVALID_TOKEN_CHALLENGE, answer.headers
    assert answer.content == b""


def test_a_cross_origin_page_can_read_the_challenge(edge: tuple[str, RecordingShop]) -> None:
    url, _ = edge
    answer = httpx.get(url + "/v1/orders", headers={"origin": "https://shop.example"}, timeout=10)
    assert answer.status_code == 401, answer.text
    exposed = {name.strip().lower() for name in answer.headers["access-control-expose-headers"].split(",")}
    assert WWW_AUTHENTICATE in exposed, answer.headers
    preflight = httpx.options(
        url + "/v1/orders",
        headers={"origin": "https://shop.example", "access-control-request-method": "GET"},
        timeout=10,
    )
    assert preflight.status_code == 200, preflight.headers


def test_no_other_answer_is_challenged(edge: tuple[str, RecordingShop]) -> None:
    url, _ = edge
    for answer in (
        httpx.get(url + "/v1/products?pageSize=1", timeout=10),
        httpx.get(url + "/v1/orders/ord_missing_1", timeout=10),
        httpx.get(url + "/v1/nothing", timeout=10),
    ):
        assert WWW_AUTHENTICATE not in answer.headers, (answer.status_code, answer.headers)
