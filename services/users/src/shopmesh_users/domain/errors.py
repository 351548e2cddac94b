"""The users service's errors, with the ErrorInfo reasons the contract names."""

from __future__ import annotations

import math

from shopmesh_chassis.errors import AlreadyExists, NotFound, ResourceExhausted, Unauthenticated, Unavailable

EMAIL_ALREADY_REGISTERED = "EMAIL_ALREADY_REGISTERED"
INVALID_CREDENTIALS = "INVALID_CREDENTIALS"
USER_NOT_FOUND = "USER_NOT_FOUND"
NO_SIGNING_KEY = "NO_SIGNING_KEY"
TOO_MANY_LOGIN_ATTEMPTS = "TOO_MANY_LOGIN_ATTEMPTS"


def email_already_registered(email: str) -> AlreadyExists:
    return AlreadyExists(
        "an account with this e-mail address exists", reason=EMAIL_ALREADY_REGISTERED, metadata={"email": email}
    )


def invalid_credentials() -> Unauthenticated:
    # One message and no metadata for an unknown e-mail and a wrong password alike: the caller must not
    # learn which accounts exist.
    return Unauthenticated("invalid e-mail or password", reason=INVALID_CREDENTIALS)


def too_many_login_attempts(retry_after_seconds: float) -> ResourceExhausted:
    # The same for every e-mail, known or not, with no metadata: a throttled login must not tell which
    # accounts exist any more than a failed one does.
    return ResourceExhausted(
        "too many failed logins for this e-mail address; retry later",
        reason=TOO_MANY_LOGIN_ATTEMPTS,
        # Whole seconds: a client shows it to a person ("try again in 28s", not "27.760722483s").
        retry_after_seconds=math.ceil(retry_after_seconds),
    )


def user_not_found(user_id: str) -> NotFound:
    return NotFound(f"user {user_id!r} not found", reason=USER_NOT_FOUND, metadata={"user_id": user_id})


def no_signing_key() -> Unavailable:
    return Unavailable("no signing key is active; retry shortly", reason=NO_SIGNING_KEY, retry_after_seconds=1.0)
