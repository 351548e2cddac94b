"""The order state machine and request validation, without I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime

import pytest

from shopmesh_chassis import errors
from shopmesh_chassis.contract_limits import MAX_AMOUNT_MINOR, MAX_ID_LENGTH
from shopmesh_chassis.testing.text_reads import characters_read
from shopmesh_orders.domain.model import (
    CANCEL_MESSAGES,
    Address,
    CancelCode,
    Order,
    OrderLine,
    OrderState,
    SagaStep,
)
from shopmesh_orders.domain.validation import (
    Card,
    CartLine,
    ExpectedTotal,
    PlaceOrder,
    invalid_prices,
    is_sellable_price,
    validate_cancel,
    validate_cancel_reason,
    validate_list_orders,
    validate_order_id,
    validate_place_order,
    validate_totals,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ADDRESS = Address("Ada Lovelace", "1 Analytical Way", "London", "N1 7AA", "GB")
GOOD_CARD = Card("4242424242424242", 12, 2030, "123")


def order() -> Order:
    return Order(
        id="ord_1",
        user_id="usr_1",
        email="ada@example.com",
        currency="USD",
        lines=(OrderLine("prod_a", "A", 2, 1250), OrderLine("prod_b", "B", 1, 500)),
        address=ADDRESS,
        created_at=NOW,
        updated_at=NOW,
    )


def test_total_is_the_sum_of_line_totals() -> None:
    assert order().total_minor == 2 * 1250 + 500


def test_happy_path_walks_reserve_charge_commit_to_confirmed() -> None:
    o = order().reserving(NOW).reserved("res_1", NOW).charging(NOW).charged("pay_1", NOW).committed(NOW)
    assert (o.state, o.step, o.reservation_id, o.payment_id) == (OrderState.CONFIRMED, SagaStep.DONE, "res_1", "pay_1")
    assert o.version == 1  # transitions are values; the store bumps the version when it saves


def test_failure_before_the_pivot_compensates_then_cancels() -> None:
    o = order().reserved("res_1", NOW).failed_before_pivot(CancelCode.CARD_DECLINED, NOW, "pay_x")
    assert o.step is SagaStep.COMPENSATE
    assert o.payment_id == "pay_x"
    done = o.compensated(NOW)
    assert (done.state, done.cancel_code) == (OrderState.CANCELLED, CancelCode.CARD_DECLINED)
    assert done.cancel_message == "Your card was declined."


def test_after_the_pivot_only_reservation_expiry_turns_back() -> None:
    charged = order().reserved("res_1", NOW).charged("pay_1", NOW)
    with pytest.raises(errors.FailedPrecondition):
        charged.failed_before_pivot(CancelCode.CARD_DECLINED, NOW)
    refunding = charged.failed_after_pivot(CancelCode.RESERVATION_EXPIRED, NOW)
    assert refunding.step is SagaStep.REFUND
    assert refunding.refund_done(NOW).compensated(NOW).refunded


def test_a_cancelled_order_whose_charge_was_refunded_never_says_nothing_was_charged() -> None:
    # The reason is decided before the money is seen: payments away (PAYMENT_UNAVAILABLE) while a charge
    # landed after all, found and refunded by compensation or by the later recheck.
    failed = order().reserved("res_1", NOW).failed_before_pivot(CancelCode.PAYMENT_UNAVAILABLE, NOW)
    assert failed.cancel_message.endswith("nothing was charged.")
    refunded = failed.refund_done(NOW).compensated(NOW)
    assert refunded.cancel_message == "Payment could not be processed right now; your payment was refunded."
    rechecked = failed.compensated(NOW, charge_recheck_at=NOW).charge_rechecked(True, NOW)
    assert rechecked.cancel_message == refunded.cancel_message
    unchanged = failed.compensated(NOW, charge_recheck_at=NOW).charge_rechecked(False, NOW)
    assert unchanged.cancel_message == failed.cancel_message
    declined = order().reserved("res_1", NOW).failed_before_pivot(CancelCode.CARD_DECLINED, NOW)
    assert declined.refund_done(NOW).cancel_message == "Your card was declined."


@pytest.mark.parametrize(
    "transition",
    [
        lambda o: o.charged("pay", NOW),
        lambda o: o.committed(NOW),
        lambda o: o.compensated(NOW),
        lambda o: o.failed_after_pivot(CancelCode.RESERVATION_EXPIRED, NOW),
    ],
)
def test_illegal_transitions_are_failed_preconditions(transition: object) -> None:
    with pytest.raises(errors.FailedPrecondition) as caught:
        transition(order())  # type: ignore[operator]
    assert caught.value.reason == "ILLEGAL_SAGA_TRANSITION"


def test_a_second_cancellation_while_the_first_runs_is_refused_as_already_being_cancelled() -> None:
    confirmed = replace(order(), state=OrderState.CONFIRMED, step=SagaStep.DONE)
    cancelling = confirmed.cancellation_requested("changed my mind", NOW)
    with pytest.raises(errors.FailedPrecondition) as caught:
        cancelling.cancellation_requested("changed my mind again", NOW)
    assert caught.value.reason == "ORDER_NOT_CANCELLABLE"
    assert caught.value.metadata["state"] == "ORDER_STATE_CONFIRMED"
    assert "already being cancelled" in str(caught.value)


def test_only_a_confirmed_order_can_be_cancelled_by_the_customer() -> None:
    with pytest.raises(errors.FailedPrecondition) as caught:
        order().cancellation_requested("changed my mind", NOW)
    assert caught.value.reason == "ORDER_NOT_CANCELLABLE"
    assert caught.value.metadata["state"] == "ORDER_STATE_PENDING"
    confirmed = replace(order(), state=OrderState.CONFIRMED, step=SagaStep.DONE)
    requested = confirmed.cancellation_requested("changed my mind", NOW)
    assert (requested.step, requested.cancel_code) == (SagaStep.REFUND, CancelCode.CUSTOMER_REQUESTED)


def command(**changes: object) -> PlaceOrder:
    base = PlaceOrder(
        user_id="usr_1",
        items=(CartLine("prod_a", 2),),
        currency="USD",
        address=ADDRESS,
        email="ada@example.com",
        card=GOOD_CARD,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def violations(cmd: PlaceOrder) -> list[str]:
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_place_order(cmd, date(2026, 11, 25))
    return sorted(v.field for v in caught.value.violations)


def test_a_valid_command_passes() -> None:
    assert validate_place_order(command(), date(2026, 11, 25)) == command()


def test_each_bad_field_gets_its_own_violation() -> None:
    bad = command(
        user_id="",
        items=(CartLine("prod_a", 0), CartLine("prod_a", 101)),
        currency="usd",
        address=Address("", "x", "y", "z", "gb"),
        email="not-an-email",
        card=Card("4242424242424241", 13, 2030, "12"),
    )
    assert violations(bad) == [
        "card.cvv",
        "card.exp_month",
        "card.number",
        "currency",
        "email",
        "items[0].quantity",
        "items[1].product_id",
        "items[1].quantity",
        "shipping_address.country",
        "shipping_address.full_name",
        "user_id",
    ]


def test_an_item_product_id_no_product_can_have_is_refused() -> None:
    """Catalog and inventory name product ids in comma-separated lists: an item "prod_gone,prod_a" read as
    two ids, and prod_a (another line of the order) was taken for missing or short."""
    items = (CartLine("prod_a", 1), CartLine("prod_gone,prod_a", 1), CartLine("prod b", 1))
    caught = invalid(command(items=items))
    assert [(v.field, v.reason) for v in caught.violations] == [
        ("items[1].product_id", "INVALID_FORMAT"),
        ("items[2].product_id", "INVALID_FORMAT"),
    ]


def test_empty_cart_and_missing_card_are_rejected() -> None:
    assert violations(command(items=(), card=None)) == ["card", "items"]


# PlaceOrderRequest.card is "validated as in payments Charge": the same fields, the same reasons, and the same
# ErrorInfo reason when the card is all that is wrong (payments' own tests hold the same table).


def invalid(cmd: PlaceOrder, today: date | None = date(2026, 11, 25)) -> errors.InvalidArgument:
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_place_order(cmd, today)
    return caught.value


def test_every_bad_card_field_is_named_with_the_reason_payments_gives() -> None:
    error = invalid(command(card=Card("123", 13, 30, "12a")))
    assert {v.field: v.reason for v in error.violations} == {
        "card.number": "INVALID_CARD_NUMBER",
        "card.exp_month": "OUT_OF_RANGE",
        "card.exp_year": "OUT_OF_RANGE",
        "card.cvv": "INVALID_FORMAT",
    }
    assert error.reason == "VALIDATION_FAILED"


@pytest.mark.parametrize("number", ["4242424242424241", "4242 4242 4242 4242", "42424242424", ""])
def test_a_bad_card_number_alone_answers_invalid_card_number(number: str) -> None:
    error = invalid(command(card=Card(number, 12, 2030, "123")))
    assert error.reason == "INVALID_CARD_NUMBER"
    assert {v.field: v.reason for v in error.violations} == {"card.number": "INVALID_CARD_NUMBER"}


def test_an_expired_card_answers_card_expired_on_the_year_when_the_year_is_past() -> None:
    error = invalid(command(card=Card("4242424242424242", 12, 2025, "123")))
    assert error.reason == "CARD_EXPIRED"
    assert {v.field: v.reason for v in error.violations} == {"card.exp_year": "CARD_EXPIRED"}


def test_a_card_expired_earlier_this_year_answers_card_expired_on_the_month() -> None:
    error = invalid(command(card=Card("4242424242424242", 10, 2026, "123")))
    assert error.reason == "CARD_EXPIRED"
    assert {v.field: v.reason for v in error.violations} == {"card.exp_month": "CARD_EXPIRED"}


def test_a_card_expiring_this_month_is_accepted() -> None:
    validate_place_order(command(card=Card("4242424242424242", 11, 2026, "123")), date(2026, 11, 25))


def test_a_card_error_beside_another_fields_answers_validation_failed() -> None:
    error = invalid(command(email="nope", card=Card("4242424242424242", 12, 2025, "123")))
    assert error.reason == "VALIDATION_FAILED"


@pytest.mark.parametrize("blank", ["\u200b", " \u200b ", "\ufeff", "\u2060"])
@pytest.mark.parametrize("part", ["full_name", "street", "city", "postal_code"])
def test_an_address_line_of_invisible_characters_only_is_required_as_a_blank_one_is(part: str, blank: str) -> None:
    """The contract's "Recipient's full name, 1-100 characters. Required": "   " is refused, but a value of
    zero-width / format characters only (Unicode category Cf, which str.strip() keeps) prints as nothing on
    the label, and the order was accepted, charged and shipped to it."""
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_place_order(command(address=replace(ADDRESS, **{part: blank})), date(2026, 11, 25))
    assert [(v.field, v.reason) for v in caught.value.violations] == [(f"shipping_address.{part}", "REQUIRED")]


@pytest.mark.parametrize("value", ["Ada\r\nLovelace", "Ada\x1b[2J", "Ada\x08\x08\x08Eve", "Ada\x85Lee"])
@pytest.mark.parametrize("part", ["full_name", "street", "city", "postal_code"])
def test_an_address_line_with_control_characters_is_refused_not_stored(part: str, value: str) -> None:
    """Each address field is one line of a shipping label: a line break, a terminal escape or backspaces in
    it were stored with the order and answered back as given (only U+0000 is refused, by the chassis)."""
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_place_order(command(address=replace(ADDRESS, **{part: value})), date(2026, 11, 25))
    assert [v.field for v in caught.value.violations] == [f"shipping_address.{part}"]


@pytest.mark.parametrize("part", ["full_name", "street", "city", "postal_code"])
def test_an_address_line_longer_than_any_could_be_as_sent_is_refused_without_being_read(
    part: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An address line of a megabyte (what a request may carry) was NFC-normalized and looked up character by
    character before its length was checked, on the event loop; the other lines still are."""
    read = characters_read(monkeypatch)
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_place_order(command(address=replace(ADDRESS, **{part: "a" * 1_000_000})), date(2026, 11, 25))
    assert [(v.field, v.reason) for v in caught.value.violations] == [(f"shipping_address.{part}", "TOO_LONG")]
    # The other lines' few dozen characters, each read a few times; not the million.
    assert read.count < 1_000


