"""The bounds common/v1/money.proto states for every contract are the ones the services check: each service
imports them from shopmesh_chassis.contract_limits, and this reads them back from the proto's comments, so
neither the comment nor the number can change alone."""

from __future__ import annotations

import re
from pathlib import Path

from shopmesh_chassis.contract_limits import MAX_AMOUNT_MINOR, MAX_ID_LENGTH

ROOT = Path(__file__).resolve().parents[2]
MONEY_PROTO = ROOT / "protos" / "shopmesh" / "common" / "v1" / "money.proto"


def comment_text() -> str:
    """The proto's comments as one text, their lines joined (a sentence may wrap)."""
    lines = MONEY_PROTO.read_text().splitlines()
    return " ".join(line.strip().removeprefix("//").strip() for line in lines if line.strip().startswith("//"))


def test_the_id_length_is_the_one_the_contract_states() -> None:
    stated = re.search(r"An id field is at most (\d+) characters", comment_text())
    assert stated, "money.proto no longer states the length of an id"
    assert int(stated.group(1)) == MAX_ID_LENGTH


def test_the_money_bound_is_the_one_the_contract_states() -> None:
    stated = re.search(r"None may exceed ([\d,]+) \((\d+)\^(\d+) - 1\b", comment_text())
    assert stated, "money.proto no longer states Money's bound as '<digits> (10^n - 1'"
    written, base, exponent = stated.groups()
    # The digits and the power say the same number, and it is the services'.
    assert int(written.replace(",", "")) == int(base) ** int(exponent) - 1 == MAX_AMOUNT_MINOR
