"""Page tokens: what this module issued comes back as the key it carried; anything else, forged ones
included, is INVALID_ARGUMENT (INVALID_PAGE_TOKEN) before a query sees it, never INTERNAL."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from shopmesh_chassis.errors import FieldViolation, InvalidArgument
from shopmesh_chassis.pagination import (
    INVALID_PAGE_TOKEN,
    MAX_PAGE_TOKEN_LENGTH,
    VALIDATION_FAILED,
    _filters_hash,
    decode_instant,
    decode_page_token,
    encode_page_token,
    instant_page_key,
    invalid_request,
    page_token_key,
)

FILTERS = {"rpc": "ListThings", "category": "socks"}


def forged(key: object, filters: dict[str, str] = FILTERS) -> str:
    """A token as a client could write one: the filter hash is no secret."""
    payload = json.dumps({"k": key, "f": _filters_hash(filters)}).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def test_a_token_gives_back_the_key_it_was_issued_with() -> None:
    token = encode_page_token(("Wool socks ✓", 2**40), FILTERS)
    assert decode_page_token(token, FILTERS, (str, int)) == ("Wool socks ✓", 2**40)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("!!!", id="not-base64"),
        pytest.param(base64.urlsafe_b64encode(b"[" * 3000).decode(), id="nested-beyond-recursion"),
        pytest.param(base64.urlsafe_b64encode(b"\xff\xfe").decode(), id="not-utf8"),
        pytest.param("A" * (MAX_PAGE_TOKEN_LENGTH + 1), id="too-long"),
        pytest.param(encode_page_token(("a", 1), {"rpc": "ListThings", "category": "hats"}), id="other-filters"),
        pytest.param(forged(["a"]), id="too-few-items"),
        pytest.param(forged([1, 1]), id="wrong-type"),
        pytest.param(forged(["a", True]), id="bool-for-int"),
        pytest.param(forged(["a", 2**63]), id="beyond-bigint"),
        pytest.param(forged(["a", -(2**63) - 1]), id="below-bigint"),
        pytest.param(forged(["a\x00b", 1]), id="nul-in-text"),
        pytest.param(forged(["\ud800", 1]), id="lone-surrogate"),
    ],
)
def test_anything_else_is_an_invalid_page_token(token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode_page_token(token, FILTERS, (str, int))
    assert caught.value.reason == INVALID_PAGE_TOKEN
    assert [v.field for v in caught.value.violations] == ["page_token"]


@pytest.mark.parametrize("character", ["🔪", "\x01", '"', "ж"], ids=["4-byte", "control", "quote", "2-byte"])
def test_the_longest_keys_services_page_by_make_tokens_that_come_back(character: str) -> None:
    """A 200-character product name of any script, and a 64-character id: the widest key issued."""
    key = (character * 200, "p" * 64)
    token = encode_page_token(key, FILTERS)
    assert len(token) <= MAX_PAGE_TOKEN_LENGTH
    assert decode_page_token(token, FILTERS, (str, str)) == key


def test_a_token_issued_with_escaped_characters_still_comes_back() -> None:
    """Tokens issued before the JSON kept non-ASCII characters as they are (escaped as \\uXXXX)."""
    assert decode_page_token(forged(["Wool socks ✓", 7]), FILTERS, (str, int)) == ("Wool socks ✓", 7)


def test_the_widest_integers_a_bigint_holds_pass() -> None:
    for edge in (2**63 - 1, -(2**63)):
        assert decode_page_token(forged(["a", edge]), FILTERS, (str, int)) == ("a", edge)


def test_an_instant_comes_back_as_issued_in_utc() -> None:
    issued = datetime(2026, 12, 3, 2, 58, 1, 123456, tzinfo=UTC)
    assert decode_instant(issued.isoformat()) == issued


@pytest.mark.parametrize(
    "text",
    [
        "yesterday",
        "2026-12-03T02:58:01",  # no offset: never issued
        "0001-01-01T00:00:00+05:00",  # before year 1 in UTC: PostgreSQL refused it as INTERNAL
        "9999-12-31T23:59:59-05:00",  # after year 9999 in UTC
        "2026-12-03T02:58:01+01:00",
    ],
)
def test_an_instant_not_issued_here_is_an_invalid_page_token(text: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode_instant(text)
    assert caught.value.reason == INVALID_PAGE_TOKEN


def test_a_token_of_other_filters_says_to_start_again_not_only_that_filters_differ() -> None:
    """A token an earlier release issued for the same request (bound to fewer fields) is refused with the
    same words: a client told only "other filters" after an upgrade hunted for a change it never made."""
    earlier_release = encode_page_token(("a", 1), {"user_id": "u1"})
    with pytest.raises(InvalidArgument) as caught:
        decode_page_token(earlier_release, {"rpc": "ListOrders", "user_id": "u1"}, (str, int))
    assert caught.value.reason == INVALID_PAGE_TOKEN
    assert "earlier release" in caught.value.violations[0].description
    assert "start again from the first page" in caught.value.violations[0].description


def test_a_request_validated_field_by_field_collects_a_bad_tokens_violation_with_the_others() -> None:
    violations = [FieldViolation("page_size", "must be >= 0", "OUT_OF_RANGE")]
    assert page_token_key("", FILTERS, (str, int), violations) is None
    assert page_token_key(encode_page_token(("a", 1), FILTERS), FILTERS, (str, int), violations) == ("a", 1)
    assert invalid_request(violations).reason == VALIDATION_FAILED

    assert page_token_key("!!!", FILTERS, (str, int), violations) is None
    failed = invalid_request(violations)
    assert failed.reason == INVALID_PAGE_TOKEN
    assert [v.field for v in failed.violations] == ["page_size", "page_token"]


def test_an_instant_keyed_token_names_a_bad_instant_as_a_bad_token_beside_the_other_fields() -> None:
    issued = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    violations = [FieldViolation("user_id", "required", "REQUIRED")]
    assert instant_page_key(encode_page_token((issued.isoformat(), "ord_1"), FILTERS), FILTERS, violations) == (
        issued,
        "ord_1",
    )
    assert instant_page_key(forged(["2026-03-01T12:30:00+05:00", "ord_1"]), FILTERS, violations) is None
    failed = invalid_request(violations)
    assert (failed.reason, [v.field for v in failed.violations]) == (INVALID_PAGE_TOKEN, ["user_id", "page_token"])


@pytest.mark.parametrize("filters", [FILTERS, {"rpc": "ListThings", "category": "hats"}], ids=["same", "other"])
def test_a_token_is_not_compared_with_filters_while_a_field_it_is_bound_to_is_invalid(filters: dict[str, str]) -> None:
    """A bad filter field (one the token is bound to) is the request's error, not the token's: blaming the token
    too made the reason INVALID_PAGE_TOKEN, which tells a client to restart paging instead of fixing the field."""
    violations = [FieldViolation("category", "must be at most 64 characters", "TOO_LONG")]
    assert page_token_key(encode_page_token(("a", 1), filters), FILTERS, (str, int), violations) is None
    failed = invalid_request(violations)
    assert (failed.reason, [v.field for v in failed.violations]) == (VALIDATION_FAILED, ["category"])


def test_a_malformed_token_is_named_even_while_a_field_it_is_bound_to_is_invalid() -> None:
    """No filters could have issued it: the client must start paging again whatever else it got wrong."""
    violations = [FieldViolation("category", "must be at most 64 characters", "TOO_LONG")]
    assert page_token_key("!!!", FILTERS, (str, int), violations) is None
    failed = invalid_request(violations)
    assert (failed.reason, [v.field for v in failed.violations]) == (INVALID_PAGE_TOKEN, ["category", "page_token"])


def test_an_instant_keyed_token_is_not_compared_with_filters_while_a_field_it_is_bound_to_is_invalid() -> None:
    issued = datetime(2026, 3, 1, 12, 30, tzinfo=UTC).isoformat()
    token = encode_page_token((issued, "ord_1"), {"rpc": "ListThings", "user_id": "usr_1"})
    violations = [FieldViolation("user_id", "must be at most 64 characters", "TOO_LONG")]
    assert instant_page_key(token, {"rpc": "ListThings", "user_id": "u" * 65}, violations) is None
    assert [v.field for v in violations] == ["user_id"]


def test_an_instant_keyed_token_with_a_forged_instant_is_named_even_while_a_field_it_is_bound_to_is_invalid() -> None:
    """An instant not issued here is a token no filters could have issued, like a malformed one."""
    violations = [FieldViolation("user_id", "must be at most 64 characters", "TOO_LONG")]
    token = forged(["2026-03-01T12:30:00+05:00", "ord_1"])
    assert instant_page_key(token, {"rpc": "ListThings", "user_id": "u" * 65}, violations) is None
    failed = invalid_request(violations)
    assert (failed.reason, [v.field for v in failed.violations]) == (INVALID_PAGE_TOKEN, ["user_id", "page_token"])
