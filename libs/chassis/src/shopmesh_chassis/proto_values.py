"""The contracts' value messages (google.protobuf.Timestamp, shopmesh.common.v1.Money) made from Python values,
one way for every service's servicer and event codec."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from shopmesh.common.v1 import money_pb2


def to_timestamp(instant: datetime) -> Timestamp:
    """`instant` as a Timestamp. An aware datetime is converted to UTC; a naive one is taken as UTC already
    (protobuf's FromDatetime). An optional field left unset (None) is
    the caller's to leave unset: a Timestamp of "no time" does not exist."""
    stamp = Timestamp()
    stamp.FromDatetime(instant)
    return stamp


def to_money(amount_minor: int, currency: str) -> money_pb2.Money:
    return money_pb2.Money(amount_minor=amount_minor, currency=currency)
