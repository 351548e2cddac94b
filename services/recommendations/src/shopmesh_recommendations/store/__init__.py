"""Co-purchase counts and purchase histories (SQLAlchemy 2, SQLite and PostgreSQL alike)."""