def _too_long_place_order(field: str) -> None:
    long_id = "x" * (MAX_ID_LENGTH + 1)
    if field == "user_id":
        validate_place_order(command(user_id=long_id), date(2026, 11, 25))
    elif field == "items[0].product_id":
        validate_place_order(command(items=(CartLine(long_id, 1),)), date(2026, 11, 25))
    else:
        part = field.removeprefix("shipping_address.")
        validate_place_order(command(address=replace(ADDRESS, **{part: "a" * 201})), date(2026, 11, 25))


@pytest.mark.parametrize(
    "field",
    [
        "user_id",
        "items[0].product_id",
        "shipping_address.full_name",
        "shipping_address.street",
        "shipping_address.city",
        "shipping_address.postal_code",
    ],
)
def test_a_place_order_field_over_its_maximum_length_is_too_long_as_in_every_other_service(field: str) -> None:
    """Orders answered INVALID_LENGTH where catalog, users, inventory and the gateway answer TOO_LONG: a client
    branching on the reason needed a second case for one service."""
    with pytest.raises(errors.InvalidArgument) as caught:
        _too_long_place_order(field)
    assert [(v.field, v.reason) for v in caught.value.violations] == [(field, "TOO_LONG")]


def test_an_order_id_user_id_or_cancel_reason_over_its_maximum_length_is_too_long() -> None:
    long_id = "x" * (MAX_ID_LENGTH + 1)
    with pytest.raises(errors.InvalidArgument) as by_id:
        validate_order_id(long_id)
    with pytest.raises(errors.InvalidArgument) as cancelled:
        validate_cancel(long_id, "r" * 501)
    with pytest.raises(errors.InvalidArgument) as listed:
        validate_list_orders(long_id, 0, "")
    found = [(v.field, v.reason) for e in (by_id, cancelled, listed) for v in e.value.violations]
    assert found == [
        ("order_id", "TOO_LONG"),
        ("order_id", "TOO_LONG"),
        ("reason", "TOO_LONG"),
        ("user_id", "TOO_LONG"),
    ]


