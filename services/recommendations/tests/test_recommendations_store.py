"""The counting store on SQLite and on a real PostgreSQL: upserts that add up, also concurrently; marks kept
at the time they are recorded at, which the application takes from its clock."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from shopmesh_chassis.db import Database, as_utc
from shopmesh_chassis.migrations import migrate
from shopmesh_chassis.testing import eventually
from shopmesh_chassis.testing.postgres import WAITING_ON_A_LOCK
from shopmesh_recommendations.application import RecommendationsApplication
from shopmesh_recommendations.domain.copurchase import purchase_effects
from shopmesh_recommendations.domain.models import CancelledOrder, CatalogProduct, ConfirmedOrder
from shopmesh_recommendations.store.repository import RecommendationsRepository, forget_cancelled_orders
from shopmesh_recommendations.store.tables import counted_orders, metadata
from shopmesh_recommendations.wiring import VERSIONS


@pytest.fixture
async def database(blank_db: Database) -> Database:
    await migrate(blank_db, VERSIONS, metadata)
    return blank_db


# A fixed time, unlike the wall clock's: what a test reads back or purges by is known exactly.
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def record(db: Database, order_id: str, user_id: str, *product_ids: str, at: datetime = NOW) -> bool:
    async with db.transaction() as session:
        return await RecommendationsRepository(session).record(
            purchase_effects(ConfirmedOrder(order_id, user_id, product_ids)), at
        )


async def take_back(db: Database, order_id: str, user_id: str, *product_ids: str, at: datetime = NOW) -> bool:
    async with db.transaction() as session:
        return await RecommendationsRepository(session).take_back(
            purchase_effects(CancelledOrder(order_id, user_id, product_ids)), at
        )


async def marks(db: Database) -> dict[str, tuple[str, datetime]]:
    async with db.read() as session:
        rows = await session.execute(
            select(counted_orders.c.order_id, counted_orders.c.state, counted_orders.c.counted_at)
        )
        return {order_id: (state, as_utc(counted_at)) for order_id, state, counted_at in rows.all()}


async def counts(db: Database) -> tuple[dict[str, int], dict[str, int], dict[str, int], dict[str, int]]:
    async with db.read() as session:
        repository = RecommendationsRepository(session)
        return (
            await repository.co_purchase_counts(["prod_a"], 10),
            await repository.co_purchase_counts(["prod_c"], 10),
            await repository.purchases_of("usr_1", 10),
            await repository.most_popular(10),
        )


async def test_orders_add_up_co_purchases_user_purchases_and_popularity(database: Database) -> None:
    await record(database, "ord_1", "usr_1", "prod_a", "prod_b", "prod_c")
    await record(database, "ord_2", "usr_1", "prod_a", "prod_b")
    await record(database, "ord_3", "usr_2", "prod_b")
    async with database.transaction() as session:
        repository = RecommendationsRepository(session)
        assert await repository.co_purchase_counts(["prod_a"], 10) == {"prod_b": 2, "prod_c": 1}
        assert await repository.co_purchase_counts(["prod_c"], 10) == {"prod_a": 1, "prod_b": 1}
        assert await repository.purchases_of("usr_1", 10) == {"prod_a": 2, "prod_b": 2, "prod_c": 1}
        assert await repository.purchases_of("usr_2", 10) == {"prod_b": 1}
        assert await repository.most_popular(2) == {"prod_b": 3, "prod_a": 2}
        assert await repository.popularity(["prod_c", "prod_unknown"]) == {"prod_c": 1}


async def test_co_purchases_of_several_products_are_summed_most_first(database: Database) -> None:
    await record(database, "ord_1", "u", "prod_a", "prod_x")
    await record(database, "ord_2", "u", "prod_b", "prod_x", "prod_y")
    await record(database, "ord_3", "u", "prod_b", "prod_y")
    await record(database, "ord_4", "u", "prod_a", "prod_y")
    async with database.transaction() as session:
        counts = await RecommendationsRepository(session).co_purchase_counts(["prod_a", "prod_b"], 10)
    assert list(counts.items()) == [("prod_y", 3), ("prod_x", 2)]


async def test_ties_cut_by_a_limit_keep_the_first_ids_in_code_point_order_on_every_database(database: Database) -> None:
    """Python sorts prod_tea_set first ('_' < 'p'); a language collation (the official PostgreSQL image's
    en_US) puts prod_teapot first: the products kept at a LIMIT must be those Python ranks first."""
    await record(database, "ord_1", "u", "prod_teapot", "prod_cup")
    await record(database, "ord_2", "u", "prod_tea_set", "prod_cup")
    async with database.transaction() as session:
        repository = RecommendationsRepository(session)
        assert await repository.most_popular(2) == {"prod_cup": 2, "prod_tea_set": 1}
        assert await repository.co_purchase_counts(["prod_cup"], 1) == {"prod_tea_set": 1}
        assert list(await repository.purchases_of("u", 2)) == ["prod_cup", "prod_tea_set"]


async def test_concurrent_orders_of_the_same_products_lose_no_increment(database: Database) -> None:
    await asyncio.gather(*(record(database, f"ord_{i}", f"usr_{i % 3}", "prod_a", "prod_b") for i in range(12)))
    async with database.transaction() as session:
        repository = RecommendationsRepository(session)
        assert await repository.co_purchase_counts(["prod_a"], 10) == {"prod_b": 12}
        assert await repository.most_popular(10) == {"prod_a": 12, "prod_b": 12}
        assert await repository.purchases_of("usr_0", 10) == {"prod_a": 4, "prod_b": 4}


async def test_nothing_recorded_means_empty_answers(database: Database) -> None:
    async with database.transaction() as session:
        repository = RecommendationsRepository(session)
        assert await repository.co_purchase_counts([], 10) == {}
        assert await repository.co_purchase_counts(["prod_a"], 10) == {}
        assert await repository.purchases_of("usr_1", 10) == {}
        assert await repository.most_popular(10) == {}
        assert await repository.popularity([]) == {}


async def test_a_cancelled_confirmed_order_takes_back_exactly_what_it_added(database: Database) -> None:
    await record(database, "ord_1", "usr_1", "prod_a", "prod_b")
    before = await counts(database)
    assert await record(database, "ord_2", "usr_1", "prod_a", "prod_b", "prod_c")
    assert await take_back(database, "ord_2", "usr_1", "prod_a", "prod_b", "prod_c")
    assert await counts(database) == before
    # Rows that fell to zero are gone, not kept at count 0: prod_c was bought with nothing any more.
    assert before[1] == {}
    assert before[3] == {"prod_a": 1, "prod_b": 1}


async def test_an_order_never_counted_is_not_taken_back(database: Database) -> None:
    await record(database, "ord_1", "usr_1", "prod_a", "prod_b")
    before = await counts(database)
    # Cancelled before confirmation (declined card, no stock): nothing was counted, nothing changes.
    assert not await take_back(database, "ord_9", "usr_1", "prod_a", "prod_b")
    assert await counts(database) == before
    # And a cancellation seen twice takes back once.
    assert await take_back(database, "ord_1", "usr_1", "prod_a", "prod_b")
    assert not await take_back(database, "ord_1", "usr_1", "prod_a", "prod_b")
    assert await counts(database) == ({}, {}, {}, {})


async def test_an_order_counts_once_even_if_confirmed_twice(database: Database) -> None:
    assert await record(database, "ord_1", "usr_1", "prod_a", "prod_b")
    assert not await record(database, "ord_1", "usr_1", "prod_a", "prod_b")
    assert (await counts(database))[0] == {"prod_b": 1}


async def test_an_order_cancelled_before_its_confirmation_is_applied_is_never_counted(database: Database) -> None:
    await record(database, "ord_1", "usr_1", "prod_a", "prod_b")
    before = await counts(database)
    # The cancellation is applied first (its confirmation retried, or parked and replayed, or on another replica).
    assert not await take_back(database, "ord_2", "usr_1", "prod_a", "prod_c")
    assert not await record(database, "ord_2", "usr_1", "prod_a", "prod_c")
    assert await counts(database) == before
    # Redelivered, in either order, under new event ids: still nothing.
    assert not await take_back(database, "ord_2", "usr_1", "prod_a", "prod_c")
    assert not await record(database, "ord_2", "usr_1", "prod_a", "prod_c")
    assert await counts(database) == before


async def test_a_confirmed_order_taken_back_is_not_counted_again_by_a_redelivered_confirmation(
    database: Database,
) -> None:
    await record(database, "ord_1", "usr_1", "prod_a", "prod_b")
    before = await counts(database)
    assert await record(database, "ord_2", "usr_1", "prod_a", "prod_c")
    assert await take_back(database, "ord_2", "usr_1", "prod_a", "prod_c")
    assert await counts(database) == before
    assert not await record(database, "ord_2", "usr_1", "prod_a", "prod_c")
    assert not await take_back(database, "ord_2", "usr_1", "prod_a", "prod_c")
    assert await counts(database) == before


_WAITING_ON_A_LOCK = text(WAITING_ON_A_LOCK)


async def waited_for_or_decided(db: Database, other: asyncio.Task[bool]) -> None:
    """Returns once `other`, a transaction begun while the test holds one open, waits for it (or was decided
    without waiting, which the caller's `not done()` then reports)."""
    if db.dialect == "postgresql":

        async def decided_or_waiting() -> bool:
            if other.done():
                return True
            async with db.read() as reader:
                return bool(await reader.scalar(_WAITING_ON_A_LOCK))

        await eventually(decided_or_waiting, "the other transaction waiting on a lock, or decided")
    else:
        # SQLite's writers queue on the Database's in-process asyncio.Lock, whose waiters only its private
        # attributes show. `other` reaches it in its first step, with no I/O before it, so any sleep puts it
        # there: this is not a window hoped to be long enough, and `not done()` after it is no race.
        await asyncio.sleep(0.2)


async def test_a_cancellation_applied_while_its_confirmation_commits_takes_it_back(database: Database) -> None:
    """Two replicas on the durable, one applying the confirmation, the other the cancellation meanwhile."""
    before = await counts(database)
    async with database.transaction() as session:
        assert await RecommendationsRepository(session).record(
            purchase_effects(ConfirmedOrder("ord_2", "usr_1", ("prod_a", "prod_c"))), NOW
        )
        cancelling = asyncio.create_task(take_back(database, "ord_2", "usr_1", "prod_a", "prod_c"))
        # The cancellation waits for the confirmation's transaction (PostgreSQL: on the order's key).
        await waited_for_or_decided(database, cancelling)
        assert not cancelling.done(), "the cancellation did not wait for the confirmation's transaction"
    assert await cancelling
    assert await counts(database) == before


async def test_a_confirmation_applied_while_its_cancellation_commits_counts_nothing(database: Database) -> None:
    before = await counts(database)
    async with database.transaction() as session:
        assert not await RecommendationsRepository(session).take_back(
            purchase_effects(CancelledOrder("ord_2", "usr_1", ("prod_a", "prod_c"))), NOW
        )
        confirming = asyncio.create_task(record(database, "ord_2", "usr_1", "prod_a", "prod_c"))
        await waited_for_or_decided(database, confirming)
        assert not confirming.done(), "the confirmation did not wait for the cancellation's transaction"
    assert not await confirming
    assert await counts(database) == before


async def test_a_cancellation_mark_is_forgotten_by_the_time_it_was_recorded_at(database: Database) -> None:
    month_ago = NOW - timedelta(days=30)
    await take_back(database, "ord_old", "usr_1", "prod_a", at=month_ago)  # never counted: only the mark
    await take_back(database, "ord_new", "usr_1", "prod_a", at=NOW)
    await record(database, "ord_kept", "usr_1", "prod_a", at=month_ago)
    assert await forget_cancelled_orders(database, before=NOW - timedelta(days=7)) == 1
    assert await marks(database) == {"ord_new": ("CANCELLED", NOW), "ord_kept": ("COUNTED", month_ago)}


class NoCatalog:
    """Learning and unlearning never ask the catalog."""

    async def product(self, product_id: str) -> CatalogProduct | None:
        raise AssertionError("the catalog was asked")

    async def products_in_category(self, category: str) -> Sequence[CatalogProduct]:
        raise AssertionError("the catalog was asked")

    async def products(self, product_ids: Sequence[str]) -> dict[str, CatalogProduct]:
        raise AssertionError("the catalog was asked")


async def test_the_application_marks_orders_at_the_time_of_its_clock(database: Database) -> None:
    application = RecommendationsApplication(database, NoCatalog(), clock=lambda: NOW)
    async with database.transaction() as session:
        await application.record_order(session, ConfirmedOrder("ord_1", "usr_1", ("prod_a", "prod_b")))
        await application.forget_order(session, CancelledOrder("ord_2", "usr_1", ("prod_a",)))
    assert await marks(database) == {"ord_1": ("COUNTED", NOW), "ord_2": ("CANCELLED", NOW)}
