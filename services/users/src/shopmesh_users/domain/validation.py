"""Validation of requests: INVALID_ARGUMENT with one FieldViolation per bad field, ErrorInfo reason
VALIDATION_FAILED. Each `validate_*` returns the normalized command the application runs."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence

from shopmesh_chassis.contract_limits import id_violations, required_violation, too_long
from shopmesh_chassis.email_addresses import MAX_EMAIL_LENGTH, canonical_email, is_email_address
from shopmesh_chassis.errors import FieldViolation, InvalidArgument
from shopmesh_chassis.password_checks import (
    MAX_PASSWORD_LENGTH,
    MAX_PASSWORD_LENGTH_AS_SENT,
    checked_as_sent,
    too_long_to_check,
)
from shopmesh_chassis.text_lines import line_violation, normalized_line, shows_something, too_long_to_normalize
from shopmesh_users.domain.models import Credentials, Registration

VALIDATION_FAILED = "VALIDATION_FAILED"
PASSWORD_TOO_COMMON = "PASSWORD_TOO_COMMON"

MIN_PASSWORD_LENGTH = 8
MAX_DISPLAY_NAME_LENGTH = 50

# Whether a new password is too easy to guess, given the words of its account (its e-mail address, the parts of
# it, the display name): a common password, or one made of those words. A pure function
# (shopmesh_users.password_strength), which the application runs off the event loop on what `guess_question`
# asks, and hands its answer to `validate_registration`.
GuessableCheck = Callable[[str, Sequence[str]], bool]
_WORD_SEPARATORS = re.compile(r"[\W_]+")


def normalize_password(password: str) -> tuple[str, FieldViolation | None]:
    """NFKC, as NIST SP 800-63B (5.1.1.2) asks: the same text typed on another device (composed, or
    decomposed as macOS pastes it; full-width, a ligature) is the same password. Spaces are kept.
    A password longer than any could be as sent is not normalized: it comes back as it is, with its TOO_LONG
    violation, for the caller to report beside the other fields' (one violation per invalid field)."""
    # Checked before normalizing, with the chassis' bound of any text typed in any normal form (a decomposed
    # one is longer): NFKC can lengthen a text eighteenfold (U+FDFA), and a request of megabytes normalized
    # would hold the event loop for seconds and take hundreds of MiB. The description names that bound: a
    # Login of 1,024 characters is checked (and fails as a wrong password), so "at most 128" would misstate it.
    if too_long_to_check(password):
        description = f"must be at most {MAX_PASSWORD_LENGTH_AS_SENT:,} characters as sent"
        return password, FieldViolation("password", description, "TOO_LONG")
    return unicodedata.normalize("NFKC", password), None


def _fail(violations: Sequence[FieldViolation]) -> InvalidArgument:
    summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
    return InvalidArgument(f"invalid request: {summary}", violations, reason=VALIDATION_FAILED)


def _email_violation(email: str) -> FieldViolation | None:
    if not email:
        return required_violation("email")
    if len(email) > MAX_EMAIL_LENGTH:
        return too_long("email", MAX_EMAIL_LENGTH)
    if not is_email_address(email):
        return FieldViolation("email", "must be a valid e-mail address", "INVALID_FORMAT")
    return None


def _password_violation(password: str, guessable: bool) -> FieldViolation | None:
    if (violation := _password_rule_violation(password)) is not None:
        return violation
    # NIST SP 800-63B 5.1.1.2: not a commonly used or compromised value, nor a context-specific word. The
    # description says what to do, never the password.
    if guessable:
        description = (
            "is too easy to guess (a common password, or one made of your e-mail address or name): "
            "choose a longer or less common password"
        )
        return FieldViolation("password", description, PASSWORD_TOO_COMMON)
    return None


def _password_rule_violation(password: str) -> FieldViolation | None:
    """The violation of a rule checked before the guessability estimate, which only a password meeting them is
    worth."""
    if not password:
        return required_violation("password")
    # Eight spaces are a password anyone can guess, and none that a person can see they typed.
    if not shows_something(password):
        return FieldViolation("password", "must not be blank: it needs a visible character", "REQUIRED")
    if len(password) < MIN_PASSWORD_LENGTH:
        return FieldViolation("password", f"must be at least {MIN_PASSWORD_LENGTH} characters", "TOO_SHORT")
    if len(password) > MAX_PASSWORD_LENGTH:
        return too_long("password", MAX_PASSWORD_LENGTH)
    return None


