"""SearchProducts on text beyond ASCII, over real gRPC on SQLite and PostgreSQL: text is compared as people
read it (domain/search.py `fold`), and a query is bounded and required as people see it (NFC, invisible
characters not counted as something to look for)."""

from __future__ import annotations

import unicodedata
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from sqlalchemy import insert, select

from shopmesh.catalog.v1 import catalog_pb2
from shopmesh_catalog import seed
from shopmesh_catalog.domain.models import Money, ProductData
from shopmesh_catalog.store.tables import categories, metadata, products
from shopmesh_catalog.wiring import VERSIONS, Catalog, build
from shopmesh_chassis.db import Database
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.testing import migrate_to

from .conftest import catalog_settings

if TYPE_CHECKING:
    # Only the .pyi declares the async stub's type; at run time the stub class serves both.
    from shopmesh.catalog.v1.catalog_pb2_grpc import CatalogServiceAsyncStub as Stub

# Vietnamese, 10 terms, 163 characters composed; letters with two marks are 3 code points decomposed (NFD:
# what macOS input and text pasted from its files send), 215 in all.
VIETNAMESE = (
    "bộ-nồi-chảo-gang-đúc chống-dính cỡ-lớn được-ướp-dầu-thực-vật sẵn-dùng-cho-bếp-từ-và-bếp-ga Việt-Nam "
    "chính-hãng bảo-hành-mười-hai-tháng giao-hàng-miễn-phí toàn-quốc"
)


@pytest.fixture(params=["sqlite", "postgresql"])
async def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Catalog]:
    url = request.getfixturevalue("postgres").create_database() if request.param == "postgresql" else ""
    built = await build(catalog_settings(tmp_path, database_url=url, seed_catalog=True))
    try:
        yield built
    finally:
        await built.database.dispose()


def product(product_id: str, name: str, description: str = "A thing.") -> ProductData:
    return ProductData(product_id, name, description, "kitchen", Money(2900, "USD"), "")


async def found(stub: Stub, query: str) -> list[str]:
    response = await stub.SearchProducts(catalog_pb2.SearchProductsRequest(query=query))
    return [p.id for p in response.products]


