"""Alembic revisions of the inventory tables (branch `inventory`), run by the chassis at startup."""

from pathlib import Path

VERSIONS = Path(__file__).resolve().parent / "versions"
