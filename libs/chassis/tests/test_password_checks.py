"""The rule users checks a Login's password by and the gateway charges its password buckets by."""

from __future__ import annotations

import unicodedata
from types import SimpleNamespace

import pytest

from shopmesh_chassis import password_checks
from shopmesh_chassis.password_checks import (
    MAX_PASSWORD_LENGTH_AS_SENT,
    checked_as_sent,
    login_password_hashes,
)


@pytest.mark.parametrize(
    ("password", "hashes"),
    [
        ("plain wrong guess", 1),
        ("caf\u00e9 au lait", 1),  # composed: NFKC keeps it
        ("\uff50assword-guess", 2),  # a full-width p
        ("cafe\u0301 au lait", 2),  # decomposed, as macOS pastes it
        ("\ufb01ne password", 2),  # a ligature
    ],
    ids=["ascii", "composed", "full-width", "decomposed", "ligature"],
)
def test_a_login_costs_two_hashes_when_nfkc_changes_its_password(password: str, hashes: int) -> None:
    assert login_password_hashes(password) == hashes
    assert checked_as_sent(password) == (unicodedata.normalize("NFKC", password) != password)


def test_a_password_too_long_to_check_is_not_normalized_and_costs_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused before any hashing; and megabytes normalized would hold the event loop for seconds."""
    looked_at: list[str] = []
    reader = SimpleNamespace(is_normalized=lambda form, text: looked_at.append(text) or True)
    monkeypatch.setattr(password_checks, "unicodedata", reader)
    assert login_password_hashes("\uff50" * (MAX_PASSWORD_LENGTH_AS_SENT + 1)) == 1
    assert looked_at == []
