"""shopmesh recommendations: products related to a product or a user, learned from confirmed orders."""