def _account_words(email: str, display_name: str) -> list[str]:
    """The words a guess at this account's password starts from: the e-mail address, its local part, the words
    of the local part and of the display name ("ann.lee+shop" is "ann", "lee", "shop"), and those words run
    together ("annleeshop", "AnnLee": zxcvbn matches a caller's word whole, so "annlee12" passed with the parts
    alone). Each cut to its field's limit: either may be far longer, refused as TOO_LONG beside the password's
    own violation."""
    email, display_name = email[:MAX_EMAIL_LENGTH], display_name[:MAX_DISPLAY_NAME_LENGTH]
    local_part = email.rpartition("@")[0]
    words = [email, local_part, display_name]
    for text in (local_part, display_name):
        parts = _WORD_SEPARATORS.split(text)
        words += [*parts, "".join(parts)]
    return list(dict.fromkeys(word for word in words if word))


def _display_name(display_name: str) -> tuple[str, FieldViolation | None]:
    """The display name as kept, and its violation. One longer than any could be as sent is neither normalized
    nor scanned (`text_lines.too_long_to_normalize`): it comes back as it is, TOO_LONG."""
    over = too_long("display_name", MAX_DISPLAY_NAME_LENGTH)
    if too_long_to_normalize(display_name, MAX_DISPLAY_NAME_LENGTH):
        return display_name, over
    name = normalized_line(display_name)
    violation = line_violation("display_name", name)
    if violation is None and len(name) > MAX_DISPLAY_NAME_LENGTH:
        violation = over
    return name, violation


def guess_question(email: str, password: str, display_name: str) -> tuple[str, list[str]] | None:
    """What Register's guessability estimate is asked (the password as hashed, the words of its account), or None
    when the password breaks a rule checked first and no estimate is needed."""
    name, _ = _display_name(display_name)
    password, _ = normalize_password(password)
    if _password_rule_violation(password) is not None:
        return None
    return password, _account_words(canonical_email(email), name)


def validate_registration(email: str, password: str, display_name: str, *, guessable: bool) -> Registration:
    """`guessable`: the estimate's answer to `guess_question` (False when it asked none)."""
    normalized = canonical_email(email)
    name, name_violation = _display_name(display_name)
    # The limits apply to what is hashed: normalizing may lengthen a password (a ligature becomes letters).
    # A password too long to normalize comes back as sent, over MAX_PASSWORD_LENGTH whatever its form, so
    # `_password_violation` refuses it with Register's own rule (8-128 characters), not Login's bound as sent.
    password, _ = normalize_password(password)
    violations = [
        v
        for v in (
            _email_violation(normalized),
            _password_violation(password, guessable),
            name_violation,
        )
        if v is not None
    ]
    if violations:
        raise _fail(violations)
    return Registration(email=normalized, password=password, display_name=name)


def validate_login(email: str, password: str) -> Credentials:
    """Only emptiness is checked, and a password longer than any could be as sent (see `normalize_password`):
    any other e-mail or password fails as INVALID_CREDENTIALS, so a malformed address is not told apart from
    an unknown one."""
    normalized = canonical_email(email)
    normalized_password, too_long = normalize_password(password)
    violations: list[FieldViolation] = []
    if not normalized:
        violations.append(required_violation("email"))
    if too_long is not None:
        violations.append(too_long)
    elif not normalized_password:
        violations.append(required_violation("password"))
    if violations:
        raise _fail(violations)
    return Credentials(
        email=normalized,
        password=normalized_password,
        # The chassis' rule, the one the gateway charges a login's hashes by: a login checked as sent too costs
        # users two, and a gateway counting it as one gave every client twice its share of the hashing.
        password_as_sent=password if checked_as_sent(password) else None,
    )


def validate_user_id(user_id: str) -> str:
    # Every service's rule for an id it is handed: no user has such an id.
    if violations := id_violations("user_id", user_id):
        raise _fail(violations)
    return user_id
