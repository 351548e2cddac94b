"""The users domain: pure rules (validation, token claims, the signing-key schedule); no I/O."""
