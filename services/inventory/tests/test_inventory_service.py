"""Every InventoryService RPC over a real gRPC socket against a real SQLite database (and, where the two
can differ, PostgreSQL too).

The service runs on a clock the tests move (`clock.advance`), so expiry is exact and instant.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import grpc
import pytest
from sqlalchemy.engine import make_url

from shopmesh.inventory.v1 import inventory_pb2
from shopmesh_chassis.db import Database
from shopmesh_inventory.application import Inventory
from shopmesh_inventory.domain.models import StockLevel
from shopmesh_inventory.domain.validation import MAX_ON_HAND

from .conftest import BACKENDS, FakeClock
from .inventory_calls import (
    Stub,
    commit,
    error_of,
    get_reservation,
    metadata,
    release,
    reserve,
    set_stock,
    stock,
    violations,
)

ReservationCall = Callable[[Stub, str], Awaitable[inventory_pb2.Reservation]]

PENDING = inventory_pb2.RESERVATION_STATE_PENDING
COMMITTED = inventory_pb2.RESERVATION_STATE_COMMITTED
RELEASED = inventory_pb2.RESERVATION_STATE_RELEASED
EXPIRED = inventory_pb2.RESERVATION_STATE_EXPIRED


# --- GetStock -----------------------------------------------------------------------------------


async def test_get_stock_answers_in_request_order_with_zero_for_unknown_products(stub: Stub) -> None:
    await set_stock(stub, "prod_a", 7)
    response = await stub.GetStock(inventory_pb2.GetStockRequest(product_ids=["prod_unknown", "prod_a", "prod_a"]))
    assert [(s.product_id, s.available, s.reserved, s.on_hand) for s in response.stock_levels] == [
        ("prod_unknown", 0, 0, 0),
        ("prod_a", 7, 0, 7),
        ("prod_a", 7, 0, 7),
    ]


async def test_get_stock_rejects_no_ids_too_many_ids_and_empty_ids(stub: Stub) -> None:
    cases = [
        ([], [("product_ids", "REQUIRED")]),
        (["prod_a"] * 101, [("product_ids", "TOO_MANY")]),
        (["prod_a", ""], [("product_ids[1]", "REQUIRED")]),
        (["p" * 65], [("product_ids[0]", "TOO_LONG")]),
    ]
    for product_ids, expected in cases:
        details = await error_of(stub.GetStock(inventory_pb2.GetStockRequest(product_ids=product_ids)))
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.reason == "VALIDATION_FAILED"
        assert violations(details) == expected


async def test_get_stock_counts_units_of_expired_unswept_reservations_as_available(
    stub: Stub, clock: FakeClock
) -> None:
    await set_stock(stub, "prod_a", 10)
    await reserve(stub, "ord_1", {"prod_a": 4}, ttl_seconds=5)
    assert await stock(stub, "prod_a") == (6, 4, 10)
    clock.advance(5)
    assert await stock(stub, "prod_a") == (10, 0, 10)


# --- Reserve ------------------------------------------------------------------------------------


async def test_reserve_holds_units_and_returns_a_pending_reservation_sorted_by_product(
    stub: Stub, clock: FakeClock
) -> None:
    await set_stock(stub, "prod_a", 10)
    await set_stock(stub, "prod_b", 10)
    reservation = await reserve(stub, "ord_1", {"prod_b": 1, "prod_a": 3}, ttl_seconds=90)
    assert reservation.id.startswith("res_")
    assert reservation.order_id == "ord_1"
    assert reservation.state == PENDING
    assert [(i.product_id, i.quantity) for i in reservation.items] == [("prod_a", 3), ("prod_b", 1)]
    assert reservation.created_at.ToDatetime(tzinfo=clock.now.tzinfo) == clock.now
    assert reservation.updated_at == reservation.created_at
    assert reservation.expires_at.ToDatetime(tzinfo=clock.now.tzinfo) == clock.now + timedelta(seconds=90)
    assert await stock(stub, "prod_a") == (7, 3, 10)
    assert await stock(stub, "prod_b") == (9, 1, 10)


@BACKENDS
async def test_a_repeated_reserve_replays_whatever_order_the_database_sorts_ids_in(stub: Stub) -> None:
    """Python puts prod_tea_set first ('_' < 'p'); PostgreSQL in a language's collation (the official
    image's en_US) puts it last, passing over the underscores: the reservation is the same either way."""
    await set_stock(stub, "prod_tea_set", 5)
    await set_stock(stub, "prod_teapot", 5)
    first = await reserve(stub, "ord_1", {"prod_teapot": 1, "prod_tea_set": 2})
    again = await reserve(stub, "ord_1", {"prod_tea_set": 2, "prod_teapot": 1})
    assert again.id == first.id
    assert [(i.product_id, i.quantity) for i in again.items] == [("prod_tea_set", 2), ("prod_teapot", 1)]
    assert [i.product_id for i in (await get_reservation(stub, first.id)).items] == ["prod_tea_set", "prod_teapot"]
    assert await stock(stub, "prod_tea_set") == (3, 2, 5)


