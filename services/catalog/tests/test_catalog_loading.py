"""Startup loads the seed idempotently: restarts neither duplicate nor overwrite; SEED_CATALOG turns it off."""

from __future__ import annotations

import asyncio
import unicodedata
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import func, insert, select, text, update

from shopmesh.catalog.v1 import catalog_pb2
from shopmesh_catalog import seed
from shopmesh_catalog.domain.models import CategoryData, Money, ProductData
from shopmesh_catalog.domain.validation import (
    MAX_CATEGORIES,
    MAX_DESCRIPTION_LENGTH,
    MAX_IMAGE_URL_LENGTH,
    MAX_NAME_LENGTH,
)
from shopmesh_catalog.settings import CatalogSettings
from shopmesh_catalog.store.tables import categories, products
from shopmesh_catalog.wiring import Catalog, build
from shopmesh_chassis.config import load_settings
from shopmesh_chassis.contract_limits import MAX_ID_LENGTH
from shopmesh_chassis.errors import InvalidArgument
from shopmesh_chassis.testing import eventually
from shopmesh_chassis.testing.postgres import WAITING_ON_A_LOCK, PostgresServer

from .conftest import catalog_settings

if TYPE_CHECKING:
    # Only the .pyi declares the async stub's type; at run time the stub class serves both.
    from shopmesh.catalog.v1.catalog_pb2_grpc import CatalogServiceAsyncStub


async def counts(catalog: Catalog) -> tuple[int, int]:
    async with catalog.database.transaction() as session:
        category_count = await session.scalar(select(func.count()).select_from(categories))
        product_count = await session.scalar(select(func.count()).select_from(products))
    return int(category_count or 0), int(product_count or 0)


async def test_a_restart_neither_duplicates_nor_overwrites_seeded_products(tmp_path: Path) -> None:
    first = await build(catalog_settings(tmp_path))
    try:
        assert await counts(first) == (6, 36)
        # An operator repriced a product; the next start must keep the new price.
        async with first.database.transaction() as session:
            await session.execute(
                update(products).where(products.c.id == "prod_chef_knife").values(price_amount_minor=7900)
            )
        knife_before = await first.application.get_product("prod_chef_knife")
    finally:
        await first.database.dispose()

    second = await build(catalog_settings(tmp_path))
    try:
        assert await counts(second) == (6, 36)
        knife_after = await second.application.get_product("prod_chef_knife")
        assert knife_after.price == Money(7900, "USD")
        assert knife_after.created_at == knife_before.created_at
    finally:
        await second.database.dispose()


async def test_a_restart_adds_seed_products_that_are_missing(tmp_path: Path) -> None:
    first = await build(catalog_settings(tmp_path))
    try:
        async with first.database.transaction() as session:
            await session.execute(products.delete().where(products.c.id == "prod_headlamp"))
        assert await counts(first) == (6, 35)
    finally:
        await first.database.dispose()

    second = await build(catalog_settings(tmp_path))
    try:
        assert await counts(second) == (6, 36)
        assert (await second.application.get_product("prod_headlamp")).name == "Rechargeable Headlamp, 400 lm"
    finally:
        await second.database.dispose()


@pytest.mark.parametrize("seed_catalog", [False])
async def test_without_the_seed_the_catalog_is_empty(stub: CatalogServiceAsyncStub) -> None:
    listed = await stub.ListProducts(catalog_pb2.ListProductsRequest())
    assert list(listed.products) == []
    assert list((await stub.ListCategories(catalog_pb2.ListCategoriesRequest())).categories) == []


def test_seed_catalog_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEED_CATALOG", "false")
    assert load_settings(CatalogSettings).seed_catalog is False
    monkeypatch.delenv("SEED_CATALOG")
    assert load_settings(CatalogSettings).seed_catalog is True


def test_default_ports_are_the_catalogs_local_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRPC_PORT", raising=False)
    monkeypatch.delenv("METRICS_PORT", raising=False)
    settings = load_settings(CatalogSettings)
    assert (settings.service_name, settings.grpc_port, settings.metrics_port) == ("catalog", 50052, 9462)


