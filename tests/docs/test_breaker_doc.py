"""docs/architecture.md's resilience table agrees with the client breaker (shopmesh_chassis.client)."""

from __future__ import annotations

from pathlib import Path

from shopmesh_chassis.db_errors import DATABASE_UNAVAILABLE

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def outage_row() -> str:
    return next(line for line in DOC.read_text().splitlines() if line.startswith("| overload / outage |"))


def test_the_outage_row_names_the_answer_an_open_breaker_fails_fast_with() -> None:
    row = outage_row()
    assert "fail fast with UNAVAILABLE `CIRCUIT_OPEN`" in row, row


def test_the_outage_row_says_a_targets_database_unavailable_still_counts() -> None:
    """Since 602d3b3 a target's own DATABASE_UNAVAILABLE (an ErrorInfo in the target's domain) opens its
    breaker (docs/chassis.md says so), while the target's other own error answers do not count."""
    row = outage_row()
    assert f"a target's own error answer does not count, except its `{DATABASE_UNAVAILABLE}`" in row, row