async def refused(stub: Stub, query: str) -> list[tuple[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.SearchProducts(catalog_pb2.SearchProductsRequest(query=query))
    details = details_of(raised.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED")
    return [(v.field, v.reason) for v in details.field_violations]


async def test_a_dotted_capital_i_is_found_by_a_plain_i_in_any_case_and_the_other_way_round(
    stub: Stub, catalog: Catalog
) -> None:
    """Case folding makes "İ" an "i" with a combining dot above: the stored name held no "istanbul" at all."""
    await catalog.application.load(
        seed.CATEGORIES, [product("prod_ist", "İSTANBUL Tea Glass Set"), product("prod_izmir", "Izmir Tray")]
    )
    for query in ("İSTANBUL", "istanbul", "Istanbul", "ISTANBUL", "İstanbul", "I\u0307stanbul"):
        assert await found(stub, query) == ["prod_ist"], query
    assert await found(stub, "İzmir") == ["prod_izmir"]


@pytest.mark.parametrize("query", ["wool\u200b", "\u2060wool", "wo\u00adol", "\ufeffwool", "wo\u200bol"])
async def test_characters_drawn_as_nothing_in_a_query_do_not_change_what_it_finds(stub: Stub, query: str) -> None:
    expected = await found(stub, "wool")
    assert expected
    assert await found(stub, query) == expected


async def test_characters_drawn_as_nothing_in_a_name_do_not_hide_it(stub: Stub, catalog: Catalog) -> None:
    """A soft hyphen (where a long word may break) or a zero-width space inside a stored word."""
    await catalog.application.load(
        seed.CATEGORIES, [product("prod_teapot", "Tee\u00adkanne", "Gusseisen\u200bkanne mit Sieb.")]
    )
    assert await found(stub, "teekanne") == ["prod_teapot"]
    assert await found(stub, "gusseisenkanne") == ["prod_teapot"]


@pytest.mark.parametrize("query", ["\u200b", "\ufeff\u2060", " \u00ad \u200b\t", "\u200e", "\u3164"])
async def test_a_query_of_characters_drawn_as_nothing_only_is_required(stub: Stub, query: str) -> None:
    assert await refused(stub, query) == [("query", "REQUIRED")]


async def test_a_decomposed_query_is_accepted_where_its_composed_form_is(stub: Stub) -> None:
    decomposed = unicodedata.normalize("NFD", VIETNAMESE)
    assert len(VIETNAMESE) <= 200 < len(decomposed)
    assert await found(stub, VIETNAMESE) == []
    assert await found(stub, decomposed) == []


async def test_a_query_is_too_long_by_its_composed_length_and_past_eight_times_the_limit_as_sent(stub: Stub) -> None:
    """201 characters composed is too long however it is sent; one past 1,600 code points as sent is refused
    before it is normalized at all (the chassis' text_lines.too_long_to_normalize)."""
    assert await refused(stub, unicodedata.normalize("NFD", "é" * 201)) == [("query", "TOO_LONG")]
    assert await found(stub, " " * 1400 + "wool" + " " * 196) == await found(stub, "wool")
    assert await refused(stub, " " * 1400 + "wool" + " " * 197) == [("query", "TOO_LONG")]


async def test_a_product_loaded_decomposed_is_stored_and_answered_composed(stub: Stub, catalog: Catalog) -> None:
    """150 letters with an accent are 300 code points decomposed: refused as longer than 200 before, and
    answered in a form no composed query or comparison of names took for the same text."""
    name, description = "é" * 150, "Café crème, servi chaud."
    await catalog.application.load(
        seed.CATEGORIES,
        [product("prod_nfd", unicodedata.normalize("NFD", name), unicodedata.normalize("NFD", description))],
    )
    answered = await stub.GetProduct(catalog_pb2.GetProductRequest(product_id="prod_nfd"))
    assert (answered.product.name, answered.product.description) == (name, description)
    assert await found(stub, "crème") == ["prod_nfd"]


# What catalog_0001's release stored: the old fold, and names as the data had them.
def previous_fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


async def test_the_refold_migration_recomputes_what_an_earlier_release_stored(blank_db: Database) -> None:
    await migrate_to(blank_db, VERSIONS, "catalog_0001")
    rows = [
        ("prod_ist", "İSTANBUL Tea Glass Set", "Tulip glasses."),
        ("prod_nfd", unicodedata.normalize("NFD", "Crème Brûlée Torch"), "Butane torch\u200b."),
        ("prod_plain", "Wool Throw", "Warm."),
    ] + [(f"prod_{i:04}", f"İ{i}", "") for i in range(1200)]  # more than one batch
    async with blank_db.transaction() as connection:
        await connection.execute(insert(categories), [{"id": "kitchen", "display_name": "Kitchen"}])
        await connection.execute(
            insert(products),
            [
                {
                    "id": product_id,
                    "name": name,
                    "description": description,
                    "category_id": "kitchen",
                    "price_amount_minor": 100,
                    "price_currency": "USD",
                    "image_url": "",
                    "created_at": datetime.now(UTC),
                    "search_name": previous_fold(name),
                    "search_description": previous_fold(description),
                }
                for product_id, name, description in rows
            ],
        )
    await migrate(blank_db, VERSIONS, metadata)
    async with blank_db.read() as connection:
        stored = {row.id: row for row in await connection.execute(select(products))}
    assert (stored["prod_ist"].search_name, stored["prod_ist"].search_description) == (
        "istanbul tea glass set",
        "tulip glasses.",
    )
    assert (stored["prod_nfd"].name, stored["prod_nfd"].search_name) == ("Crème Brûlée Torch", "crème brûlée torch")
    assert stored["prod_nfd"].search_description == "butane torch."
    assert stored["prod_plain"].search_name == "wool throw"
    assert stored["prod_1199"].search_name == "i1199"


async def test_the_compose_migration_composes_the_category_names_an_earlier_release_stored(blank_db: Database) -> None:
    """Loads compose category names now; the ones stored decomposed before were listed and sorted apart from
    the same name typed composed."""
    await migrate_to(blank_db, VERSIONS, "catalog_0002")
    decomposed = unicodedata.normalize("NFD", "Café & Crème")
    async with blank_db.transaction() as connection:
        await connection.execute(
            insert(categories),
            [{"id": "cafe", "display_name": decomposed}, {"id": "kitchen", "display_name": "Kitchen"}],
        )
    await migrate(blank_db, VERSIONS, metadata)
    async with blank_db.read() as connection:
        stored = {row.id: row.display_name for row in await connection.execute(select(categories))}
    assert stored == {"cafe": "Café & Crème", "kitchen": "Kitchen"}
