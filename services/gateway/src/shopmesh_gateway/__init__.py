"""shopmesh gateway: the public ShopService in front of the internal services."""
