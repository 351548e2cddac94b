"""The users domain without I/O: validation, token claims, the signing-key schedule; and the pure helpers
beside it (JWK thumbprints, argon2 hashing, settings)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import threading
import time
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

from shopmesh_chassis import call_context
from shopmesh_chassis.clocks import MAX_CLOCK_SKEW
from shopmesh_chassis.config import ConfigError, load_settings
from shopmesh_chassis.db import Database
from shopmesh_chassis.errors import InvalidArgument, ResourceExhausted, Unavailable
from shopmesh_chassis.testing import eventually
from shopmesh_chassis.testing.process_gate import process_gate
from shopmesh_chassis.testing.text_reads import characters_read
from shopmesh_users import password_strength
from shopmesh_users import passwords as passwords_module
from shopmesh_users.application import UsersApplication
from shopmesh_users.domain.failed_logins import Attempts, LoginThrottle, Taken, email_key
from shopmesh_users.domain.keys import (
    LONGEST_TOKEN_LIFETIME,
    KeyMaterial,
    SigningKey,
    plan_revocation,
    plan_rotation,
    published_keys,
    rotation_due,
    signing_key,
)
from shopmesh_users.domain.models import Registration
from shopmesh_users.domain.tokens import AUDIENCE, ISSUER, build_access_claims
from shopmesh_users.domain.validation import (
    PASSWORD_TOO_COMMON,
    guess_question,
    validate_login,
    validate_registration,
    validate_user_id,
)
from shopmesh_users.metrics import EstimateFailure
from shopmesh_users.password_strength import (
    ESTIMATED_CHARACTERS,
    STOPPED_REASON,
    STOPPED_RETRY_AFTER_SECONDS,
    PasswordStrength,
    too_guessable,
)
from shopmesh_users.passwords import BUSY_REASON, Passwords
from shopmesh_users.settings import PASSWORD_HASH_MAX_PARALLELISM, UsersSettings
from shopmesh_users.signing import jwk_thumbprint
from shopmesh_users.wiring import key_policy

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
FIVE_MINUTES = timedelta(minutes=5)
PASSWORD = "long enough"


def violations(error: pytest.ExceptionInfo[InvalidArgument]) -> list[tuple[str, str]]:
    return [(v.field, v.reason) for v in error.value.violations]


def registration_of(email: str, password: str, display_name: str) -> Registration:
    """Register's validation with zxcvbn's estimate as the service asks it."""
    asked = guess_question(email, password, display_name)
    return validate_registration(email, password, display_name, guessable=asked is not None and too_guessable(*asked))


def registration_of_any_password(email: str, password: str, display_name: str) -> Registration:
    """Register's validation with every password taken as hard to guess: for the rules of the other fields and of
    a password's form and length ("p" * 128 is as guessable as it is long)."""
    return validate_registration(email, password, display_name, guessable=False)


# --- validation ------------------------------------------------------------------------------------


def test_registration_normalizes_email_and_trims_display_name_but_keeps_the_spaces_of_the_password() -> None:
    registration = registration_of("  Ann.Lee+shop@Example.COM ", " pass word ", "  Ann Lee ")
    assert registration.email == "ann.lee+shop@example.com"
    assert registration.display_name == "Ann Lee"
    assert registration.password == " pass word "


def test_registration_accepts_the_limits_of_every_field() -> None:
    email = f"{'a' * 64}@{'b' * 63}.{'c' * 63}.{'d' * 58}.io"
    assert len(email) == 254
    registration = registration_of_any_password(email, "p" * 128, "n" * 50)
    assert registration.email == email
    assert registration_of_any_password("a@b.io", "p" * 8, "n").display_name == "n"


@pytest.mark.parametrize(
    ("email", "password", "display_name", "expected"),
    [
        ("", PASSWORD, "Ann", [("email", "REQUIRED")]),
        ("   ", PASSWORD, "Ann", [("email", "REQUIRED")]),
        ("ann", PASSWORD, "Ann", [("email", "INVALID_FORMAT")]),
        ("ann@example", PASSWORD, "Ann", [("email", "INVALID_FORMAT")]),
        ("ann@@example.com", PASSWORD, "Ann", [("email", "INVALID_FORMAT")]),
        ("an n@example.com", PASSWORD, "Ann", [("email", "INVALID_FORMAT")]),
        ("ann.@example.com", PASSWORD, "Ann", [("email", "INVALID_FORMAT")]),
        (f"{'a' * 65}@example.com", PASSWORD, "Ann", [("email", "INVALID_FORMAT")]),
        # U+212A KELVIN SIGN, which Unicode's lower case maps to "k": a look-alike of kate@example.com.
        ("\u212aate@example.com", PASSWORD, "Ann", [("email", "INVALID_FORMAT")]),
        (f"a@{'b' * 60}.{'c' * 60}.{'d' * 60}.{'e' * 60}.{'f' * 60}.io", PASSWORD, "Ann", [("email", "TOO_LONG")]),
        ("ann@example.com", "", "Ann", [("password", "REQUIRED")]),
        ("ann@example.com", "7 chars", "Ann", [("password", "TOO_SHORT")]),
        ("ann@example.com", "p" * 129, "Ann", [("password", "TOO_LONG")]),
        ("ann@example.com", PASSWORD, "", [("display_name", "REQUIRED")]),
        ("ann@example.com", PASSWORD, "   ", [("display_name", "REQUIRED")]),
        ("ann@example.com", PASSWORD, "n" * 51, [("display_name", "TOO_LONG")]),
        ("", "", "", [("email", "REQUIRED"), ("password", "REQUIRED"), ("display_name", "REQUIRED")]),
    ],
)
def test_registration_rejects_each_bad_field_with_one_violation(
    email: str, password: str, display_name: str, expected: list[tuple[str, str]]
) -> None:
    with pytest.raises(InvalidArgument) as error:
        registration_of(email, password, display_name)
    assert error.value.reason == "VALIDATION_FAILED"
    assert violations(error) == expected


