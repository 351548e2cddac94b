"""Alembic revisions of the payments tables (branch `payments`), run by the chassis at startup."""

from pathlib import Path

VERSIONS = Path(__file__).resolve().parent / "versions"
