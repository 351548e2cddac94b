"""orders.proto documents what GetOrder and CancelOrder answer for an invalid order_id."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shopmesh_chassis.contract_limits import MAX_ID_LENGTH

PROTO = Path(__file__).resolve().parents[2] / "protos" / "shopmesh" / "orders" / "v1" / "orders.proto"


def rpc_comment(name: str) -> str:
    match = re.search(r"((?:\s*//[^\n]*\n)+)\s*rpc " + name + r"\(", PROTO.read_text())
    assert match, name
    return match.group(1)


@pytest.mark.parametrize("rpc", ["GetOrder", "CancelOrder"])
def test_a_too_long_order_id_is_documented(rpc: str) -> None:
    """Since 122c670 an order_id over MAX_ID_LENGTH characters is its own INVALID_ARGUMENT (violation TOO_LONG,
    relayed unchanged by the gateway), but the contract names only an empty order_id, and GetOrderRequest /
    CancelOrderRequest say only "Required." with no maximum."""
    comment = rpc_comment(rpc)
    assert str(MAX_ID_LENGTH) in comment or "too long" in comment, comment
