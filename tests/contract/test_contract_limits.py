"""The bounds common/v1/money.proto states for every contract are the ones the services check: each service
imports them from shopmesh_chassis.contract_limits, and this reads them back from the proto's comments, so
neither the comment nor the number can change alone. A field that takes an amount from the client says so
where the client reads it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shopmesh_chassis.contract_limits import (
    CURRENCY_CODE,
    MAX_AMOUNT_MINOR,
    MAX_ID_LENGTH,
    id_violations,
    is_currency_code,
    money_violations,
)

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos" / "shopmesh"
MONEY_PROTO = PROTOS / "common" / "v1" / "money.proto"


def comment_text() -> str:
    """The proto's comments as one text, their lines joined (a sentence may wrap)."""
    lines = MONEY_PROTO.read_text().splitlines()
    return " ".join(line.strip().removeprefix("//").strip() for line in lines if line.strip().startswith("//"))


def test_the_id_length_is_the_one_the_contract_states() -> None:
    stated = re.search(r"An id field is at most (\d+) characters", comment_text())
    assert stated, "money.proto no longer states the length of an id"
    assert int(stated.group(1)) == MAX_ID_LENGTH


def test_the_id_characters_are_the_ones_the_contract_states() -> None:
    """Every service refuses an id with whitespace or an unprintable character through this one rule; payments
    and inventory took them (a payment stored for order "\\n\\r") while orders refused them."""
    assert "No id holds whitespace or an unprintable character" in comment_text()
    assert "INVALID_FORMAT violation on its field" in comment_text()
    for refused in [" ", "\n\r", "\u202e", "ord 1", "ord\t1", "\x1b[2J", "ord_1\u2028"]:
        found = id_violations("order_id", refused)
        assert [(v.field, v.reason) for v in found] == [("order_id", "INVALID_FORMAT")], repr(refused)
    for accepted in ["ord_1", "8b49eee7-5afe-415e-93c1-ec0d52e7d786", "prod_chef_knife", "ÜSD", "../../etc"]:
        assert id_violations("order_id", accepted) == [], repr(accepted)


def test_the_currency_rule_is_the_one_the_contract_states() -> None:
    """money.proto states the shape, not ISO 4217's list: "XXX" passes, as every service checks it."""
    stated = re.search(r"anything not matching \^(\S+)\$ is rejected", comment_text())
    assert stated, "money.proto no longer states the currency's pattern"
    assert stated.group(1) == CURRENCY_CODE.pattern
    assert [code for code in ["USD", "XXX", "usd", "US", "USDX", "USD\n", "ÜSD"] if is_currency_code(code)] == [
        "USD",
        "XXX",
    ]


def test_the_money_bound_is_the_one_the_contract_states() -> None:
    stated = re.search(r"None may exceed ([\d,]+) \((\d+)\^(\d+) - 1\b", comment_text())
    assert stated, "money.proto no longer states Money's bound as '<digits> (10^n - 1'"
    written, base, exponent = stated.groups()
    # The digits and the power say the same number, and it is the services'.
    assert int(written.replace(",", "")) == int(base) ** int(exponent) - 1 == MAX_AMOUNT_MINOR


@pytest.mark.parametrize(
    ("amount_minor", "currency", "refused"),
    [
        (1, "USD", []),
        (MAX_AMOUNT_MINOR, "USD", []),
        (0, "USD", [("price.amount_minor", "must be greater than 0")]),
        (-1, "USD", [("price.amount_minor", "must be greater than 0")]),
        (MAX_AMOUNT_MINOR + 1, "USD", [("price.amount_minor", "must be at most 999,999,999,999,999")]),
        (
            0,
            "",
            [
                ("price.amount_minor", "must be greater than 0"),
                ("price.currency", "three upper-case letters, e.g. USD"),
            ],
        ),
    ],
)
def test_the_money_rule_catalog_orders_and_payments_share_names_each_broken_part(
    amount_minor: int, currency: str, refused: list[tuple[str, str]]
) -> None:
    """A price is sold and an amount charged only at 1 to the bound in a currency code: catalog's loads,
    orders' prices from catalog and payments' charges hold to this one rule, each on its own field."""
    found = money_violations("price", amount_minor, currency)
    assert [(v.field, v.description) for v in found] == refused


def field_comment(proto: Path, field: str) -> str:
    match = re.search(r"((?:[ \t]*//[^\n]*\n)+)[ \t]*\S+ " + field + r" = \d+;", proto.read_text())
    assert match, f"{proto.name} lost {field}"
    return " ".join(line.strip().removeprefix("//").strip() for line in match.group(1).splitlines())


@pytest.mark.parametrize("proto", ["orders/v1/orders.proto", "gateway/v1/shop.proto"])
def test_placeorders_expected_total_names_the_money_bound(proto: str) -> None:
    """orders refuses an expected_total above the bound (OUT_OF_RANGE); the gateway's ShopService passes it on
    as is, and its comment, which the storefront and the HTTP API's clients read, said nothing of it."""
    comment = field_comment(PROTOS / proto, "expected_total")
    assert "Money's bound" in comment, comment
    assert "OUT_OF_RANGE" in comment, comment