async def test_reserve_without_ttl_expires_after_15_minutes(stub: Stub) -> None:
    await set_stock(stub, "prod_a", 1)
    reservation = await reserve(stub, "ord_1", {"prod_a": 1})
    assert reservation.expires_at.seconds - reservation.created_at.seconds == 15 * 60


async def test_reserve_is_all_or_nothing_and_names_every_product_short_of_stock(stub: Stub) -> None:
    await set_stock(stub, "prod_a", 10)
    await set_stock(stub, "prod_b", 1)
    details = await error_of(reserve(stub, "ord_1", {"prod_a": 5, "prod_b": 2, "prod_unknown": 1}))
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.reason == "INSUFFICIENT_STOCK"
    assert metadata(details) == {"product_ids": "prod_b,prod_unknown", "short_count": "2"}
    assert await stock(stub, "prod_a") == (10, 0, 10)
    assert await stock(stub, "prod_b") == (1, 0, 1)
    # Nothing was recorded for the order, so it may try again with what is there.
    retried = await reserve(stub, "ord_1", {"prod_a": 5, "prod_b": 1})
    assert retried.state == PENDING


async def test_reserve_may_take_exactly_the_available_units(stub: Stub) -> None:
    await set_stock(stub, "prod_a", 4)
    await reserve(stub, "ord_1", {"prod_a": 3})
    await reserve(stub, "ord_2", {"prod_a": 1})
    assert await stock(stub, "prod_a") == (0, 4, 4)
    details = await error_of(reserve(stub, "ord_3", {"prod_a": 1}))
    assert details.reason == "INSUFFICIENT_STOCK"


async def test_repeated_reserve_with_the_same_items_in_any_order_returns_the_same_reservation_once(
    stub: Stub,
) -> None:
    await set_stock(stub, "prod_a", 10)
    await set_stock(stub, "prod_b", 10)
    first = await reserve(stub, "ord_1", {"prod_a": 2, "prod_b": 1}, ttl_seconds=60)
    again = await reserve(stub, "ord_1", {"prod_b": 1, "prod_a": 2}, ttl_seconds=600)
    assert again == first
    assert await stock(stub, "prod_a") == (8, 2, 10)


async def test_repeated_reserve_returns_the_existing_reservation_whatever_its_state(stub: Stub) -> None:
    await set_stock(stub, "prod_a", 10)
    first = await reserve(stub, "ord_1", {"prod_a": 2})
    await commit(stub, first.id)
    again = await reserve(stub, "ord_1", {"prod_a": 2})
    assert (again.id, again.state) == (first.id, COMMITTED)
    assert await stock(stub, "prod_a") == (8, 0, 8)


async def test_reserve_for_an_order_with_different_items_fails_as_idempotency_key_reused(stub: Stub) -> None:
    await set_stock(stub, "prod_a", 10)
    first = await reserve(stub, "ord_1", {"prod_a": 2})
    details = await error_of(reserve(stub, "ord_1", {"prod_a": 3}))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "IDEMPOTENCY_KEY_REUSED"
    assert metadata(details) == {"order_id": "ord_1", "reservation_id": first.id}
    assert await stock(stub, "prod_a") == (8, 2, 10)


async def test_reserve_rejects_each_invalid_field_with_a_violation(stub: Stub) -> None:
    details = await error_of(reserve(stub, "", {"": 1, "prod_a": 0, "prod_b": 1001}, ttl_seconds=0.5))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "VALIDATION_FAILED"
    assert violations(details) == [
        ("order_id", "REQUIRED"),
        ("items[0].product_id", "REQUIRED"),
        ("items[1].quantity", "OUT_OF_RANGE"),
        ("items[2].quantity", "OUT_OF_RANGE"),
        ("ttl", "OUT_OF_RANGE"),
    ]