@pytest.mark.parametrize(
    "display_name",
    [
        "\u200b",  # ZERO WIDTH SPACE: not whitespace to str.strip(), nothing on screen
        " \u200b\u200e ",  # with a LEFT-TO-RIGHT MARK, between spaces
        "\ufeff",  # ZERO WIDTH NO-BREAK SPACE (a byte-order mark)
        "\u2060\u2060",  # WORD JOINER
    ],
)
def test_a_display_name_of_invisible_characters_only_is_required_as_an_empty_one_is(display_name: str) -> None:
    """The contract's "Name shown in the shop: 1-50 characters after trimming. Required": "   " is refused, but
    a name of format characters only (Unicode category Cf, which str.strip() keeps) shows as nothing at all
    and was accepted and stored."""
    with pytest.raises(InvalidArgument) as error:
        registration_of("ann@example.com", PASSWORD, display_name)
    assert violations(error) == [("display_name", "REQUIRED")]


@pytest.mark.parametrize("display_name", ["Ann\x1b[2J", "Ann\r\nLee", "Ann\x07", "Ann\x7f", "Ann\x85Lee"])
def test_a_display_name_with_control_characters_is_refused_not_stored(display_name: str) -> None:
    """A name shown in the shop is one line of text: a terminal escape, a line break, a bell or a C1 control
    in it is no part of anybody's name, and was stored and answered back as given (only U+0000 is refused,
    by the chassis)."""
    with pytest.raises(InvalidArgument) as error:
        registration_of("ann@example.com", PASSWORD, display_name)
    assert [field for field, _ in violations(error)] == ["display_name"]


# 48 characters as typed and shown; 62 code points decomposed (NFD), as macOS may send text.
VIETNAMESE_NAME = "Nguyễn Thị Phương Thảo Trần Hoàng Lộc Đặng Quỳnh"


def test_a_display_name_is_the_same_name_and_length_whether_sent_composed_or_decomposed() -> None:
    """The password is NFKC-normalized so that "the same text sent composed or decomposed (as macOS pastes
    it) is the same password" (docs/auth.md); the display name is neither normalized nor counted that way:
    a 48-character name is refused as longer than 50 characters when its accents arrive as combining marks,
    and the same name composed and decomposed is stored as two different strings."""
    composed = unicodedata.normalize("NFC", VIETNAMESE_NAME)
    decomposed = unicodedata.normalize("NFD", VIETNAMESE_NAME)
    assert (len(composed), len(decomposed)) == (48, 62)
    registration = registration_of("a@b.io", PASSWORD, decomposed)
    assert registration.display_name == composed


def test_a_display_name_longer_than_any_could_be_as_sent_is_refused_too_long_without_being_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A display name of a megabyte (what a request may carry) was NFC-normalized and looked up character by
    character before its 50-character limit was checked: ~70 ms of the event loop per Register."""
    read = characters_read(monkeypatch)
    name = "a" + "\u0301" * 499_999
    with pytest.raises(InvalidArgument) as error:
        registration_of("ann@example.com", PASSWORD, name)
    assert violations(error) == [("display_name", "TOO_LONG")]
    # The password's characters are looked up (is one of them visible?), none of the name's.
    assert read.count <= len(PASSWORD)


@pytest.mark.parametrize(
    "password",
    [
        " " * 8,
        "\u3000" * 8,  # IDEOGRAPHIC SPACE: eight spaces once NFKC-normalized
        " \t" * 4,
        "\u200b" * 8,  # ZERO WIDTH SPACE: not whitespace to str.strip(), nothing on screen
    ],
)
def test_a_password_with_no_visible_character_is_refused_as_blank(password: str) -> None:
    """An audit created an account with a password of eight spaces: only its length was checked."""
    with pytest.raises(InvalidArgument) as error:
        registration_of("ann@example.com", password, "Ann")
    assert violations(error) == [("password", "REQUIRED")]
    assert error.value.violations[0].description == "must not be blank: it needs a visible character"


@pytest.mark.parametrize("password", ["12345678", "abc12345", "password1", "qwertyuiop", "iloveyou", "P@ssw0rd!"])
def test_a_common_password_is_refused_with_what_to_do_and_without_the_password(password: str) -> None:
    """NIST SP 800-63B 5.1.1.2 (docs/auth.md): a new password on a list of commonly used values is refused. An
    audit created an account with "12345678"."""
    with pytest.raises(InvalidArgument) as error:
        registration_of("ann@example.com", password, "Ann")
    assert violations(error) == [("password", PASSWORD_TOO_COMMON)]
    (violation,) = error.value.violations
    assert "choose a longer or less common password" in violation.description
    assert password not in violation.description
    assert password not in str(error.value)


@pytest.mark.parametrize(
    "password",
    [
        "Zorblequint.Vantaxel@Example.com",  # the address, in any letter case
        "zorblequint.vantaxel",  # its local part
        "vantaxelzorblequint",  # the words of its local part
        "Quessimordant",  # the display name
        "zorblequintvantaxel12",  # the words of its local part run together, and digits
        "ZorblequintVantaxel!!",
    ],
)
def test_a_password_made_of_the_accounts_own_email_or_name_is_refused(password: str) -> None:
    """Context-specific words (NIST SP 800-63B 5.1.1.2): none of these passwords is common, but each is the
    first guess at this account's; another account may choose it."""
    with pytest.raises(InvalidArgument) as error:
        registration_of("zorblequint.vantaxel@example.com", password, "Quessimordant")
    assert violations(error) == [("password", PASSWORD_TOO_COMMON)]
    assert registration_of("ann@example.com", password, "Ann").password == password


@pytest.mark.parametrize("password", [PASSWORD, "correct horse battery staple", "Crème brûlée 2024", "Zq9-secret-PW"])
def test_a_password_hard_to_guess_is_accepted(password: str) -> None:
    assert registration_of("ann@example.com", password, "Ann").password == unicodedata.normalize("NFKC", password)


def test_the_guessability_of_a_password_is_estimated_on_its_first_characters_only() -> None:
    """zxcvbn's estimate grows faster than the password: 128 characters of l33t symbols held the event loop for
    seconds. A password hard to guess in its first characters is no easier whole."""
    passphrase = ("correct horse battery staple " * 5)[:128]
    assert not too_guessable(passphrase, [])
    assert too_guessable("a" * ESTIMATED_CHARACTERS + passphrase[ESTIMATED_CHARACTERS:], [])