@pytest.mark.parametrize("seed_catalog", [False])
# Above Money's bound (10^15 - 1): orders would refuse every line of it, and payments its charge.
@pytest.mark.parametrize("price_minor", [0, 10**15])
async def test_invalid_catalog_data_is_rejected_before_anything_is_written(catalog: Catalog, price_minor: int) -> None:
    bad = ProductData("prod_bad", "Bad", "", "kitchen", Money(price_minor, "USD"), "")
    with pytest.raises(InvalidArgument) as caught:
        await catalog.application.load(seed.CATEGORIES, [*seed.PRODUCTS, bad])
    assert [v.field for v in caught.value.violations] == [f"products[{len(seed.PRODUCTS)}].price.amount_minor"]
    assert await counts(catalog) == (0, 0)


@pytest.mark.parametrize("seed_catalog", [False])
async def test_loads_cannot_add_up_past_the_bound_on_categories(catalog: Catalog) -> None:
    """ListCategories is not paginated because the contract promises at most 100 categories; a stored category
    is never deleted, so the bound is on what a load leaves stored, not on one load: two loads of 100 each
    (a seed changed between releases) stored 200."""
    first = [CategoryData(f"a-{i}", f"A {i}") for i in range(MAX_CATEGORIES)]
    await catalog.application.load(first, [])
    # Stored categories sent again count once: a restart reloads the same seed.
    await catalog.application.load(first, [])
    with pytest.raises(InvalidArgument) as caught:
        await catalog.application.load([*first[1:], CategoryData("b-0", "B 0")], [])
    assert [(v.field, v.reason) for v in caught.value.violations] == [("categories", "TOO_MANY")]
    assert await counts(catalog) == (MAX_CATEGORIES, 0)
    assert len(await catalog.application.list_categories()) == MAX_CATEGORIES


_WAITING_ON_A_LOCK = text(WAITING_ON_A_LOCK)


