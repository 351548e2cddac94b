"""Orders remembers catalog prices for a while: fewer calls on the checkout path, bounded staleness."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from shopmesh_chassis import errors
from shopmesh_orders.clients import CachedCatalog
from shopmesh_orders.domain.ports import PricedProduct


class FakeCatalog:
    def __init__(self, prices: dict[str, int]) -> None:
        self.prices = prices
        self.asked: list[list[str]] = []

    async def price(self, product_ids: Sequence[str], *, fresh: bool = False) -> dict[str, PricedProduct]:
        self.asked.append(list(product_ids))
        unknown = [p for p in product_ids if p not in self.prices]
        if unknown:
            raise errors.NotFound(f"unknown products: {unknown}", reason="PRODUCT_NOT_FOUND")
        return {p: PricedProduct(p, p.title(), self.prices[p], "USD") for p in product_ids}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_a_price_is_asked_once_while_it_is_fresh(clock: Clock) -> None:
    catalog = FakeCatalog({"knife": 4999})
    cached = CachedCatalog(catalog, ttl_seconds=30, max_products=100, timer=clock)
    first = await cached.price(["knife"])
    clock.now += 29
    second = await cached.price(["knife"])
    assert first == second == {"knife": PricedProduct("knife", "Knife", 4999, "USD")}
    assert catalog.asked == [["knife"]]


async def test_a_price_change_reaches_orders_once_the_remembered_price_expires(clock: Clock) -> None:
    catalog = FakeCatalog({"knife": 4999})
    cached = CachedCatalog(catalog, ttl_seconds=30, max_products=100, timer=clock)
    await cached.price(["knife"])
    catalog.prices["knife"] = 5999
    clock.now += 31
    assert (await cached.price(["knife"]))["knife"].price_minor == 5999
    assert catalog.asked == [["knife"], ["knife"]]


async def test_only_the_products_not_remembered_are_asked_for(clock: Clock) -> None:
    catalog = FakeCatalog({"knife": 4999, "board": 2500, "apron": 1500})
    cached = CachedCatalog(catalog, ttl_seconds=30, max_products=100, timer=clock)
    await cached.price(["knife"])
    priced = await cached.price(["knife", "board", "apron"])
    assert set(priced) == {"knife", "board", "apron"}
    assert catalog.asked == [["knife"], ["board", "apron"]]


async def test_an_unknown_product_is_not_remembered_as_unknown(clock: Clock) -> None:
    catalog = FakeCatalog({"knife": 4999})
    cached = CachedCatalog(catalog, ttl_seconds=30, max_products=100, timer=clock)
    with pytest.raises(errors.NotFound):
        await cached.price(["knife", "spoon"])
    catalog.prices["spoon"] = 300  # added to the catalog a moment later: orderable at once
    priced = await cached.price(["knife", "spoon"])
    assert priced["spoon"].price_minor == 300


async def test_a_fresh_price_is_asked_of_catalog_and_replaces_the_remembered_one(clock: Clock) -> None:
    catalog = FakeCatalog({"knife": 4999})
    cached = CachedCatalog(catalog, ttl_seconds=30, max_products=100, timer=clock)
    await cached.price(["knife"])
    catalog.prices["knife"] = 5999
    assert (await cached.price(["knife"], fresh=True))["knife"].price_minor == 5999
    assert (await cached.price(["knife"]))["knife"].price_minor == 5999
    assert catalog.asked == [["knife"], ["knife"]]
