"""`ids.new_id`: the one shape of every id a service mints."""

from __future__ import annotations

import re

from shopmesh_chassis.contract_limits import id_violations
from shopmesh_chassis.ids import new_id


def test_an_id_is_its_prefix_as_given_and_32_hex_digits() -> None:
    assert re.fullmatch(r"ord_[0-9a-f]{32}", new_id("ord_"))
    assert re.fullmatch(r"saga-[0-9a-f]{32}", new_id("saga-"))


def test_each_id_is_new() -> None:
    assert len({new_id("evt_") for _ in range(1000)}) == 1000


def test_a_minted_id_is_one_every_service_accepts_when_handed_it() -> None:
    assert id_violations("order_id", new_id("ord_"), listable=True) == []