async def test_an_empty_id_is_refused_in_every_services_wording(stub: Stub) -> None:
    """An empty id's REQUIRED reads "must not be empty" in every service (contract_limits.id_violations), so a
    client shows it alike whoever refused it; inventory answered "is required"."""
    details = await error_of(reserve(stub, "", {"": 1}))
    assert [(v.field, v.reason, v.description) for v in details.field_violations] == [
        ("order_id", "REQUIRED", "must not be empty"),
        ("items[0].product_id", "REQUIRED", "must not be empty"),
    ]


# Ids no order, reservation or product has: whitespace, a line break, a bidi override, a terminal escape.
# Orders and payments refuse them ("printable characters only"); inventory reserved stock for order "\n\r".
UNPRINTABLE_IDS = [" ", "\n\r", "\u202e", "ord 1", "\x1b[2J"]


async def _stored_rows(database: Any) -> list[tuple[str, ...]]:
    """The id of every stock record and the order id of every reservation, as stored."""
    from sqlalchemy import select

    from shopmesh_inventory.store.tables import reservations
    from shopmesh_inventory.store.tables import stock as stock_table

    async with database.transaction() as session:
        stocked = (await session.execute(select(stock_table.c.product_id))).scalars().all()
        ordered = (await session.execute(select(reservations.c.order_id))).scalars().all()
    return [("stock", p) for p in stocked] + [("reservation", o) for o in ordered]


@pytest.mark.parametrize("bad_id", UNPRINTABLE_IDS)
async def test_reserve_for_an_unprintable_order_id_is_invalid_format_and_holds_nothing(
    stub: Stub, database: Any, bad_id: str
) -> None:
    await set_stock(stub, "prod_a", 5)
    details = await error_of(reserve(stub, bad_id, {"prod_a": 1}))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED")
    assert violations(details) == [("order_id", "INVALID_FORMAT")]
    assert await stock(stub, "prod_a") == (5, 0, 5)
    assert await _stored_rows(database) == [("stock", "prod_a")]


@pytest.mark.parametrize("bad_id", UNPRINTABLE_IDS)
async def test_set_stock_and_get_stock_of_an_unprintable_product_id_are_invalid_format(
    stub: Stub, database: Any, bad_id: str
) -> None:
    details = await error_of(stub.SetStock(inventory_pb2.SetStockRequest(product_id=bad_id, on_hand=3)))
    assert (details.code, violations(details)) == (grpc.StatusCode.INVALID_ARGUMENT, [("product_id", "INVALID_FORMAT")])
    assert await _stored_rows(database) == []
    read = await error_of(stub.GetStock(inventory_pb2.GetStockRequest(product_ids=["prod_a", bad_id])))
    assert (read.code, violations(read)) == (grpc.StatusCode.INVALID_ARGUMENT, [("product_ids[1]", "INVALID_FORMAT")])


async def test_set_stock_of_a_product_id_with_a_comma_is_invalid_format_as_reserve_of_it_is(
    stub: Stub, database: Any
) -> None:
    """Reserve refuses "kit,large" (INSUFFICIENT_STOCK lists ids comma-separated): stock set for it could never
    be reserved, so SetStock refuses it too, and stores nothing."""
    details = await error_of(stub.SetStock(inventory_pb2.SetStockRequest(product_id="kit,large", on_hand=5)))
    assert (details.code, violations(details)) == (grpc.StatusCode.INVALID_ARGUMENT, [("product_id", "INVALID_FORMAT")])
    assert await _stored_rows(database) == []
    refused = await error_of(reserve(stub, "ord_1", {"kit,large": 1}))
    assert (refused.code, violations(refused)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        [("items[0].product_id", "INVALID_FORMAT")],
    )