def test_a_trailing_line_break_is_not_a_valid_email_country_or_currency() -> None:
    # `$` also matches before a final "\n": "ada@example.com\n" would reach notifications, whose e-mail
    # header "To: ada@example.com\n" ends the header block, pushing Subject and Message-ID into the body.
    bad = command(email="ada@example.com\n", currency="USD\n", address=replace(ADDRESS, country="GB\n"))
    assert violations(bad) == ["currency", "email", "shipping_address.country"]


@pytest.mark.parametrize("country", ["ZZ", "XK", "AA", "UK", "EU"])
def test_a_country_code_iso_3166_1_has_not_assigned_is_refused(country: str) -> None:
    # Two upper-case letters passed: user-assigned codes (ZZ, XK, AA) and reserved ones (UK, EU) name no
    # country orders.proto promises to ship to.
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_place_order(command(address=replace(ADDRESS, country=country)), date(2026, 11, 25))
    assert [(v.field, v.reason) for v in caught.value.violations] == [("shipping_address.country", "INVALID_FORMAT")]


@pytest.mark.parametrize("country", ["GB", "DE", "US", "BE", "AX", "SS"])
def test_an_assigned_country_code_is_accepted(country: str) -> None:
    placed = command(address=replace(ADDRESS, country=country))
    assert validate_place_order(placed, date(2026, 11, 25)) == placed


