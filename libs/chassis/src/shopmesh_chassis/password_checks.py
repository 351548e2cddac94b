"""How many password hashes (argon2 checks) one Login costs users: one rule for users, which checks, and for the
gateway, which charges each client's password buckets for them before users sees the call.

users checks a password NFKC-normalized, and, when normalizing changes it, as sent too (accounts registered
before passwords were normalized hold a hash of it as sent), for an unknown e-mail as well so that both take the
same time. Such a login is two hashes: a gateway charging it as one let every client address make twice the
hashing its password bucket promises (docs/auth.md, "Login throttling"). Two copies of the rule would drift, and
a service never imports another's code, so it lives here.
"""

from __future__ import annotations

import unicodedata

from shopmesh_chassis.text_lines import AS_SENT_PER_CHARACTER, too_long_to_normalize

# The most characters a password has once normalized (NIST SP 800-63B asks for at least 64).
MAX_PASSWORD_LENGTH = 128
# The most characters a password may have as sent (too_long_to_check): the bound a Login states (users.proto),
# named here so that a refusal says the number it applies, not MAX_PASSWORD_LENGTH's.
MAX_PASSWORD_LENGTH_AS_SENT = AS_SENT_PER_CHARACTER * MAX_PASSWORD_LENGTH


def too_long_to_check(password: str) -> bool:
    """Whether `password` is longer than any of MAX_PASSWORD_LENGTH characters could be as sent: refused before
    it is normalized or hashed, for NFKC can lengthen a text eighteenfold and megabytes of it would hold the
    event loop for seconds (at users, and at the gateway asking `checked_as_sent`)."""
    return too_long_to_normalize(password, MAX_PASSWORD_LENGTH)


def checked_as_sent(password: str) -> bool:
    """Whether a Login checks `password` as sent besides normalized: NFKC changes it. False for one too long to
    check, which is refused before any hashing."""
    return not too_long_to_check(password) and not unicodedata.is_normalized("NFKC", password)


def login_password_hashes(password: str) -> int:
    """The argon2 checks a Login with `password` has users make, at most: 2 when it is checked as sent too,
    else 1 (a login refused before hashing, for an empty or over-long password, is charged as one all the
    same: what it is refused for is users' to say)."""
    return 2 if checked_as_sent(password) else 1
