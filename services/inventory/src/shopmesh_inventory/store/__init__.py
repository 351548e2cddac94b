"""Tables and repositories of the inventory database; SQLite and PostgreSQL alike. No business rules."""
