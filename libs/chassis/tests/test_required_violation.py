"""`contract_limits.required_violation`: the one answer every service gives a field left empty."""

from __future__ import annotations

from shopmesh_chassis.contract_limits import id_violations, required_violation
from shopmesh_chassis.errors import FieldViolation
from shopmesh_chassis.text_lines import line_violation


def test_a_field_left_empty_is_refused_required_with_the_wording_clients_show() -> None:
    # Spelled out, not read back from the chassis' constants: this wording is on the wire, in every service.
    assert required_violation("card") == FieldViolation("card", "must not be empty", "REQUIRED")


def test_an_empty_id_and_an_empty_line_of_text_get_that_same_violation() -> None:
    assert id_violations("order_id", "") == [required_violation("order_id")]
    assert line_violation("display_name", "\u200b") == required_violation("display_name")
