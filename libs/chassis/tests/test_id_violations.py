"""`contract_limits.id_violations`: the rule for an id a caller hands a service, one violation at most."""

from __future__ import annotations

import pytest

from shopmesh_chassis.contract_limits import MAX_ID_LENGTH, id_violations
from shopmesh_chassis.errors import FieldViolation


@pytest.mark.parametrize(
    ("value", "listable", "expected"),
    [
        ("", False, FieldViolation("order_id", "must not be empty", "REQUIRED")),
        ("x" * (MAX_ID_LENGTH + 1), False, FieldViolation("order_id", "must be at most 64 characters", "TOO_LONG")),
        ("ord 1", False, FieldViolation("order_id", "printable characters only, no spaces", "INVALID_FORMAT")),
        (
            "ord 1",
            True,
            FieldViolation("order_id", "printable characters only, no spaces or commas", "INVALID_FORMAT"),
        ),
        ("ord,1", True, FieldViolation("order_id", "printable characters only, no spaces or commas", "INVALID_FORMAT")),
        (" " * (MAX_ID_LENGTH + 1), True, FieldViolation("order_id", "must be at most 64 characters", "TOO_LONG")),
    ],
)
def test_a_bad_id_is_refused_by_exactly_one_rule(value: str, listable: bool, expected: FieldViolation) -> None:
    assert id_violations("order_id", value, listable=listable) == [expected]


def test_a_good_id_and_an_empty_optional_one_are_accepted() -> None:
    assert id_violations("order_id", "x" * MAX_ID_LENGTH) == []
    assert id_violations("order_id", "ord,1") == []
    assert id_violations("category", "", required=False) == []
    assert id_violations("category", "home cooking", required=False) != []


@pytest.mark.parametrize("value", [" ", "\t\n", "\u2028"])
def test_a_blank_id_is_invalid_format_not_required(value: str) -> None:
    """money.proto's Identifiers: an id a request names with whitespace is refused INVALID_FORMAT. A blank one was
    sent, and is no id: it is not an empty one, in any service."""
    assert id_violations("user_id", value) == [
        FieldViolation("user_id", "printable characters only, no spaces", "INVALID_FORMAT")
    ]
