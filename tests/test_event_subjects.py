"""The event subjects each service publishes and consumes are the topology's (shopmesh_platform.topology).

A service types its subjects itself, since services import neither each other nor the launcher's topology;
this system test (which may import every service) keeps those copies equal to the one declaration, so a
subject renamed in one place fails here instead of an event silently reaching no consumer."""

from __future__ import annotations

import pytest

import shopmesh_notifications.codec
import shopmesh_notifications.wiring
import shopmesh_orders.saga
import shopmesh_orders.wiring
import shopmesh_payments.event_messages
import shopmesh_recommendations.order_events
from shopmesh_platform.topology import SERVICES, STREAMS

# What each service's code publishes (the subjects it writes to its outbox) and consumes (the subjects its
# durable consumer filters on).
PUBLISHED: dict[str, set[str]] = {
    "orders": {shopmesh_orders.saga.ORDER_CONFIRMED, shopmesh_orders.saga.ORDER_CANCELLED},
    "payments": {
        shopmesh_payments.event_messages.PAYMENT_CAPTURED,
        shopmesh_payments.event_messages.PAYMENT_REFUNDED,
    },
}
CONSUMED: dict[str, set[str]] = {
    "notifications": set(shopmesh_notifications.codec.SUBJECTS),
    "recommendations": set(shopmesh_recommendations.order_events.SUBJECTS),
}
# The stream each service declares (whoever starts first creates it): name -> subjects.
DECLARED_STREAMS: dict[str, tuple[str, list[str]]] = {
    "orders": (shopmesh_orders.wiring.STREAM, list(shopmesh_orders.wiring.SUBJECTS)),
    "payments": (shopmesh_payments.event_messages.STREAM, list(shopmesh_payments.event_messages.STREAM_SUBJECTS)),
    "notifications": (shopmesh_notifications.wiring.STREAM, list(shopmesh_notifications.wiring.STREAM_SUBJECTS)),
    "recommendations": (
        shopmesh_recommendations.order_events.STREAM,
        list(shopmesh_recommendations.order_events.STREAM_SUBJECTS),
    ),
}


@pytest.mark.parametrize("name", list(SERVICES))
def test_a_service_publishes_exactly_the_subjects_the_topology_says(name: str) -> None:
    assert PUBLISHED.get(name, set()) == set(SERVICES[name].publishes)


@pytest.mark.parametrize("name", list(SERVICES))
def test_a_service_consumes_exactly_the_subjects_the_topology_says(name: str) -> None:
    assert CONSUMED.get(name, set()) == set(SERVICES[name].consumes)


@pytest.mark.parametrize("name", sorted(DECLARED_STREAMS))
def test_a_service_declares_its_stream_as_the_topology_does(name: str) -> None:
    stream, subjects = DECLARED_STREAMS[name]
    assert stream in STREAMS, f"{name} declares stream {stream}, which the topology does not have"
    assert tuple(subjects) == STREAMS[stream]


def test_every_subject_published_or_consumed_falls_in_a_declared_stream() -> None:
    # A subject outside every stream is published into nothing: JetStream refuses it.
    prefixes = {pattern.removesuffix(">") for patterns in STREAMS.values() for pattern in patterns}
    subjects = set().union(*PUBLISHED.values(), *CONSUMED.values())
    assert {subject for subject in subjects if not any(subject.startswith(p) for p in prefixes)} == set()
