"""shopmesh's users service: accounts, login (EdDSA-signed JWTs) and the keys that verify the tokens."""
