"""shopmesh's service chassis: everything cross-cutting, written once for every service."""