@pytest.mark.parametrize("email", ["root,ada@example.com", "ada@example.com;eve@example.com", "Ada <ada@example.com>"])
def test_an_email_that_a_mail_library_reads_as_several_recipients_is_refused(email: str) -> None:
    # The check was one '@' and a dot: `root,ada@example.com` passed, and the e-mail's To header listed two.
    assert violations(command(email=email)) == ["email"]


def test_totals_beyond_moneys_bound_are_refused_on_the_item_or_the_order() -> None:
    at_most = (OrderLine("prod_a", "A", 1, MAX_AMOUNT_MINOR),)
    assert validate_totals(at_most) == at_most
    with pytest.raises(errors.InvalidArgument) as line:
        validate_totals((OrderLine("prod_a", "A", 1, 1), OrderLine("prod_b", "B", 100, 10**17)))
    assert [v.field for v in line.value.violations] == ["items[1].quantity"]
    with pytest.raises(errors.InvalidArgument) as total:
        validate_totals((OrderLine("prod_a", "A", 1, MAX_AMOUNT_MINOR), OrderLine("prod_b", "B", 1, 1)))
    assert [v.field for v in total.value.violations] == ["items"]


@pytest.mark.parametrize("variable", ["step_timeout_seconds", "saga_lease_seconds"])
def test_a_saga_duration_no_call_or_lease_can_have_is_refused_at_startup(variable: str) -> None:
    """Review finding: the chassis now refuses inf for CLIENT_DEFAULT_TIMEOUT_SECONDS (every outbound call
    failed at once with DEADLINE_EXCEEDED), but STEP_TIMEOUT_SECONDS, the `timeout=` of every saga call, and
    SAGA_LEASE_SECONDS (a timedelta: OverflowError) still take it."""
    from shopmesh_chassis.config import ConfigError, load_settings
    from shopmesh_orders.settings import OrdersSettings

    with pytest.raises(ConfigError, match=variable.upper()):
        load_settings(OrdersSettings, **{variable: float("inf")})