def test_login_normalizes_the_email_as_registration_does() -> None:
    credentials = validate_login("  ANN@example.com\t", "whatever")
    assert credentials.email == "ann@example.com"
    assert credentials.password == "whatever"


def test_only_ascii_letters_are_lower_cased_so_a_look_alike_address_is_no_accounts() -> None:
    # Unicode's lower case maps U+212A KELVIN SIGN to "k" and U+0130 to "i" + a combining dot: the look-alike
    # would sign in to (or be refused as taken by) the account of the ASCII address it imitates.
    assert validate_login("\u212aATE@example.com", "whatever").email == "\u212aate@example.com"
    assert validate_login("\u0130A@example.com", "whatever").email == "\u0130a@example.com"


CREME_BRULEE = "Crème brûlée 2024"


def test_registration_and_login_normalize_the_password_to_nfkc_whatever_form_the_device_sent() -> None:
    nfc = unicodedata.normalize("NFC", CREME_BRULEE)
    decomposed = unicodedata.normalize("NFD", CREME_BRULEE)
    full_width = "".join(chr(0xFEE0 + ord(c)) for c in "password")  # U+FF50...
    assert registration_of_any_password("a@b.io", decomposed, "Ann").password == nfc
    assert registration_of_any_password("a@b.io", full_width, "Ann").password == "password"
    credentials = validate_login("a@b.io", decomposed)
    assert (credentials.password, credentials.password_as_sent) == (nfc, decomposed)
    credentials = validate_login("a@b.io", nfc)
    assert (credentials.password, credentials.password_as_sent) == (nfc, None), "nothing else to try"


def test_password_length_limits_apply_to_the_normalized_password() -> None:
    # U+FB01, the "fi" ligature: one character typed, two once normalized.
    assert registration_of_any_password("a@b.io", "\ufb01" * 4, "Ann").password == "fi" * 4
    with pytest.raises(InvalidArgument) as error:
        registration_of_any_password("a@b.io", "\ufb01" * 65, "Ann")
    assert violations(error) == [("password", "TOO_LONG")]


