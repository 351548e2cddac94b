"""shopmesh orders: the checkout saga's orchestrator."""