@pytest.mark.parametrize("ttl", [1.0, 5.0])
def test_a_reservation_ttl_within_the_assumed_clock_skew_is_refused_at_startup(ttl: float) -> None:
    """Review finding: within MAX_CLOCK_SKEW of its deadline the saga asks inventory whether the reservation
    still holds before charging, so with RESERVATION_TTL_SECONDS at most that skew (5 s) every PlaceOrder
    asked again. Nothing sets it that low; the minimum is now above it."""
    from shopmesh_chassis.config import ConfigError, load_settings
    from shopmesh_orders.settings import OrdersSettings

    with pytest.raises(ConfigError, match="RESERVATION_TTL_SECONDS"):
        load_settings(OrdersSettings, reservation_ttl_seconds=ttl)
    assert load_settings(OrdersSettings, reservation_ttl_seconds=6.0).reservation_ttl_seconds == 6.0


def test_a_place_order_commands_repr_never_shows_the_card_number_or_cvv() -> None:
    shown = repr(command(card=Card("4242424242424242", 12, 2030, "987")))
    assert "4242424242424242" not in shown
    assert "987" not in shown
    assert "exp_year=2030" in shown


@pytest.mark.parametrize(
    ("expected", "field", "reason"),
    [
        (ExpectedTotal(-1, "USD"), "expected_total.amount_minor", "OUT_OF_RANGE"),
        (ExpectedTotal(10**15, "USD"), "expected_total.amount_minor", "OUT_OF_RANGE"),
        (ExpectedTotal(2500, "usd"), "expected_total.currency", "INVALID_FORMAT"),
        (ExpectedTotal(2500, ""), "expected_total.currency", "INVALID_FORMAT"),
        (ExpectedTotal(2500, "EUR"), "expected_total.currency", "CURRENCY_MISMATCH"),
    ],
)
def test_an_expected_total_that_cannot_be_the_orders_names_its_field(
    expected: ExpectedTotal, field: str, reason: str
) -> None:
    """A total no order of this request could have is the client's mistake, refused as such (INVALID_ARGUMENT
    on the field), not reported as a price change the customer could confirm."""
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_place_order(command(expected_total=expected), date(2026, 11, 25))
    assert [(v.field, v.reason) for v in caught.value.violations] == [(field, reason)]


