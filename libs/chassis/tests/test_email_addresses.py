"""The e-mail address rule users, orders and notifications share."""

from __future__ import annotations

import pytest

from shopmesh_chassis.email_addresses import canonical_email, is_email_address


@pytest.mark.parametrize(
    "address",
    ["ada@example.com", "Ada.Lovelace+shop@Mail.Example.CO.UK", "o'brien@example.ie", "x@a-b.example.org"],
)
def test_an_ordinary_address_of_either_case_is_taken(address: str) -> None:
    assert is_email_address(address)


@pytest.mark.parametrize(
    "address",
    [
        "root,ada@example.com",  # an SMTP library reads two recipients
        "root;ada@example.com",
        "Ada <ada@example.com>",
        "ada@example.com\r\nBcc: eve@example.com",
        '"ada"@example.com',
        "ada@[127.0.0.1]",
        "ada@localhost",
        "ada@example.c0m",
        "ada..l@example.com",
        " ada@example.com",
        "\u00e4da@example.com",  # non-ASCII: SMTPUTF8, which relays need not take
        "\u0430da@example.com",  # a Cyrillic a: looks like ada@example.com
        "a" * 65 + "@example.com",
        "a@" + "b" * 60 + "." + ("c" * 60 + ".") * 4 + "com",  # over 254 in all
    ],
)
def test_anything_else_is_refused(address: str) -> None:
    assert not is_email_address(address)


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [
        ("  Ann.Lee+Shop@Example.COM\t", "ann.lee+shop@example.com"),
        # Unicode's lower case would make these the ASCII addresses they imitate ("kate@", "ia@").
        ("\u212aATE@example.com", "\u212aate@example.com"),
        ("\u0130A@example.com", "\u0130a@example.com"),
    ],
)
def test_the_canonical_address_is_trimmed_with_only_its_ascii_letters_lower_cased(typed: str, canonical: str) -> None:
    assert canonical_email(typed) == canonical
    assert is_email_address(canonical) is canonical.isascii()