async def test_reserve_rejects_duplicate_products_too_many_items_and_ttl_over_an_hour(stub: Stub) -> None:
    duplicate = inventory_pb2.ReserveRequest(
        order_id="ord_1",
        items=[inventory_pb2.ReservationItem(product_id="prod_a", quantity=1)] * 2,
    )
    assert violations(await error_of(stub.Reserve(duplicate))) == [("items[1].product_id", "DUPLICATE")]
    too_many = {f"prod_{i}": 1 for i in range(51)}
    assert violations(await error_of(reserve(stub, "ord_1", too_many))) == [("items", "TOO_MANY")]
    assert violations(await error_of(reserve(stub, "ord_1", {}))) == [("items", "REQUIRED")]
    long_ttl = reserve(stub, "ord_1", {"prod_a": 1}, ttl_seconds=3600.5)
    assert violations(await error_of(long_ttl)) == [("ttl", "OUT_OF_RANGE")]


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(0, 1_500_000_000), (5, -500_000_000), (-1, 2_000_000_000)],
    ids=["nanos-beyond-a-second", "signs-differ", "negative-seconds-made-up-by-nanos"],
)
async def test_reserve_rejects_a_ttl_that_is_not_a_valid_duration(stub: Stub, seconds: int, nanos: int) -> None:
    """google.protobuf.Duration: nanos within +-999,999,999 and of the seconds' sign. Read as seconds + nanos,
    these came to 1.5 s, 4.5 s and 1 s, in range, and were reserved with a TTL the caller never wrote."""
    await set_stock(stub, "prod_a", 10)
    request = inventory_pb2.ReserveRequest(
        order_id="ord_1", items=[inventory_pb2.ReservationItem(product_id="prod_a", quantity=1)]
    )
    request.ttl.seconds, request.ttl.nanos = seconds, nanos
    details = await error_of(stub.Reserve(request))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED")
    assert violations(details) == [("ttl", "INVALID_FORMAT")]
    assert await stock(stub, "prod_a") == (10, 0, 10)


async def test_reserve_frees_units_of_expired_unswept_reservations_before_giving_up(
    stub: Stub, clock: FakeClock
) -> None:
    await set_stock(stub, "prod_a", 3)
    stale = await reserve(stub, "ord_1", {"prod_a": 3}, ttl_seconds=5)
    clock.advance(5)
    fresh = await reserve(stub, "ord_2", {"prod_a": 3})
    assert fresh.state == PENDING
    assert (await get_reservation(stub, stale.id)).state == EXPIRED
    assert await stock(stub, "prod_a") == (0, 3, 3)