def test_an_expected_total_in_the_orders_currency_passes_validation() -> None:
    sent = command(expected_total=ExpectedTotal(2500, "USD"))
    assert validate_place_order(sent, date(2026, 11, 25)) == sent


# BEL, ESC (a terminal escape), DEL, a C1 control, the line and paragraph separators, a line break, a tab.
UNPRINTABLE_IN_A_REASON = ["\a", "\x1b[31m", "\x7f", "\x85", "\u2028", "\u2029", "\n", "\r\n", "\t"]


@pytest.mark.parametrize("unprintable", UNPRINTABLE_IN_A_REASON)
def test_a_cancel_reason_with_a_control_character_or_a_line_break_is_refused_naming_the_reason(
    unprintable: str,
) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_cancel_reason(f"too slow{unprintable}Your payment was refunded.")
    assert [(v.field, v.reason) for v in caught.value.violations] == [("reason", "INVALID_CHARACTERS")]


@pytest.mark.parametrize("reason", ["", "  ", "too slow", "Commande annulée : délai trop long 😞", "נמצא זול יותר"])
def test_a_cancel_reason_on_one_line_or_none_at_all_is_accepted(reason: str) -> None:
    validate_cancel_reason(reason)


@pytest.mark.parametrize("user_id", ["alice smith", "usr\t1", "usr_1\u200b", "usr\n1", " usr_1"])
def test_a_user_id_with_whitespace_or_unprintable_characters_is_refused_as_notifications_would_refuse_its_events(
    user_id: str,
) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_place_order(command(user_id=user_id), date(2026, 11, 25))
    assert [(v.field, v.reason) for v in caught.value.violations] == [("user_id", "INVALID_FORMAT")]


@pytest.mark.parametrize(
    ("amount_minor", "currency"),
    [(0, "USD"), (-100, "USD"), (MAX_AMOUNT_MINOR + 1, "USD"), (100, ""), (100, "usd"), (100, "USD\n")],
)
def test_a_price_no_order_can_be_charged_at_is_not_sellable(amount_minor: int, currency: str) -> None:
    assert not is_sellable_price(amount_minor, currency)


@pytest.mark.parametrize(("amount_minor", "currency"), [(1, "USD"), (MAX_AMOUNT_MINOR, "EUR")])
def test_a_price_catalog_could_load_is_sellable(amount_minor: int, currency: str) -> None:
    assert is_sellable_price(amount_minor, currency)


def test_products_without_a_sellable_price_are_refused_as_a_failed_precondition_naming_them() -> None:
    error = invalid_prices(["prod_free", "prod_odd"])
    assert isinstance(error, errors.FailedPrecondition)
    assert (error.reason, error.metadata) == (
        "PRODUCT_PRICE_INVALID",
        {"product_ids": "prod_free,prod_odd", "invalid_count": "2"},
    )


def test_a_charge_request_payments_rejected_tells_the_customer_nothing_about_their_card() -> None:
    """The shopper reads this message (PlaceOrder's answer, the order, the cancellation e-mail): a fault on our
    side must not send them to their bank. Refunded later, it says so, as orders' other reasons do."""
    cancelled = order().reserved("res_1", NOW).failed_before_pivot(CancelCode.PAYMENT_REQUEST_REJECTED, NOW)
    message = CANCEL_MESSAGES[CancelCode.PAYMENT_REQUEST_REJECTED]
    assert cancelled.cancel_message == message
    assert "card" not in message.lower()
    assert cancelled.refund_done(NOW).cancel_message.endswith("; your payment was refunded.")
