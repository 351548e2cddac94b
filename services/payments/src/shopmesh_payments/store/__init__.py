"""Tables and repositories of the payments database; no business rules."""