@pytest.mark.parametrize(
    "validate",
    [lambda p: registration_of_any_password("a@b.io", p, "Ann"), lambda p: validate_login("a@b.io", p)],
)
def test_a_password_longer_than_any_could_be_is_refused_before_it_is_normalized(
    validate: Callable[[str], object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """NFKC makes U+FDFA 18 characters: a request of a few MiB of it, normalized, would hold the event
    loop for seconds and take hundreds of MiB before any limit applied."""
    normalized: list[int] = []
    real = unicodedata.normalize

    def counting(form: str, text: str) -> str:
        normalized.append(len(text))
        return real(form, text)  # type: ignore[arg-type]

    monkeypatch.setattr(unicodedata, "normalize", counting)
    with pytest.raises(InvalidArgument) as error:
        validate("\ufdfa" * 1_000_000)
    assert violations(error) == [("password", "TOO_LONG")]
    assert all(length <= 1024 for length in normalized)
    # A password of the longest length, decomposed as a device may send it, still gets through.
    decomposed = real("NFD", "é" * 128)
    assert len(decomposed) == 256
    assert validate(decomposed) is not None


def test_login_checks_only_emptiness_so_a_malformed_email_is_just_unknown() -> None:
    assert validate_login("not an address", "x").email == "not an address"
    with pytest.raises(InvalidArgument) as error:
        validate_login("  ", "")
    assert violations(error) == [("email", "REQUIRED"), ("password", "REQUIRED")]


def test_login_names_an_empty_email_beside_a_password_too_long() -> None:
    """One violation per invalid field (common/v1 conventions): the password's length, checked before
    normalizing, does not hide the missing e-mail."""
    with pytest.raises(InvalidArgument) as error:
        validate_login("", "p" * 1025)
    assert violations(error) == [("email", "REQUIRED"), ("password", "TOO_LONG")]


def test_a_password_too_long_is_refused_with_the_bound_each_rpc_states() -> None:
    """users.proto: Login refuses a password of more than 1,024 characters as sent (a longer one is checked and
    fails as a wrong password), Register one of more than 128: each violation names its own RPC's number."""
    with pytest.raises(InvalidArgument) as error:
        validate_login("a@b.io", "p" * 1025)
    assert [v.description for v in error.value.violations] == ["must be at most 1,024 characters as sent"]
    with pytest.raises(InvalidArgument) as error:
        registration_of("a@b.io", "p" * 1025, "Ann")
    assert [v.description for v in error.value.violations] == ["must be at most 128 characters"]


@pytest.mark.parametrize(("user_id", "reason"), [("", "REQUIRED"), ("u" * 65, "TOO_LONG")])
def test_user_id_must_be_present_and_at_most_64_characters(user_id: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        validate_user_id(user_id)
    assert violations(error) == [("user_id", reason)]
    assert validate_user_id("u" * 64) == "u" * 64


# --- token claims ----------------------------------------------------------------------------------


def test_access_claims_carry_the_contract_claims_with_whole_second_times() -> None:
    claims = build_access_claims("usr_1", T0 + timedelta(microseconds=999_999), HOUR, "jti-1")
    issued = int(T0.timestamp())
    assert claims.as_dict() == {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "usr_1",
        "iat": issued,
        "nbf": issued,
        "exp": issued + 3600,
        "jti": "jti-1",
    }
    assert claims.expires_at == T0 + HOUR
    assert (ISSUER, AUDIENCE) == ("shopmesh-users", "shopmesh")


# --- the signing-key schedule ----------------------------------------------------------------------


def material(n: int) -> KeyMaterial:
    return KeyMaterial(kid=f"k{n}", public_jwk={"kid": f"k{n}"}, private_key_pem=f"pem{n}")


def rotate(
    keys: list[SigningKey], n: int, now: datetime, ahead: timedelta = FIVE_MINUTES, lifetime: timedelta = HOUR
) -> list[SigningKey]:
    """`keys` after a rotation at `now`, under a token lifetime of `lifetime`, that adds key k<n>, as the
    store would apply it."""
    rotation = plan_rotation(keys, material(n), now, ahead, lifetime)
    retired_at = rotation.new_key.activates_at
    kept = [
        replace(k, retired_at=retired_at) if rotation.replaced is not None and k.kid == rotation.replaced.kid else k
        for k in keys
        if k.kid not in rotation.expired
    ]
    return [*kept, rotation.new_key]


def kids(keys: list[SigningKey]) -> list[str]:
    return [k.kid for k in keys]


def signer(keys: list[SigningKey], at: datetime) -> str | None:
    key = signing_key(keys, at)
    return key.kid if key is not None else None


def test_first_key_signs_at_once_when_planned_without_publish_ahead() -> None:
    keys = rotate([], 1, T0, ahead=timedelta(0))
    assert keys[0].generation == 1
    assert signer(keys, T0) == "k1"
    assert signer([], T0) is None


def test_a_new_key_is_published_at_once_and_signs_only_after_the_publish_ahead_delay() -> None:
    keys = rotate(rotate([], 1, T0, ahead=timedelta(0)), 2, T0 + HOUR)
    assert kids(published_keys(keys, T0 + HOUR)) == ["k2", "k1"]
    assert signer(keys, T0 + HOUR + FIVE_MINUTES - timedelta(microseconds=1)) == "k1"
    assert signer(keys, T0 + HOUR + FIVE_MINUTES) == "k2"


def test_the_replaced_key_retires_when_its_successor_activates_and_stays_published_one_token_lifetime() -> None:
    keys = rotate(rotate([], 1, T0, ahead=timedelta(0)), 2, T0 + HOUR)
    old = next(k for k in keys if k.kid == "k1")
    retired_at = T0 + HOUR + FIVE_MINUTES
    assert old.retired_at == retired_at
    assert kids(published_keys(keys, retired_at + HOUR - timedelta(microseconds=1))) == ["k2", "k1"]
    assert kids(published_keys(keys, retired_at + HOUR)) == ["k2"]


def test_a_rotation_deletes_keys_whose_tokens_have_all_expired() -> None:
    keys = rotate(rotate([], 1, T0, ahead=timedelta(0)), 2, T0 + HOUR)
    still_published = rotate(keys, 3, T0 + HOUR + FIVE_MINUTES + HOUR - timedelta(seconds=1))
    assert kids(still_published) == ["k1", "k2", "k3"]
    after_expiry = rotate(keys, 3, T0 + 3 * HOUR)
    assert kids(after_expiry) == ["k2", "k3"]
    assert [k.generation for k in after_expiry] == [2, 3]


def test_a_retired_key_stays_published_for_the_lifetime_it_signed_with_not_the_one_in_force_later() -> None:
    keys = rotate([], 1, T0, ahead=timedelta(0), lifetime=4 * HOUR)
    keys = rotate(keys, 2, T0 + HOUR, lifetime=HOUR)
    retired_at = T0 + HOUR + FIVE_MINUTES
    assert kids(published_keys(keys, retired_at + 4 * HOUR - timedelta(microseconds=1))) == ["k2", "k1"]
    assert kids(rotate(keys, 3, retired_at + 4 * HOUR - timedelta(seconds=1), lifetime=HOUR)) == ["k1", "k2", "k3"]
    assert kids(published_keys(keys, retired_at + 4 * HOUR)) == ["k2"]


def test_a_key_signing_under_a_longer_lifetime_than_it_recorded_needs_its_record_raised_first() -> None:
    [key] = rotate([], 1, T0, ahead=timedelta(0), lifetime=HOUR)
    assert key.covers(HOUR)
    assert key.covers(FIVE_MINUTES)
    assert not key.covers(HOUR + timedelta(seconds=1))
    # Without a record (a key from before lifetimes were recorded) it counts as the longest lifetime.
    unrecorded = replace(key, token_lifetime=None, retired_at=T0)
    assert unrecorded.covers(LONGEST_TOKEN_LIFETIME)
    assert unrecorded.published_until() == T0 + LONGEST_TOKEN_LIFETIME


def test_rotating_again_before_the_pending_key_activates_hands_over_in_generation_order() -> None:
    keys = rotate(rotate(rotate([], 1, T0, ahead=timedelta(0)), 2, T0 + HOUR), 3, T0 + HOUR + timedelta(minutes=1))
    assert signer(keys, T0 + HOUR + timedelta(minutes=5)) == "k2"
    assert signer(keys, T0 + HOUR + timedelta(minutes=6)) == "k3"
    assert kids(published_keys(keys, T0 + HOUR + timedelta(minutes=6))) == ["k3", "k2", "k1"]


def test_a_revocation_deletes_every_key_and_its_successor_signs_at_once() -> None:
    keys = rotate(rotate([], 1, T0, ahead=timedelta(0)), 2, T0 + HOUR)  # k1 signing, k2 pending
    revocation = plan_revocation(keys, material(3), T0 + HOUR + timedelta(minutes=1), HOUR)
    assert revocation.expired == ("k1", "k2")
    assert revocation.replaced is None
    new = revocation.new_key
    assert (new.kid, new.generation) == ("k3", 3)
    assert signer([new], T0 + HOUR + timedelta(minutes=1)) == "k3"
    assert kids(published_keys([new], T0 + HOUR + timedelta(minutes=1))) == ["k3"]


def test_rotation_is_due_when_the_newest_key_is_as_old_as_the_interval() -> None:
    week = timedelta(days=7)
    keys = rotate([], 1, T0, ahead=timedelta(0))
    assert not rotation_due(keys, T0 + week - timedelta(seconds=1), week)
    assert rotation_due(keys, T0 + week, week)
    assert rotation_due([], T0, week)
    # The newest key counts, even before it signs: one rotation per interval, not one per check.
    assert not rotation_due(rotate(keys, 2, T0 + week), T0 + week + timedelta(minutes=1), week)


def test_a_zero_rotation_interval_turns_periodic_rotation_off() -> None:
    keys = rotate([], 1, T0, ahead=timedelta(0))
    assert not rotation_due(keys, T0 + timedelta(days=3650), timedelta(0))
    assert not rotation_due([], T0, timedelta(0))


# --- beside the domain: kid thumbprints, argon2, settings ----------------------------------------


def test_kid_is_the_rfc_7638_thumbprint_of_the_public_key() -> None:
    # RFC 8037, appendix A.3: the thumbprint of the Ed25519 key of appendix A.2.
    x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    assert jwk_thumbprint("OKP", "Ed25519", x) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def cheap_passwords(concurrency: int = 2, queue: int = 8) -> Passwords:
    return Passwords(time_cost=1, memory_kib=8192, parallelism=1, concurrency=concurrency, queue=queue)


async def test_passwords_verify_only_the_right_password_and_say_no_without_a_hash() -> None:
    passwords = cheap_passwords()
    stored = await passwords.hash("correct horse")
    assert stored.startswith("$argon2id$v=19$m=8192,t=1,p=1$")
    assert "correct horse" not in stored
    assert await passwords.verify(stored, "correct horse")
    assert not await passwords.verify(stored, "correct horsE")
    assert not await passwords.verify(None, "correct horse")
    assert not await passwords.verify("not a hash", "correct horse")


async def test_passwords_ask_for_a_rehash_only_when_the_parameters_changed() -> None:
    cheap = cheap_passwords()
    stored = await cheap.hash("correct horse")
    assert not cheap.needs_rehash(stored)
    assert Passwords(time_cost=2, memory_kib=8192, parallelism=1, concurrency=1, queue=0).needs_rehash(stored)


class CountingHasher:
    """In place of argon2 (whose memory is the point): counts the hashes running at once."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.release = threading.Event()
        self._lock = threading.Lock()

    def hash(self, password: str) -> str:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.release.wait(10)
        with self._lock:
            self.running -= 1
        return "hashed"


async def test_only_so_many_hashes_run_at_once_a_few_more_wait_and_the_rest_are_told_to_retry() -> None:
    passwords = cheap_passwords(concurrency=2, queue=3)
    counting = CountingHasher()
    passwords._hasher = counting  # type: ignore[assignment]
    calls = [asyncio.create_task(passwords.hash(f"pw{i}")) for i in range(5)]
    await eventually(lambda: counting.running == 2, "two hashes running in their threads")
    assert counting.most == 2, "two hash at once, three wait for a turn"
    with pytest.raises(ResourceExhausted) as caught:
        await passwords.hash("one too many")
    assert (caught.value.reason, caught.value.retry_after_seconds) == (BUSY_REASON, 1.0)
    counting.release.set()
    assert await asyncio.gather(*calls) == ["hashed"] * 5
    assert counting.most == 2
    assert await passwords.hash("again") == "hashed", "the turns were given back"


async def test_a_hash_whose_caller_gave_up_keeps_its_turn_and_its_queue_place_until_its_thread_is_done() -> None:
    """A thread cannot be stopped: were the turn given back when the caller is cancelled (its deadline
    passed), the next caller's hash would run beside the abandoned one, each holding its memory cost."""
    passwords = cheap_passwords(concurrency=1, queue=1)
    counting = CountingHasher()
    passwords._hasher = counting  # type: ignore[assignment]
    abandoned = asyncio.create_task(passwords.hash("gave up"))
    await eventually(lambda: counting.running == 1, "the hash running in its thread")
    abandoned.cancel()
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    waiting = asyncio.create_task(passwords.hash("next"))
    # One pass of the event loop: the new task runs up to its wait for a turn (admitted, queued).
    await asyncio.sleep(0)
    assert (counting.running, counting.most) == (1, 1), "the next hash waits for the abandoned one's thread"
    with pytest.raises(ResourceExhausted):
        await passwords.hash("one running and one waiting: the queue is full")
    counting.release.set()
    assert await waiting == "hashed"
    assert counting.most == 1
    assert await passwords.hash("again") == "hashed", "the turns were given back"
    await passwords.close()


class SlowHasher:
    """In place of argon2: each hash takes `seconds` of a clock the test owns (the one Passwords measures hashes
    by); once `hold` is called, hashes are counted as they start and wait for `release` before finishing."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.now = 0.0
        self.started = 0
        self.release = threading.Event()
        self.release.set()  # the hash Passwords makes at start finishes at once

    def hold(self) -> None:
        self.started = 0
        self.release.clear()

    def clock(self) -> float:
        return self.now

    def hash(self, password: str) -> str:
        self.started += 1
        self.release.wait(10)
        self.now += self.seconds
        return "hashed"


def slow_passwords(monkeypatch: pytest.MonkeyPatch, hasher: SlowHasher, concurrency: int, queue: int) -> Passwords:
    monkeypatch.setattr(passwords_module, "PasswordHasher", lambda **_costs: hasher)
    return Passwords(
        time_cost=1, memory_kib=8192, parallelism=1, concurrency=concurrency, queue=queue, clock=hasher.clock
    )


async def within(seconds: float | None, check: Callable[[], Awaitable[str]]) -> str:
    """`check` as in a call whose deadline is `seconds` away (None: a call without one)."""
    token = call_context.enter(seconds, None)
    try:
        return await check()
    finally:
        call_context.leave(token)


async def test_a_password_check_that_could_not_finish_before_its_deadline_is_refused_at_once_not_queued(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hashes take 100 s here, two at a time: a caller with 250 s left and four ahead of it would finish after
    300 s at worst, so it is told to retry (as when the queue is full) instead of waiting out its deadline and
    ending DEADLINE_EXCEEDED; with two or three ahead (200 s) it waits, and a call without a deadline is
    admitted while the queue has room, as before."""
    hasher = SlowHasher(seconds=100)
    passwords = slow_passwords(monkeypatch, hasher, concurrency=2, queue=8)
    hasher.hold()
    calls = [asyncio.create_task(within(250, functools.partial(passwords.hash, f"pw{i}"))) for i in range(4)]
    await eventually(lambda: hasher.started == 2, "two hashes running, two waiting for a turn")
    with pytest.raises(ResourceExhausted) as caught:
        await within(250, functools.partial(passwords.hash, "four ahead"))
    assert (caught.value.reason, caught.value.retry_after_seconds) == (BUSY_REASON, 1.0)
    without_deadline = asyncio.create_task(within(None, functools.partial(passwords.hash, "no deadline")))
    hasher.release.set()
    assert await asyncio.gather(*calls, without_deadline) == ["hashed"] * 5
    assert await within(250, functools.partial(passwords.hash, "again")) == "hashed"


async def test_a_password_check_whose_deadline_passed_while_it_waited_is_not_hashed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The call's cancellation comes through grpcio's poller, late on a busy node: a check that gets its turn
    after its deadline, not yet cancelled, is refused, not hashed for no one while it holds the turn."""
    hasher = SlowHasher(seconds=0.001)
    passwords = slow_passwords(monkeypatch, hasher, concurrency=1, queue=8)
    hasher.hold()
    running = asyncio.create_task(passwords.hash("running"))
    await eventually(lambda: hasher.started == 1, "the first hash running")
    late = asyncio.create_task(within(0.2, functools.partial(passwords.hash, "late")))
    # One pass of the event loop: the task enters its call, deadline 0.2 s from then, and waits for a turn.
    await asyncio.sleep(0)
    passes_at = time.monotonic() + 0.2
    await eventually(lambda: time.monotonic() > passes_at, "the waiting check's deadline passed")
    assert not late.done(), "admitted, waiting for a turn"
    hasher.release.set()
    with pytest.raises(ResourceExhausted) as caught:
        await late
    assert caught.value.reason == BUSY_REASON
    assert await running == "hashed"
    assert hasher.started == 1, "the late check was not hashed"
    assert await passwords.hash("again") == "hashed", "its turn was given back"


async def test_a_register_the_hashing_queue_has_no_room_for_is_refused_before_its_password_is_estimated(
    tmp_path: Path,
) -> None:
    """The guessability estimate costs up to ~0.1 s of CPU: a Register that is refused PASSWORD_HASHING_BUSY is
    refused before it, as cheaply as a Login, not after it."""
    passwords = cheap_passwords(concurrency=1, queue=0)
    counting = CountingHasher()
    passwords._hasher = counting  # type: ignore[assignment]
    estimated: list[str] = []

    def guessable(password: str, words: Sequence[str]) -> bool:
        estimated.append(password)
        return False

    database = Database(f"sqlite:///{tmp_path / 'users.db'}")
    strength = PasswordStrength(guessable)
    application = UsersApplication(database, passwords, key_policy(UsersSettings()), password_strength=strength)
    holding = asyncio.create_task(passwords.hash("holds the only turn"))
    try:
        await eventually(lambda: counting.running == 1, "the hash running in its thread")
        with pytest.raises(ResourceExhausted) as caught:
            await application.register("ann@example.com", "a fine passphrase", "Ann")
        assert caught.value.reason == BUSY_REASON
        assert estimated == []
    finally:
        counting.release.set()
        await holding
        await database.dispose()


@contextlib.asynccontextmanager
async def registers_at_a_held_estimate(
    tmp_path: Path, passwords: Passwords, count: int
) -> AsyncIterator[list[asyncio.Task[Any]]]:
    """`count` Registers started at once on `passwords`, once the first one's estimate holds the estimating process
    (until the test leaves: however late the test looks, none has been estimated); cancelled, and the process ended,
    on leaving."""
    database = Database(f"sqlite:///{tmp_path / 'users.db'}")
    with process_gate() as gate:
        strength = PasswordStrength(gate.work())
        application = UsersApplication(database, passwords, key_policy(UsersSettings()), password_strength=strength)
        registers = [
            asyncio.create_task(application.register(f"user{index}@example.com", "a fine passphrase", "Ann"))
            for index in range(count)
        ]
        try:
            await gate.reached()
            yield registers
        finally:
            for register in registers:
                register.cancel()
            await asyncio.gather(*registers, return_exceptions=True)
            # Before closing: the close waits for the estimate the process runs.
            gate.open()
            await strength.close()
            await passwords.close()
            await database.dispose()


async def test_registers_beyond_the_estimate_bound_are_refused_at_once_while_one_is_estimated(tmp_path: Path) -> None:
    """Guessability estimates run one at a time: of two more Registers than `ESTIMATING_AT_ONCE` while an estimate
    runs, the two beyond are answered PASSWORD_HASHING_BUSY at once, not queued for the estimate to wait out their
    deadlines, though the hashing queue has room for them all."""
    bound = passwords_module.ESTIMATING_AT_ONCE
    passwords = cheap_passwords(concurrency=1, queue=bound + 2)
    async with registers_at_a_held_estimate(tmp_path, passwords, bound + 2) as registers:
        done = [register for register in registers if register.done()]
        assert len(done) == 2
        for refused in done:
            error = refused.exception()
            assert isinstance(error, ResourceExhausted)
            assert (error.reason, error.retry_after_seconds) == (BUSY_REASON, passwords_module.BUSY_RETRY_AFTER_SECONDS)


async def test_logins_are_admitted_while_more_registers_wait_for_their_estimate_than_the_hashing_queue_holds(
    tmp_path: Path,
) -> None:
    """A Register takes its hashing place for its hash, not while it waits for its estimate: with room for two
    hashes, three Registers held at the estimate leave both places to logins, whose check is admitted (not
    PASSWORD_HASHING_BUSY while no hash runs)."""
    passwords = cheap_passwords(concurrency=1, queue=1)
    async with registers_at_a_held_estimate(tmp_path, passwords, 3) as registers:
        assert await passwords.verify(None, "a login for an unknown e-mail") is False
        assert await passwords.verify(None, "and another") is False
        assert not any(register.done() for register in registers), "all three wait for their estimate"


async def test_a_caller_leaving_its_work_before_the_hash_gives_its_place_back_and_took_none_in_the_queue() -> None:
    """A Register whose estimate ends (too guessable, or failed) leaves its estimating place to the next, and held
    no hashing place while it estimated."""
    passwords = cheap_passwords(concurrency=1, queue=0)
    for _ in range(passwords_module.ESTIMATING_AT_ONCE + 1):
        with pytest.raises(RuntimeError), passwords.before_hash():
            raise RuntimeError("the estimate failed")
    with passwords.before_hash():
        assert (await passwords.hash("the only hashing place is free")).startswith("$argon2id$")


@pytest.fixture
def started_pools(monkeypatch: pytest.MonkeyPatch) -> list[ProcessPoolExecutor]:
    """Every process pool PasswordStrength starts, each a real one."""
    pools: list[ProcessPoolExecutor] = []

    class Recorded(ProcessPoolExecutor):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            pools.append(self)

    monkeypatch.setattr(password_strength, "ProcessPoolExecutor", Recorded)
    return pools


async def test_estimates_in_flight_when_the_estimating_process_dies_are_answered_by_one_replacement(
    started_pools: list[ProcessPoolExecutor],
) -> None:
    """Each estimate in flight on a process that died fails BrokenProcessPool: the first to come back replaces the
    process, the others retry on that replacement instead of shutting it down for one more of their own. None
    failed: none is counted."""
    failures: list[EstimateFailure] = []
    strength = PasswordStrength(on_failure=failures.append)
    try:
        assert await strength.too_guessable("password1", [])
        [worker] = started_pools[0]._processes.values()
        assert worker.pid is not None
        # Stopped, it takes none of the estimates asked next: all three are in flight when it is killed.
        os.kill(worker.pid, signal.SIGSTOP)
        passwords = ("12345678", "Tr0ub4dor&3xq!zV9", "password1")
        estimates = [asyncio.create_task(strength.too_guessable(password, [])) for password in passwords]
        await asyncio.sleep(0)
        os.kill(worker.pid, signal.SIGKILL)
        assert await asyncio.wait_for(asyncio.gather(*estimates), 60) == [True, False, True]
        assert len(started_pools) == 2
        assert failures == []
    finally:
        await strength.close()


async def test_an_estimate_asked_after_closing_is_unavailable_and_starts_no_process(
    started_pools: list[ProcessPoolExecutor],
) -> None:
    failures: list[EstimateFailure] = []
    strength = PasswordStrength(on_failure=failures.append)
    assert await strength.too_guessable("12345678", [])
    await strength.close()
    with pytest.raises(Unavailable) as caught:
        await strength.too_guessable("12345678", [])
    assert (caught.value.reason, caught.value.retry_after_seconds) == (STOPPED_REASON, STOPPED_RETRY_AFTER_SECONDS)
    assert len(started_pools) == 1
    assert failures == ["stopped"]


async def test_closing_the_passwords_waits_for_the_hashes_still_running_and_refuses_new_ones() -> None:
    passwords = cheap_passwords(concurrency=1)
    counting = CountingHasher()
    passwords._hasher = counting  # type: ignore[assignment]
    abandoned = asyncio.create_task(passwords.hash("gave up"))
    await eventually(lambda: counting.running == 1, "the hash running in its thread")
    abandoned.cancel()
    closing = asyncio.create_task(passwords.close())
    await asyncio.sleep(0.1)
    assert not closing.done(), "a hash still runs"
    counting.release.set()
    await asyncio.wait_for(closing, 5)
    assert counting.running == 0
    with pytest.raises(RuntimeError):
        await passwords.hash("after the service stopped")


def test_settings_defaults_follow_the_topology_and_the_contract() -> None:
    settings = UsersSettings()
    assert (settings.service_name, settings.grpc_port, settings.metrics_port) == ("users", 50051, 9461)
    assert settings.token_lifetime_seconds == 3600
    assert settings.key_publish_ahead_seconds == 600
    assert settings.key_rotation_interval_seconds == 7 * 24 * 3600


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"password_hash_memory_kib": 16, "password_hash_parallelism": 4}, "PASSWORD_HASH_MEMORY_KIB"),
        ({"key_rotation_interval_seconds": 300, "key_publish_ahead_seconds": 300}, "KEY_ROTATION_INTERVAL_SECONDS"),
    ],
)
def test_inconsistent_settings_stop_startup_naming_the_variable(overrides: dict[str, int], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(UsersSettings, **overrides)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        # argon2 took these and failed: an OverflowError traceback at start, a HashingError on every hash.
        ("PASSWORD_HASH_MEMORY_KIB", "99999999999"),
        ("PASSWORD_HASH_PARALLELISM", str(2**24)),
        # Past what a pod could give, or than a Login could wait for.
        ("PASSWORD_HASH_MEMORY_KIB", str(4 * 1024 * 1024 + 1)),
        ("PASSWORD_HASH_TIME_COST", "65"),
    ],
)
def test_argon2_costs_argon2_or_a_pod_cannot_take_stop_startup_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=rf"^invalid configuration: {variable}='{value}': .*less than or equal"):
        load_settings(UsersSettings)


def test_the_largest_argon2_parallelism_the_settings_take_can_hash() -> None:
    PasswordHasher(
        time_cost=1, memory_cost=8 * PASSWORD_HASH_MAX_PARALLELISM, parallelism=PASSWORD_HASH_MAX_PARALLELISM
    ).hash("a password")


@pytest.mark.parametrize("variable", ["TOKEN_LIFETIME_SECONDS", "KEY_ROTATION_INTERVAL_SECONDS"])
def test_a_duration_no_date_can_hold_stops_startup_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    # docs/chassis.md: services bound their durations as the chassis does, so a typo stops startup with one
    # line (exit 2). Unbounded, 10^12 s (~31,700 years) passes, and every Login then fails INTERNAL (its "exp"
    # is past year 9999); 10^14 s crashes the wiring with a traceback (timedelta overflow).
    monkeypatch.setenv(variable, str(10**12))
    with pytest.raises(ConfigError, match=rf"^invalid configuration: {variable}="):
        load_settings(UsersSettings)


# --- failed logins per e-mail ---------------------------------------------------------------------
# The arithmetic of each e-mail's bucket; storing it, shared by replicas, in test_users_login_throttle_replicas.py.


def throttle(burst: int = 3) -> LoginThrottle:
    return LoginThrottle(burst=burst, refill=timedelta(seconds=30))


class StoredBuckets:
    """What the store keeps, as the application applies each `take` and `give_back` to it."""

    def __init__(self, rule: LoginThrottle) -> None:
        self.rule = rule
        self.rows: dict[str, Attempts] = {}
        self.now = T0

    def take(self, email: str = "ann@example.com") -> float:
        taken = self.rule.take(self.rows.get(email_key(email)), self.now)
        if taken.stored is not None:
            self.rows[email_key(email)] = taken.stored
        return taken.retry_after_seconds

    def give_back(self, email: str = "ann@example.com") -> None:
        self.rows[email_key(email)] = self.rule.give_back(self.rows[email_key(email)], self.now)


def test_no_stored_bucket_is_a_full_one_and_a_refusal_stores_nothing() -> None:
    rule = throttle(burst=2)
    first = rule.take(None, T0)
    assert first == Taken(Attempts(1.0, T0), 0.0)
    later = T0 + timedelta(seconds=15)
    second = rule.take(first.stored, later)
    assert second == Taken(Attempts(0.5, later), 0.0)
    refused = rule.take(second.stored, later)
    # Half an attempt left: half a refill to wait.
    assert refused == Taken(None, 15.0)


def test_attempts_refill_one_every_refill_up_to_the_burst_and_no_further() -> None:
    buckets = StoredBuckets(throttle(burst=3))
    assert [buckets.take() for _ in range(4)] == [0.0, 0.0, 0.0, pytest.approx(30)]
    buckets.now += timedelta(seconds=30)
    assert [buckets.take() == 0.0 for _ in range(2)] == [True, False]
    buckets.now += timedelta(days=1)
    assert [buckets.take() == 0.0 for _ in range(4)] == [True, True, True, False]


def test_an_emails_attempts_are_its_own() -> None:
    buckets = StoredBuckets(throttle(burst=1))
    assert buckets.take("ann@example.com") == 0.0
    assert buckets.take("ann@example.com") > 0
    assert buckets.take("bob@example.com") == 0.0


def test_attempts_admitted_at_once_take_the_burst_and_no_more_however_many_are_still_being_checked() -> None:
    """Parallel guesses: each is admitted before any has failed, so the attempt is used up on admission,
    not when its password turns out wrong. Before, 34 (the hashing queue) passed at every refill."""
    buckets = StoredBuckets(throttle(burst=10))
    admitted = [buckets.take() == 0.0 for _ in range(40)]
    assert admitted.count(True) == 10


def test_an_attempt_given_back_may_be_taken_again_and_never_beyond_the_burst() -> None:
    buckets = StoredBuckets(throttle(burst=2))
    assert buckets.take() == buckets.take() == 0.0
    buckets.give_back()
    assert buckets.take() == 0.0
    assert buckets.take() > 0
    buckets.give_back()
    buckets.give_back()
    buckets.give_back()
    assert [buckets.take() == 0.0 for _ in range(3)] == [True, True, False]


def test_a_replica_whose_clock_is_behind_the_stored_time_refills_nothing_and_keeps_that_time() -> None:
    """Replicas share the buckets but not a clock: one a few seconds behind (within the assumed skew) must
    neither take away attempts nor move the time back, which would credit the next replica with the same
    seconds twice. It says to wait until the stored time and the refill after it."""
    rule = throttle(burst=3)
    stored = Attempts(0.5, T0)
    behind = T0 - MAX_CLOCK_SKEW
    assert rule.take(stored, behind) == Taken(None, pytest.approx(MAX_CLOCK_SKEW.total_seconds() + 15))
    assert rule.give_back(stored, behind) == Attempts(1.5, T0)


def test_a_stored_time_further_ahead_than_the_assumed_skew_counts_as_that_far_ahead_and_is_stored_so() -> None:
    """A replica whose clock jumped an hour ahead stored its bucket an hour ahead: the others refilled nothing
    for the hour, saying "retry after 30 s" each time. The stored time is capped at the assumed skew ahead, and
    the cap is stored with the refusal (else each refusal would cap it anew from its own `now`)."""
    rule = throttle(burst=3)
    stored = Attempts(0.0, T0 + timedelta(hours=1))
    skew = MAX_CLOCK_SKEW.total_seconds()
    refused = rule.take(stored, T0)
    assert refused == Taken(Attempts(0.0, T0 + MAX_CLOCK_SKEW), pytest.approx(skew + 30))
    assert refused.stored is not None
    assert rule.take(refused.stored, T0 + timedelta(seconds=skew + 29)).retry_after_seconds == pytest.approx(1)
    taken = rule.take(refused.stored, T0 + timedelta(seconds=skew + 30))
    assert taken == Taken(Attempts(0.0, T0 + timedelta(seconds=skew + 30)), 0.0)


def test_a_bucket_unchanged_since_full_since_is_as_good_as_none() -> None:
    rule = throttle(burst=3)
    now = T0 + timedelta(hours=1)
    assert rule.full_since(now) == now - timedelta(seconds=90)
    empty_then = Attempts(0.0, rule.full_since(now))
    assert rule.take(empty_then, now).stored == rule.take(None, now).stored
    just_after = Attempts(0.0, rule.full_since(now) + timedelta(seconds=1))
    assert rule.take(just_after, now).stored != rule.take(None, now).stored


def test_full_since_reaches_back_no_further_than_datetime_does() -> None:
    rule = LoginThrottle(burst=10_000_000, refill=timedelta(days=1))
    assert rule.full_since(T0) == datetime.min.replace(tzinfo=UTC)


def test_an_emails_key_is_a_digest_of_a_bounded_length() -> None:
    assert email_key("ann@example.com") == email_key("ann@example.com") != email_key("bob@example.com")
    assert len(email_key("a" * 1_000_000)) == 64
    # An unpaired surrogate (a malformed client's UTF-16) is still a key, not an error.
    assert len(email_key("ann\ud800@example.com")) == 64


@pytest.mark.parametrize(("burst", "refill"), [(0, timedelta(seconds=30)), (3, timedelta(0))])
def test_a_throttle_without_attempts_or_refill_is_refused(burst: int, refill: timedelta) -> None:
    with pytest.raises(ValueError, match="burst"):
        LoginThrottle(burst=burst, refill=refill)
