"""How the edge's transcoder reads a JSON body where docs/http-api.md says what it does: a key given twice is read
as its last value, not refused. Pinned, not chosen: if a release of Envoy's parser starts to refuse it (or to keep
the first), the documentation must say so. The real Envoy of `bootstrap()` in front of a recording gateway."""

from __future__ import annotations

import httpx

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
