"""shopmesh notifications: one e-mail per order event, delivered over SMTP."""
