"""The catalog's rules: models, validation, search terms, page tokens. No I/O, no grpc, no SQLAlchemy."""
