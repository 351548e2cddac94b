"""docs/architecture.md's resilience table agrees with the client breaker (shopmesh_chassis.client)."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def test_the_outage_row_says_a_targets_database_unavailable_still_counts() -> None:
    """Since 602d3b3 a target's own DATABASE_UNAVAILABLE (an ErrorInfo in the target's domain) opens its
    breaker (docs/chassis.md says so), but architecture.md still says every own error answer does not count."""
    row = next(line for line in DOC.read_text().splitlines() if line.startswith("| overload / outage |"))
    if "own error answer does not count" in row:
        assert "DATABASE_UNAVAILABLE" in row, row
