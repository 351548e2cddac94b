"""The chassis' one way to make the contracts' Timestamp and Money, which every servicer and event codec uses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from shopmesh_chassis.proto_values import to_money, to_timestamp


def test_to_timestamp_takes_a_naive_datetime_as_utc_and_converts_an_aware_one() -> None:
    naive = to_timestamp(datetime(2026, 12, 6, 12, 0, 0, 250_000))
    aware = to_timestamp(datetime(2026, 12, 6, 14, 0, 0, 250_000, tzinfo=timezone(timedelta(hours=2))))
    expected = int(datetime(2026, 12, 6, 12, 0, tzinfo=UTC).timestamp())
    assert (naive.seconds, naive.nanos) == (expected, 250_000_000)
    assert (aware.seconds, aware.nanos) == (expected, 250_000_000)


def test_to_money_carries_the_minor_units_and_the_currency() -> None:
    money = to_money(1999, "EUR")
    assert (money.amount_minor, money.currency) == (1999, "EUR")
