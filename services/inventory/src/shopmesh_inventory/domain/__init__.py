"""The inventory domain: stock levels, reservations and their state machine, request validation. No I/O."""