async def test_reserve_succeeds_when_the_sweeper_frees_the_units_just_after_the_first_hold_failed(
    stub: Stub,
    inventory: Inventory,
    make_inventory: Callable[..., Inventory],
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GetStock already counts the overdue units as available; the periodic sweeper (of this replica or
    # another) records their expiry between Reserve's failed hold and its look for overdue reservations,
    # so Reserve finds nothing left to expire itself. The units are free: Reserve must not refuse.
    await set_stock(stub, "prod_a", 3)
    await reserve(stub, "ord_1", {"prod_a": 3}, ttl_seconds=5)
    clock.advance(5)
    assert await stock(stub, "prod_a") == (3, 0, 3)
    sweeper = make_inventory(clock)
    expire_overdue = inventory._expire_overdue

    async def sweeper_got_there_first(product_ids):  # type: ignore[no-untyped-def]
        assert await sweeper.sweep_expired() == 1
        return await expire_overdue(product_ids)

    monkeypatch.setattr(inventory, "_expire_overdue", sweeper_got_there_first)
    fresh = await reserve(stub, "ord_2", {"prod_a": 3})
    assert fresh.state == PENDING
    assert await stock(stub, "prod_a") == (0, 3, 3)


async def test_reserve_frees_expired_units_of_a_product_that_fell_short_only_on_the_second_try(
    stub: Stub, inventory: Inventory, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both products hold units of overdue, unswept reservations. The first hold is short of prod_a only;
    # while Reserve frees overdue units, another order takes prod_b's one free unit, so the second try is
    # short of prod_b, whose other unit is still held by an overdue reservation: that unit is free too.
    await set_stock(stub, "prod_a", 1)
    await set_stock(stub, "prod_b", 2)
    await reserve(stub, "ord_old_a", {"prod_a": 1}, ttl_seconds=1)
    await reserve(stub, "ord_old_b", {"prod_b": 1}, ttl_seconds=1)
    clock.advance(5)
    expire_overdue = inventory._expire_overdue
    other_order_reserved = False

    async def another_order_takes_the_free_unit(product_ids):  # type: ignore[no-untyped-def]
        nonlocal other_order_reserved
        expired = await expire_overdue(product_ids)
        if product_ids is not None and not other_order_reserved:
            other_order_reserved = True
            await reserve(stub, "ord_other", {"prod_b": 1}, ttl_seconds=60)
        return expired

    monkeypatch.setattr(inventory, "_expire_overdue", another_order_takes_the_free_unit)
    mine = await reserve(stub, "ord_mine", {"prod_a": 1, "prod_b": 1})
    assert mine.state == PENDING
    assert other_order_reserved
    assert await stock(stub, "prod_a") == (0, 1, 1)
    assert await stock(stub, "prod_b") == (0, 2, 2)


# --- CommitReservation --------------------------------------------------------------------------


async def test_commit_moves_the_reserved_units_out_of_stock(stub: Stub, clock: FakeClock) -> None:
    await set_stock(stub, "prod_a", 10)
    await set_stock(stub, "prod_b", 5)
    reservation = await reserve(stub, "ord_1", {"prod_a": 3, "prod_b": 5})
    clock.advance(10)
    committed = await commit(stub, reservation.id)
    assert committed.state == COMMITTED
    assert committed.updated_at.ToDatetime(tzinfo=clock.now.tzinfo) == clock.now
    assert committed.expires_at == reservation.expires_at
    assert await stock(stub, "prod_a") == (7, 0, 7)
    assert await stock(stub, "prod_b") == (0, 0, 0)


async def test_committing_twice_returns_the_committed_reservation_without_further_effect(
    stub: Stub, clock: FakeClock
) -> None:
    await set_stock(stub, "prod_a", 10)
    reservation = await reserve(stub, "ord_1", {"prod_a": 3})
    first = await commit(stub, reservation.id)
    clock.advance(3600)  # long past expires_at: a committed reservation does not expire
    assert await commit(stub, reservation.id) == first
    assert await stock(stub, "prod_a") == (7, 0, 7)


async def test_commit_after_expires_at_fails_as_expired_and_frees_the_units(stub: Stub, clock: FakeClock) -> None:
    await set_stock(stub, "prod_a", 10)
    reservation = await reserve(stub, "ord_1", {"prod_a": 3}, ttl_seconds=30)
    clock.advance(30)
    details = await error_of(commit(stub, reservation.id))
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.reason == "RESERVATION_EXPIRED"
    assert metadata(details) == {"reservation_id": reservation.id}
    expired = await get_reservation(stub, reservation.id)
    assert expired.state == EXPIRED
    assert expired.updated_at == reservation.expires_at
    assert await stock(stub, "prod_a") == (10, 0, 10)
    assert (await error_of(commit(stub, reservation.id))).reason == "RESERVATION_EXPIRED"


async def test_commit_of_a_released_reservation_fails_as_released(stub: Stub) -> None:
    await set_stock(stub, "prod_a", 10)
    reservation = await reserve(stub, "ord_1", {"prod_a": 3})
    await release(stub, reservation.id)
    details = await error_of(commit(stub, reservation.id))
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.reason == "RESERVATION_RELEASED"
    assert metadata(details) == {"reservation_id": reservation.id}
    assert await stock(stub, "prod_a") == (10, 0, 10)


# --- ReleaseReservation -------------------------------------------------------------------------


async def test_release_of_a_pending_reservation_returns_its_units_once(stub: Stub) -> None:
    await set_stock(stub, "prod_a", 10)
    reservation = await reserve(stub, "ord_1", {"prod_a": 4})
    released = await release(stub, reservation.id)
    assert released.state == RELEASED
    assert await stock(stub, "prod_a") == (10, 0, 10)
    assert await release(stub, reservation.id) == released
    assert await stock(stub, "prod_a") == (10, 0, 10)


async def test_release_of_a_committed_reservation_restocks_its_units_once(stub: Stub) -> None:
    await set_stock(stub, "prod_a", 10)
    reservation = await reserve(stub, "ord_1", {"prod_a": 4})
    await commit(stub, reservation.id)
    assert await stock(stub, "prod_a") == (6, 0, 6)
    released = await release(stub, reservation.id)
    assert released.state == RELEASED
    assert await stock(stub, "prod_a") == (10, 0, 10)
    await release(stub, reservation.id)
    assert await stock(stub, "prod_a") == (10, 0, 10)


@BACKENDS
async def test_a_restock_past_the_contracts_maximum_stops_there_and_the_release_completes(stub: Stub) -> None:
    """on_hand is an int32 in the contract, and SetStock may set its maximum while units are out on a
    committed reservation: releasing it must still complete (a cancelled order's compensation)."""
    await set_stock(stub, "prod_a", MAX_ON_HAND)
    reservation = await reserve(stub, "ord_1", {"prod_a": 3})
    await commit(stub, reservation.id)
    await set_stock(stub, "prod_a", MAX_ON_HAND - 1)
    assert (await release(stub, reservation.id)).state == RELEASED
    assert await stock(stub, "prod_a") == (MAX_ON_HAND, 0, MAX_ON_HAND)


async def test_release_of_an_expired_reservation_returns_it_as_expired(stub: Stub, clock: FakeClock) -> None:
    await set_stock(stub, "prod_a", 10)
    reservation = await reserve(stub, "ord_1", {"prod_a": 4}, ttl_seconds=5)
    clock.advance(6)
    released = await release(stub, reservation.id)
    assert released.state == EXPIRED
    assert await release(stub, reservation.id) == released
    assert await stock(stub, "prod_a") == (10, 0, 10)


# --- errors common to the reservation RPCs ------------------------------------------------------


@pytest.mark.parametrize("call", [commit, release, get_reservation])
async def test_unknown_reservation_is_not_found(stub: Stub, call: ReservationCall) -> None:
    details = await error_of(call(stub, "res_missing"))
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert details.reason == "RESERVATION_NOT_FOUND"
    assert metadata(details) == {"reservation_id": "res_missing"}


@pytest.mark.parametrize("call", [commit, release, get_reservation])
@pytest.mark.parametrize(("reservation_id", "reason"), [("", "REQUIRED"), ("r" * 65, "TOO_LONG")])
async def test_reservation_id_must_be_given_and_fit_an_id(
    stub: Stub, call: ReservationCall, reservation_id: str, reason: str
) -> None:
    details = await error_of(call(stub, reservation_id))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "VALIDATION_FAILED"
    assert violations(details) == [("reservation_id", reason)]


@pytest.mark.parametrize("call", [commit, release, get_reservation])
@pytest.mark.parametrize("bad_id", UNPRINTABLE_IDS)
async def test_an_unprintable_reservation_id_is_invalid_format(stub: Stub, call: ReservationCall, bad_id: str) -> None:
    details = await error_of(call(stub, bad_id))
    assert (details.code, violations(details)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        [("reservation_id", "INVALID_FORMAT")],
    )


# --- GetReservation -----------------------------------------------------------------------------


async def test_get_reservation_returns_it_and_reports_a_pending_one_past_expires_at_as_expired(
    stub: Stub, clock: FakeClock
) -> None:
    await set_stock(stub, "prod_a", 10)
    reservation = await reserve(stub, "ord_1", {"prod_a": 1}, ttl_seconds=5)
    assert await get_reservation(stub, reservation.id) == reservation
    clock.advance(5)
    seen = await get_reservation(stub, reservation.id)
    assert seen.state == EXPIRED
    assert seen.updated_at == reservation.expires_at


# --- SetStock -----------------------------------------------------------------------------------


async def test_set_stock_creates_the_record_and_sets_an_absolute_value(stub: Stub) -> None:
    created = await set_stock(stub, "prod_new", 5)
    assert (created.product_id, created.available, created.reserved, created.on_hand) == ("prod_new", 5, 0, 5)
    assert await set_stock(stub, "prod_new", 5) == created
    assert (await set_stock(stub, "prod_new", 0)).on_hand == 0


async def test_set_stock_keeps_reserved_units_and_refuses_to_go_below_them(stub: Stub) -> None:
    await set_stock(stub, "prod_a", 10)
    await reserve(stub, "ord_1", {"prod_a": 4})
    lowered = await set_stock(stub, "prod_a", 4)
    assert (lowered.available, lowered.reserved, lowered.on_hand) == (0, 4, 4)
    details = await error_of(set_stock(stub, "prod_a", 3))
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.reason == "STOCK_BELOW_RESERVED"
    assert metadata(details) == {"product_id": "prod_a", "reserved": "4"}
    assert await stock(stub, "prod_a") == (0, 4, 4)


async def test_set_stock_may_go_below_units_of_expired_reservations(stub: Stub, clock: FakeClock) -> None:
    await set_stock(stub, "prod_a", 10)
    await reserve(stub, "ord_1", {"prod_a": 4}, ttl_seconds=5)
    clock.advance(5)
    lowered = await set_stock(stub, "prod_a", 1)
    assert (lowered.available, lowered.reserved, lowered.on_hand) == (1, 0, 1)


async def test_set_stock_may_go_below_units_the_sweeper_freed_just_after_the_first_attempt_was_refused(
    stub: Stub,
    inventory: Inventory,
    make_inventory: Callable[..., Inventory],
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The periodic sweeper (of this replica or another) records the expiry between SetStock's refused
    # update and its look for overdue reservations: nothing is reserved any more, so no reason to refuse.
    await set_stock(stub, "prod_a", 10)
    await reserve(stub, "ord_1", {"prod_a": 4}, ttl_seconds=5)
    clock.advance(5)
    sweeper = make_inventory(clock)
    expire_overdue = inventory._expire_overdue

    async def sweeper_got_there_first(product_ids):  # type: ignore[no-untyped-def]
        assert await sweeper.sweep_expired() == 1
        return await expire_overdue(product_ids)

    monkeypatch.setattr(inventory, "_expire_overdue", sweeper_got_there_first)
    lowered = await set_stock(stub, "prod_a", 1)
    assert (lowered.available, lowered.reserved, lowered.on_hand) == (1, 0, 1)


async def test_set_stock_rejects_an_empty_product_and_negative_on_hand(stub: Stub) -> None:
    details = await error_of(stub.SetStock(inventory_pb2.SetStockRequest(product_id="", on_hand=-1)))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(details) == [("product_id", "REQUIRED"), ("on_hand", "OUT_OF_RANGE")]


# --- application: sweep and seed ----------------------------------------------------------------


async def test_sweep_records_expiry_of_overdue_reservations_only_and_frees_their_units(
    stub: Stub, inventory: Inventory, clock: FakeClock
) -> None:
    await set_stock(stub, "prod_a", 10)
    short = await reserve(stub, "ord_1", {"prod_a": 2}, ttl_seconds=5)
    long = await reserve(stub, "ord_2", {"prod_a": 3}, ttl_seconds=60)
    committed = await reserve(stub, "ord_3", {"prod_a": 1}, ttl_seconds=5)
    await commit(stub, committed.id)
    clock.advance(5)
    assert await inventory.sweep_expired() == 1
    assert await inventory.sweep_expired() == 0
    assert (await get_reservation(stub, short.id)).state == EXPIRED
    assert (await get_reservation(stub, long.id)).state == PENDING
    assert (await get_reservation(stub, committed.id)).state == COMMITTED
    assert await stock(stub, "prod_a") == (6, 3, 9)


async def test_sweep_works_through_more_overdue_reservations_than_one_batch(
    stub: Stub, make_inventory: Callable[..., Inventory], clock: FakeClock
) -> None:
    await set_stock(stub, "prod_a", 10)
    for n in range(5):
        await reserve(stub, f"ord_{n}", {"prod_a": 1}, ttl_seconds=5)
    clock.advance(5)
    assert await make_inventory(clock, sweep_batch_size=2).sweep_expired() == 5
    assert await stock(stub, "prod_a") == (10, 0, 10)


async def test_seed_creates_missing_stock_records_and_never_overwrites(stub: Stub, inventory: Inventory) -> None:
    await set_stock(stub, "prod_a", 1)
    assert await inventory.seed_stock({"prod_a": 100, "prod_b": 100, "prod_c": 3}) == 2
    assert await inventory.seed_stock({"prod_a": 100, "prod_b": 100, "prod_c": 3}) == 0
    levels = await inventory.get_stock(["prod_a", "prod_b", "prod_c"])
    assert levels == [StockLevel("prod_a", 1, 0), StockLevel("prod_b", 100, 0), StockLevel("prod_c", 3, 0)]


# --- a newer release's values -------------------------------------------------------------------------


async def test_a_reservation_state_a_newer_release_stored_is_read_as_unspecified(stub: Stub, database: Any) -> None:
    """docs/chassis.md ("Migrations are expand-only"): a stored enum value this release does not know (a
    newer release wrote it: a rollout, a canary, a rollback) is read as UNSPECIFIED (`db.stored_enum`).
    Inventory read `state` with ReservationState(...): GetReservation answered INTERNAL for it."""
    from sqlalchemy import update

    from shopmesh_inventory.store.tables import reservations

    await set_stock(stub, "prod_a", 5)
    reserved = await reserve(stub, "ord_1", {"prod_a": 1})
    async with database.transaction() as session:
        await session.execute(update(reservations).where(reservations.c.id == reserved.id).values(state="ON_HOLD"))
    got = await get_reservation(stub, reserved.id)
    assert (got.id, got.state) == (reserved.id, inventory_pb2.RESERVATION_STATE_UNSPECIFIED)


async def _store_state_of_a_newer_release(database: Any, reservation_id: str) -> None:
    from sqlalchemy import update

    from shopmesh_inventory.store.tables import reservations

    async with database.transaction() as session:
        await session.execute(update(reservations).where(reservations.c.id == reservation_id).values(state="ON_HOLD"))


async def _stored_state(database: Any, reservation_id: str) -> str:
    from sqlalchemy import select

    from shopmesh_inventory.store.tables import reservations

    async with database.transaction() as session:
        return str(await session.scalar(select(reservations.c.state).where(reservations.c.id == reservation_id)))


@pytest.mark.parametrize("call", [commit, release], ids=["commit", "release"])
async def test_a_reservation_in_a_state_a_newer_release_stored_is_neither_committed_nor_released(
    stub: Stub, database: Any, call: ReservationCall
) -> None:
    """This release cannot tell where such a reservation's units are: Commit and Release refuse it
    (FAILED_PRECONDITION, not INTERNAL), and its state and the stock stay as the newer release left them."""
    await set_stock(stub, "prod_a", 5)
    reserved = await reserve(stub, "ord_1", {"prod_a": 2})
    await _store_state_of_a_newer_release(database, reserved.id)
    details = await error_of(call(stub, reserved.id))
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_STATE_UNKNOWN")
    assert metadata(details) == {"reservation_id": reserved.id}
    assert await _stored_state(database, reserved.id) == "ON_HOLD"
    assert await stock(stub, "prod_a") == (3, 2, 5)


async def test_a_reservation_in_a_state_a_newer_release_stored_is_never_expired(
    stub: Stub, database: Any, inventory: Inventory, clock: FakeClock
) -> None:
    """Only a PENDING reservation expires: past its expires_at, one in a state this release does not know is
    neither swept nor counted as available again, nor reported EXPIRED."""
    await set_stock(stub, "prod_a", 5)
    reserved = await reserve(stub, "ord_1", {"prod_a": 2}, ttl_seconds=5)
    await _store_state_of_a_newer_release(database, reserved.id)
    clock.advance(5)
    assert await stock(stub, "prod_a") == (3, 2, 5)
    assert await inventory.sweep_expired() == 0
    got = await get_reservation(stub, reserved.id)
    assert (got.id, got.state) == (reserved.id, inventory_pb2.RESERVATION_STATE_UNSPECIFIED)
    assert await _stored_state(database, reserved.id) == "ON_HOLD"
    assert await stock(stub, "prod_a") == (3, 2, 5)


async def test_a_reservation_is_read_while_another_connection_holds_the_write_lock(
    stub: Stub, database: Database
) -> None:
    # GetReservation is orders' look at an in-doubt step: it must not wait for (nor, on the event loop's
    # thread, block behind) a write transaction held elsewhere, as a write transaction of its own did.
    await set_stock(stub, "prod_a", 5)
    reservation = await reserve(stub, "ord_read_1", {"prod_a": 1})
    writer = sqlite3.connect(make_url(database.url).database or "", isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        request = inventory_pb2.GetReservationRequest(reservation_id=reservation.id)
        # A read behind the lock waits out the chassis' 5 s for it and fails: the deadline only bounds it.
        seen = (await stub.GetReservation(request, timeout=10)).reservation
    finally:
        writer.close()
    assert seen.id == reservation.id
