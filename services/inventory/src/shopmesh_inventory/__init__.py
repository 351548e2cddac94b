"""shopmesh's inventory service: stock levels and reservations with a TTL (contract shopmesh.inventory.v1)."""
