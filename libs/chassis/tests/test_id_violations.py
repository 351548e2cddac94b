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


def test_an_empty_id_is_refused_in_the_wording_the_service_asks_for() -> None:
    assert id_violations("order_id", "", required_description="required") == [
        FieldViolation("order_id", "required", "REQUIRED")
    ]
    # Only REQUIRED's text: a bad id is refused in the one wording of every service.
    assert id_violations("order_id", "ord 1", required_description="required") == [
        FieldViolation("order_id", "printable characters only, no spaces", "INVALID_FORMAT")
    ]


@pytest.mark.parametrize("value", [" ", "\t\n", "\u2028", " " * (MAX_ID_LENGTH + 1)])
def test_a_blank_id_is_refused_as_empty_when_the_service_takes_it_for_empty(value: str) -> None:
    assert id_violations("user_id", value, blank_is_empty=True) == [
        FieldViolation("user_id", "must not be empty", "REQUIRED")
    ]
    assert id_violations("user_id", value)[0].reason in {"INVALID_FORMAT", "TOO_LONG"}


def test_an_id_with_a_visible_character_is_not_blank() -> None:
    assert id_violations("user_id", " usr_1", blank_is_empty=True) == [
        FieldViolation("user_id", "printable characters only, no spaces", "INVALID_FORMAT")
    ]
    assert id_violations("user_id", "\u202e", blank_is_empty=True, listable=True) == [
        FieldViolation("user_id", "printable characters only, no spaces or commas", "INVALID_FORMAT")
    ]
    assert id_violations("user_id", "usr_1", blank_is_empty=True) == []
