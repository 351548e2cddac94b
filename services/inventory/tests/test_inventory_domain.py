"""The inventory domain without I/O: validation, the reservation state machine, stock arithmetic."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from shopmesh_chassis.errors import FailedPrecondition, InvalidArgument
from shopmesh_inventory.domain import reservations as rules
from shopmesh_inventory.domain import validation
from shopmesh_inventory.domain.models import Reservation, ReservationItem, ReservationState, StockLevel

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
P, C, R, E = (
    ReservationState.PENDING,
    ReservationState.COMMITTED,
    ReservationState.RELEASED,
    ReservationState.EXPIRED,
)


def item(product_id: str = "prod_a", quantity: int = 1) -> ReservationItem:
    return ReservationItem(product_id, quantity)


def reservation(state: ReservationState = P, *, ttl: float = 60) -> Reservation:
    return Reservation(
        id="res_1",
        order_id="ord_1",
        items=(item("prod_a", 2), item("prod_b", 1)),
        state=state,
        created_at=NOW,
        expires_at=NOW + timedelta(seconds=ttl),
        updated_at=NOW,
    )


def violations_of(error: InvalidArgument) -> list[tuple[str, str]]:
    return [(v.field, v.reason) for v in error.violations]


# --- validation ---------------------------------------------------------------------------------


def test_reserve_command_sorts_items_and_defaults_ttl_to_15_minutes() -> None:
    command = validation.reserve_command("ord_1", [item("prod_b"), item("prod_a", 3)], None)
    assert command.items == (item("prod_a", 3), item("prod_b"))
    assert command.ttl == timedelta(minutes=15)


@pytest.mark.parametrize("seconds", [1.0, 1.5, 3600.0])
def test_reserve_accepts_ttl_from_one_second_to_one_hour(seconds: float) -> None:
    assert validation.reserve_command("ord_1", [item()], seconds).ttl == timedelta(seconds=seconds)


@pytest.mark.parametrize("seconds", [0.0, 0.999, -5.0, 3600.001, 1e15])
def test_reserve_rejects_ttl_outside_one_second_to_one_hour(seconds: float) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validation.reserve_command("ord_1", [item()], seconds)
    assert violations_of(caught.value) == [("ttl", "OUT_OF_RANGE")]
    assert caught.value.reason == "VALIDATION_FAILED"


def test_reserve_reports_every_bad_field_at_once() -> None:
    items = [item("", 1), item("prod_a", 0), item("prod_a", 1001), item("x" * 65, 5)]
    with pytest.raises(InvalidArgument) as caught:
        validation.reserve_command("", items, None)
    assert violations_of(caught.value) == [
        ("order_id", "REQUIRED"),
        ("items[0].product_id", "REQUIRED"),
        ("items[1].quantity", "OUT_OF_RANGE"),
        ("items[2].product_id", "DUPLICATE"),
        ("items[2].quantity", "OUT_OF_RANGE"),
        ("items[3].product_id", "TOO_LONG"),
    ]


def test_reserve_requires_items_and_allows_at_most_fifty() -> None:
    with pytest.raises(InvalidArgument) as none:
        validation.reserve_command("ord_1", [], None)
    assert violations_of(none.value) == [("items", "REQUIRED")]
    with pytest.raises(InvalidArgument) as too_many:
        validation.reserve_command("ord_1", [item(f"prod_{i}") for i in range(51)], None)
    assert violations_of(too_many.value) == [("items", "TOO_MANY")]
    assert len(validation.reserve_command("ord_1", [item(f"prod_{i}") for i in range(50)], None).items) == 50


def test_reserve_accepts_ids_of_64_characters_and_quantities_of_1_and_1000() -> None:
    command = validation.reserve_command("o" * 64, [item("p" * 64, 1000), item("prod_b", 1)], None)
    assert command.order_id == "o" * 64


def test_stock_query_allows_duplicates_and_keeps_request_order() -> None:
    assert validation.stock_query(["prod_b", "prod_a", "prod_b"]) == ("prod_b", "prod_a", "prod_b")


def test_stock_query_rejects_no_ids_too_many_ids_and_empty_ids() -> None:
    with pytest.raises(InvalidArgument) as none:
        validation.stock_query([])
    assert violations_of(none.value) == [("product_ids", "REQUIRED")]
    with pytest.raises(InvalidArgument) as too_many:
        validation.stock_query(["prod_a"] * 101)
    assert violations_of(too_many.value) == [("product_ids", "TOO_MANY")]
    with pytest.raises(InvalidArgument) as empty:
        validation.stock_query(["prod_a", "", "x" * 65])
    assert violations_of(empty.value) == [("product_ids[1]", "REQUIRED"), ("product_ids[2]", "TOO_LONG")]


def test_a_reserved_product_id_no_product_can_have_is_refused() -> None:
    """INSUFFICIENT_STOCK names the short products comma-separated: a reservation of "prod_x,prod_a" read as
    two ids, and the caller took prod_a (another line) for short."""
    items = [ReservationItem("prod_a", 1), ReservationItem("prod_x,prod_a", 1), ReservationItem("prod b", 1)]
    with pytest.raises(InvalidArgument) as caught:
        validation.reserve_command("ord_1", items, None)
    assert [(v.field, v.reason) for v in caught.value.violations] == [
        ("items[1].product_id", "INVALID_FORMAT"),
        ("items[2].product_id", "INVALID_FORMAT"),
    ]


def test_reservation_id_is_required_and_at_most_64_characters() -> None:
    assert validation.reservation_id("res_1") == "res_1"
    for bad, reason in [("", "REQUIRED"), ("r" * 65, "TOO_LONG")]:
        with pytest.raises(InvalidArgument) as caught:
            validation.reservation_id(bad)
        assert violations_of(caught.value) == [("reservation_id", reason)]


def test_set_stock_rejects_empty_product_and_negative_on_hand() -> None:
    assert validation.set_stock_command("prod_a", 0).on_hand == 0
    with pytest.raises(InvalidArgument) as caught:
        validation.set_stock_command("", -1)
    assert violations_of(caught.value) == [("product_id", "REQUIRED"), ("on_hand", "OUT_OF_RANGE")]


def test_set_stock_refuses_a_product_id_reserve_refuses() -> None:
    """Stock set for "kit,large" could never be reserved: Reserve refuses an id with a comma (INVALID_FORMAT),
    for INSUFFICIENT_STOCK lists ids comma-separated. SetStock holds the id to the same rule."""
    for bad in ("kit,large", "kit, large"):
        with pytest.raises(InvalidArgument) as reserved:
            validation.reserve_command("ord_1", [ReservationItem(bad, 1)], None)
        with pytest.raises(InvalidArgument) as set_:
            validation.set_stock_command(bad, 5)
        assert violations_of(reserved.value) == [("items[0].product_id", "INVALID_FORMAT")]
        assert violations_of(set_.value) == [("product_id", "INVALID_FORMAT")]
        assert set_.value.violations[0].description == reserved.value.violations[0].description


# --- stock levels -------------------------------------------------------------------------------


def test_available_is_on_hand_minus_reserved_never_negative() -> None:
    assert StockLevel("prod_a", on_hand=10, reserved=4).available == 6
    assert StockLevel("prod_a", on_hand=1, reserved=4).available == 0
    assert StockLevel.empty("prod_x") == StockLevel("prod_x", 0, 0)


def test_units_of_overdue_reservations_count_as_available() -> None:
    assert StockLevel("prod_a", on_hand=10, reserved=4).releasing(3) == StockLevel("prod_a", 10, 1)


# --- reservations -------------------------------------------------------------------------------


def test_new_reservation_is_pending_until_created_at_plus_ttl() -> None:
    command = validation.reserve_command("ord_1", [item()], 30)
    created = rules.new_reservation(command, "res_1", NOW)
    assert created.state is P
    assert created.expires_at == NOW + timedelta(seconds=30)
    assert created.created_at == created.updated_at == NOW


def test_minted_reservation_ids_are_prefixed_unique_and_fit_an_id_field() -> None:
    ids = {rules.mint_reservation_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("res_") and len(i) <= 64 for i in ids)


def test_pending_reservation_past_expires_at_is_seen_as_expired_at_expires_at() -> None:
    pending = reservation(ttl=10)
    assert pending.as_seen_at(NOW + timedelta(seconds=9)) is pending
    seen = pending.as_seen_at(NOW + timedelta(seconds=10))
    assert seen.state is E
    assert seen.updated_at == pending.expires_at


@pytest.mark.parametrize("state", [C, R, E, ReservationState.UNSPECIFIED])
def test_only_pending_reservations_become_overdue(state: ReservationState) -> None:
    assert not reservation(state, ttl=1).is_overdue(NOW + timedelta(hours=1))


def test_commit_of_pending_moves_units_out_of_on_hand_and_reserved() -> None:
    plan = rules.plan_commit(reservation(P), NOW)
    assert plan == rules.Plan(rules.COMMIT)
    assert rules.COMMIT.effect == rules.StockEffect(on_hand=-1, reserved=-1)


def test_commit_of_committed_changes_nothing() -> None:
    assert rules.plan_commit(reservation(C), NOW) == rules.Plan()


@pytest.mark.parametrize(("state", "reason"), [(E, "RESERVATION_EXPIRED"), (R, "RESERVATION_RELEASED")])
def test_commit_of_expired_or_released_fails_with_its_reason(state: ReservationState, reason: str) -> None:
    plan = rules.plan_commit(reservation(state), NOW)
    assert plan.transition is None
    assert isinstance(plan.failure, FailedPrecondition)
    assert plan.failure.reason == reason
    assert plan.failure.metadata == {"reservation_id": "res_1"}


@pytest.mark.parametrize("plan", [rules.plan_commit, rules.plan_release], ids=["commit", "release"])
def test_a_state_a_newer_release_stored_is_neither_committed_nor_released_even_past_expiry(
    plan: Callable[[Reservation, datetime], rules.Plan],
) -> None:
    for now in (NOW, NOW + timedelta(hours=1)):
        planned = plan(reservation(ReservationState.UNSPECIFIED), now)
        assert planned.transition is None
        assert isinstance(planned.failure, FailedPrecondition)
        assert (planned.failure.reason, planned.failure.metadata) == (
            "RESERVATION_STATE_UNKNOWN",
            {"reservation_id": "res_1"},
        )


def test_commit_of_overdue_pending_records_the_expiry_then_fails() -> None:
    plan = rules.plan_commit(reservation(P, ttl=5), NOW + timedelta(seconds=5))
    assert plan.transition is rules.EXPIRE
    assert plan.failure is not None
    assert plan.failure.reason == "RESERVATION_EXPIRED"


@pytest.mark.parametrize(
    ("state", "transition"),
    [(P, rules.RELEASE), (C, rules.RESTOCK), (R, None), (E, None)],
)
def test_release_never_fails_and_restocks_committed_units(
    state: ReservationState, transition: rules.Transition | None
) -> None:
    assert rules.plan_release(reservation(state), NOW) == rules.Plan(transition)


def test_release_effects_free_reserved_units_or_restock_committed_ones() -> None:
    assert rules.RELEASE.effect == rules.StockEffect(on_hand=0, reserved=-1)
    assert rules.RESTOCK.effect == rules.StockEffect(on_hand=+1, reserved=0)
    assert rules.EXPIRE.effect == rules.StockEffect(on_hand=0, reserved=-1)


def test_release_of_overdue_pending_records_it_as_expired() -> None:
    assert rules.plan_release(reservation(P, ttl=5), NOW + timedelta(seconds=6)) == rules.Plan(rules.EXPIRE)


def test_sweep_expires_only_overdue_pending_reservations() -> None:
    later = NOW + timedelta(seconds=61)
    assert rules.plan_expiry(reservation(P, ttl=60), later) == rules.Plan(rules.EXPIRE)
    assert rules.plan_expiry(reservation(P, ttl=120), later) == rules.Plan()
    assert rules.plan_expiry(reservation(C, ttl=60), later) == rules.Plan()
    assert rules.plan_expiry(reservation(ReservationState.UNSPECIFIED, ttl=60), later) == rules.Plan()


def test_applied_transition_sets_state_and_dates_expiry_at_expires_at() -> None:
    later = NOW + timedelta(seconds=100)
    committed = rules.applied(reservation(P), rules.COMMIT, later)
    assert (committed.state, committed.updated_at) == (C, later)
    expired = rules.applied(reservation(P, ttl=60), rules.EXPIRE, later)
    assert (expired.state, expired.updated_at) == (E, NOW + timedelta(seconds=60))
    assert expired.expires_at == NOW + timedelta(seconds=60)


def test_a_transition_does_not_apply_outside_its_source_state() -> None:
    with pytest.raises(ValueError, match="commit does not apply to a RELEASED reservation"):
        rules.applied(reservation(R), rules.COMMIT, NOW)


def test_repeated_reserve_with_same_items_in_any_order_returns_existing_whatever_its_state() -> None:
    existing = reservation(R)
    command = validation.reserve_command("ord_1", [item("prod_b", 1), item("prod_a", 2)], 5)
    assert rules.replayed(existing, command, NOW) is existing


def test_repeated_reserve_with_different_items_reuses_the_order_id() -> None:
    command = validation.reserve_command("ord_1", [item("prod_a", 3)], None)
    with pytest.raises(InvalidArgument) as caught:
        rules.replayed(reservation(P), command, NOW)
    assert caught.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert caught.value.metadata == {"order_id": "ord_1", "reservation_id": "res_1"}


def test_insufficient_stock_lists_each_short_product_once_sorted() -> None:
    error = rules.insufficient_stock(["prod_b", "prod_a", "prod_b"])
    assert error.reason == "INSUFFICIENT_STOCK"
    assert error.metadata == {"product_ids": "prod_a,prod_b", "short_count": "2"}


def test_stock_below_reserved_names_product_and_reserved_units() -> None:
    error = rules.stock_below_reserved("prod_a", 7)
    assert (error.reason, error.metadata) == ("STOCK_BELOW_RESERVED", {"product_id": "prod_a", "reserved": "7"})


def test_insufficient_stock_of_many_long_ids_names_only_whole_ids_in_the_status_a_client_gets() -> None:
    """Review finding: the chassis now cuts any ErrorInfo value past 1,024 characters and ends it with "…".
    INSUFFICIENT_STOCK lists every short product id (up to 50 of 64 characters, 3,249 characters), so the
    client's comma-separated list ended in a truncated id that names no product. Catalog's NOT_FOUND was
    changed to list only whole ids (with a count); inventory's sibling list was not."""
    from google.rpc import error_details_pb2

    from shopmesh_chassis.grpc_errors import to_rpc_status

    ids = [f"prod_{i:02d}_".ljust(64, "x") for i in range(50)]
    status = to_rpc_status(rules.insufficient_stock(ids), "shopmesh.inventory")
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    listed = info.metadata["product_ids"].split(",")
    assert listed, "no product named"
    assert set(listed) <= set(ids), f"not a requested id: {[p for p in listed if p not in ids]}"
