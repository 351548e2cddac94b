"""The users service's tables and repositories (SQLAlchemy 2, SQLite and PostgreSQL alike)."""
