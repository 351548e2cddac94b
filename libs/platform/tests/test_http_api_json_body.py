"""How the edge's transcoder reads a JSON body where docs/http-api.md says what it does: a key given twice is read
as its last value, not refused; JSON's looser spellings (protobuf's parser) are read, not refused; a body field
naming the path's variable is refused by its proto name, dropped by its JSON name. Pinned, not chosen: if a
release of Envoy's parser starts to refuse one (or to keep the first), the documentation must say so. The real
Envoy of `bootstrap()` in front of a recording gateway."""

from __future__ import annotations

import httpx
import pytest

from shopmesh_platform.http_api import UNREADABLE_BODY_MESSAGE

from .conftest import RecordingShop


def test_a_key_given_twice_in_a_json_body_is_read_as_its_last_value(edge: tuple[str, RecordingShop]) -> None:
    url, shop = edge
    shop.calls.clear()
    answer = httpx.post(
        url + "/v1/login",
        content=b'{"email":"first@example.com","email":"last@example.com","password":"p"}',
        headers={"content-type": "application/json"},
        timeout=10,
    )
    # The recording gateway refuses every Login (INVALID_CREDENTIALS): the call was made, with the last value.
    assert answer.status_code == 401, answer.text
    assert shop.calls == [("Login", "last@example.com")]


@pytest.mark.parametrize(
    "body",
    [
        b"{'email':'read@example.com','password':'p'}",
        b'{email:"read@example.com",password:"p"}',
        b'{"email":"read@example.com","password":"p",}',
    ],
    ids=["single quotes", "unquoted keys", "trailing comma"],
)
def test_a_json_body_in_a_spelling_strict_json_refuses_is_read_all_the_same(
    edge: tuple[str, RecordingShop], body: bytes
) -> None:
    # What a strict parser in front of the edge (a WAF's) reads as no JSON at all, the edge carries out.
    url, shop = edge
    shop.calls.clear()
    answer = httpx.post(url + "/v1/login", content=body, headers={"content-type": "application/json"}, timeout=10)
    assert answer.status_code == 401, answer.text
    assert shop.calls == [("Login", "read@example.com")]


@pytest.mark.parametrize("amount", ["+8900", "08900"])
def test_an_integer_string_with_a_sign_or_leading_zeros_is_read_as_its_decimal_value(
    edge: tuple[str, RecordingShop], amount: str
) -> None:
    url, shop = edge
    shop.calls.clear()
    body = {"expectedTotal": {"amountMinor": amount, "currency": "USD"}}
    answer = httpx.post(url + "/v1/orders", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    assert shop.calls == [("PlaceOrder", "8900")]


def test_a_body_field_naming_the_path_variable_by_its_proto_name_is_refused(edge: tuple[str, RecordingShop]) -> None:
    url, shop = edge
    shop.calls.clear()
    answer = httpx.post(url + "/v1/orders/ord_path:cancel", json={"order_id": "ord_body"}, timeout=10)
    assert answer.status_code == 400, answer.text
    assert answer.json()["message"] == UNREADABLE_BODY_MESSAGE
    assert shop.calls == []


def test_a_body_field_naming_the_path_variable_by_its_json_name_is_dropped_and_the_path_wins(
    edge: tuple[str, RecordingShop],
) -> None:
    url, shop = edge
    shop.calls.clear()
    answer = httpx.post(url + "/v1/orders/ord_path:cancel", json={"orderId": "ord_body"}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert shop.calls == [("CancelOrder", "ord_path")]