async def test_concurrent_loads_on_postgresql_cannot_add_up_past_the_bound_on_categories(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """Two replicas loading different seeds at once: under READ COMMITTED each counted the stored categories
    without the other's and both passed the bound (121 stored). A load waits for the other's transaction, so
    the second counts what the first added and is refused. Both loads also send one category that a
    transaction of the test's is adding: they wait for it at the latest at their first write (before the
    fix, after counting), and the test lets them go on only once both wait."""
    settings = catalog_settings(tmp_path, database_url=postgres.create_database(), seed_catalog=False)
    catalog = await build(settings)
    both_send = CategoryData("shared", "Shared")
    loads = [[*(CategoryData(f"{side}-{i}", f"{side} {i}") for i in range(60)), both_send] for side in "ab"]
    try:
        async with catalog.database.transaction() as session:
            await session.execute(insert(categories).values(id=both_send.id, display_name=both_send.display_name))
            running = [asyncio.create_task(catalog.application.load(load, [])) for load in loads]

            async def both_waiting() -> bool:
                async with catalog.database.read() as reader:
                    return await reader.scalar(_WAITING_ON_A_LOCK) == len(running)

            await eventually(both_waiting, "both loads waiting on the test's transaction")
        outcomes = await asyncio.wait_for(asyncio.gather(*running, return_exceptions=True), timeout=60)
        refused = [outcome for outcome in outcomes if isinstance(outcome, InvalidArgument)]
        assert len(refused) == 1, outcomes
        assert [(v.field, v.reason) for v in refused[0].violations] == [("categories", "TOO_MANY")]
        assert await counts(catalog) == (61, 0)
    finally:
        await catalog.database.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
async def empty_catalog(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Catalog]:
    database_url = request.getfixturevalue("postgres").create_database() if request.param == "postgresql" else ""
    built = await build(catalog_settings(tmp_path, database_url=database_url, seed_catalog=False))
    try:
        yield built
    finally:
        await built.database.dispose()


def _image_url(length: int) -> str:
    start = "https://img.example/"
    return start + "a" * (length - len(start))


def test_every_length_bound_of_loaded_data_is_its_columns_length() -> None:
    """A bound above its column is data PostgreSQL refuses at startup with a raw DBAPIError (SQLite stores it)."""
    bounds = {
        categories.c.id: MAX_ID_LENGTH,
        categories.c.display_name: MAX_NAME_LENGTH,
        products.c.id: MAX_ID_LENGTH,
        products.c.name: MAX_NAME_LENGTH,
        products.c.category_id: MAX_ID_LENGTH,
        products.c.image_url: MAX_IMAGE_URL_LENGTH,
    }
    assert {column.name: getattr(column.type, "length", None) for column in bounds} == {
        column.name: bound for column, bound in bounds.items()
    }


async def test_data_at_every_bound_loads_on_sqlite_and_postgresql(empty_catalog: Catalog) -> None:
    category = CategoryData("c" * 63, "D" * MAX_NAME_LENGTH)  # CATEGORY_ID allows 63 characters
    product = ProductData(
        "prod_" + "p" * (MAX_ID_LENGTH - 5),
        "N" * MAX_NAME_LENGTH,
        "d" * MAX_DESCRIPTION_LENGTH,
        category.id,
        Money(1000, "USD"),
        _image_url(MAX_IMAGE_URL_LENGTH),
    )
    await empty_catalog.application.load([category], [product])
    stored = await empty_catalog.application.get_product(product.id)
    assert (stored.name, stored.description, stored.image_url) == (product.name, product.description, product.image_url)


async def test_data_past_a_bound_or_holding_nul_is_refused_with_violations_on_sqlite_and_postgresql(
    empty_catalog: Catalog,
) -> None:
    """An image URL longer than its column, or U+0000 in a text: PostgreSQL failed startup with a raw DBAPIError,
    SQLite loaded it. Both refuse it now, naming the fields, before anything is written."""
    category = CategoryData("kitchen", "Kitch\x00en")
    long_url = ProductData("prod_a", "A", "", "kitchen", Money(1000, "USD"), _image_url(MAX_IMAGE_URL_LENGTH + 1))
    nul = ProductData("prod_b", "B\x00", "so\x00ft", "kitchen", Money(1000, "USD"), "https://img.example/\x00")
    with pytest.raises(InvalidArgument) as caught:
        await empty_catalog.application.load([category], [long_url, nul])
    assert [(v.field, v.reason) for v in caught.value.violations] == [
        ("categories[0].display_name", "NUL_CHARACTER"),
        ("products[0].image_url", "TOO_LONG"),
        ("products[1].name", "NUL_CHARACTER"),
        ("products[1].description", "NUL_CHARACTER"),
        ("products[1].image_url", "NUL_CHARACTER"),
    ]
    assert await counts(empty_catalog) == (0, 0)


async def test_a_category_loaded_decomposed_is_stored_and_listed_composed_on_sqlite_and_postgresql(
    empty_catalog: Catalog,
) -> None:
    """As products' names are: 150 accented letters written decomposed (a file saved on macOS) are 300 code
    points, refused as longer than 200 before, and a shorter name was listed decomposed."""
    names = ["Café & Crème", "é" * 150]
    await empty_catalog.application.load(
        [CategoryData(f"c-{i}", unicodedata.normalize("NFD", name)) for i, name in enumerate(names)], []
    )
    assert [c.display_name for c in await empty_catalog.application.list_categories()] == names


async def test_a_name_that_shows_nothing_or_is_not_one_line_is_refused_at_load_on_sqlite_and_postgresql(
    empty_catalog: Catalog,
) -> None:
    """The chassis' rule for a line of text (text_lines): zero-width spaces, joiners and byte-order marks print
    as nothing and passed `str.strip()`, so a product or a category listed with no name at all loaded; a line
    break or a terminal escape went to every screen and log showing the name."""
    loaded_categories = [CategoryData("kitchen", "Kitchen"), CategoryData("blank", "\u200b\u2060\ufeff")]
    invisible = ProductData("prod_a", "\u200b \u200d", "", "kitchen", Money(1000, "USD"), "")
    two_lines = ProductData("prod_b", "Wool\nSocks", "", "kitchen", Money(1000, "USD"), "")
    escape = CategoryData("escape", "\x1b[31mRed")
    with pytest.raises(InvalidArgument) as caught:
        await empty_catalog.application.load([*loaded_categories, escape], [invisible, two_lines])
    assert [(v.field, v.reason) for v in caught.value.violations] == [
        ("categories[1].display_name", "REQUIRED"),
        ("categories[2].display_name", "INVALID_CHARACTERS"),
        ("products[0].name", "REQUIRED"),
        ("products[1].name", "INVALID_CHARACTERS"),
    ]
    assert await counts(empty_catalog) == (0, 0)
