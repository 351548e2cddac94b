"""The local service mesh of `make run MESH=envoy`: every service behind a real Envoy sidecar, mutual TLS with
SPIFFE identities from a local certificate authority, and the call graph of the topology as the
authorization policy (docs/mesh.md)."""
