"""Alembic revisions of the users tables (branch `users`), run by the chassis at startup."""

from pathlib import Path

VERSIONS = Path(__file__).resolve().parent / "versions"
