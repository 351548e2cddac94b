"""`grpc_errors.relayed` / `relaying`: what a server relaying a dependency's answers (the gateway) raises for a
failed call to it, without a server: the dependency's status replayed unchanged, UNAVAILABLE for a failure no
dependency reported, or the error itself."""

from __future__ import annotations

import grpc
import pytest
from grpc.aio import Metadata

from shopmesh_chassis import errors
from shopmesh_chassis.grpc_errors import (
    MAX_DEPENDENCY_RETRY_AFTER_SECONDS,
    RETRIED_ANSWER,
    answered_shed,
    relayed,
    relaying,
    to_rpc_status,
)


def rpc_error(
    code: grpc.StatusCode, error: errors.DomainError | None, domain: str, *, retried: bool = False
) -> grpc.aio.AioRpcError:
    """A failed call's error as the channel raises it; `retried`: answered to a retry attempt (its marker)."""
    trailing = Metadata()
    if retried:
        trailing.add(RETRIED_ANSWER, "1")
    if error is not None:
        status = to_rpc_status(error, domain)
        status.code = code.value[0]
        trailing.add("grpc-status-details-bin", status.SerializeToString())
    return grpc.aio.AioRpcError(code, Metadata(), trailing, details="failed")


def test_a_dependencys_error_is_replayed_unchanged() -> None:
    declined = rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        errors.FailedPrecondition("declined", reason="CARD_DECLINED", metadata={"order_id": "ord_1"}),
        "shopmesh.orders",
    )
    replayed = relayed("orders", declined)
    assert isinstance(replayed, errors.ReplayedError)
    assert replayed.status == dict(declined.trailing_metadata())["grpc-status-details-bin"]


def test_a_dependency_that_reported_unavailable_itself_is_passed_through() -> None:
    busy = rpc_error(
        grpc.StatusCode.UNAVAILABLE,
        errors.Unavailable("payments down", reason="DEPENDENCY_UNAVAILABLE", retry_after_seconds=2),
        "shopmesh.orders",
    )
    assert isinstance(relayed("orders", busy), errors.ReplayedError)


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED],
)
def test_a_failure_no_dependency_reported_is_the_relays_dependency_unavailable(code: grpc.StatusCode) -> None:
    answer = relayed("catalog", rpc_error(code, None, ""))
    assert isinstance(answer, errors.Unavailable)
    assert (answer.reason, answer.metadata, answer.domain) == (
        "DEPENDENCY_UNAVAILABLE",
        {"dependency": "catalog"},
        None,
    )
    assert answer.retry_after_seconds == 1.0


def test_an_open_circuit_of_the_relays_own_channel_is_its_dependency_unavailable() -> None:
    circuit_open = rpc_error(
        grpc.StatusCode.UNAVAILABLE,
        errors.Unavailable("circuit open", reason="CIRCUIT_OPEN", retry_after_seconds=3.5),
        "shopmesh.chassis",
    )
    answer = relayed("catalog", circuit_open)
    assert isinstance(answer, errors.Unavailable)
    assert (answer.reason, answer.retry_after_seconds) == ("DEPENDENCY_UNAVAILABLE", 3.5)


@pytest.mark.parametrize(("asked", "passed_on"), [(0.2, 1.0), (3600, MAX_DEPENDENCY_RETRY_AFTER_SECONDS)])
def test_a_wait_the_relay_passes_on_is_at_least_the_default_and_at_most_the_bound(
    asked: float, passed_on: float
) -> None:
    """Through dependency_unavailable, as every service's: a circuit's last 0.2 s is about that breaker, not
    the chain a retry goes through, and an hour would keep clients away for that long."""
    circuit_open = rpc_error(
        grpc.StatusCode.UNAVAILABLE,
        errors.Unavailable("circuit open", reason="CIRCUIT_OPEN", retry_after_seconds=asked),
        "shopmesh.chassis",
    )
    answer = relayed("catalog", circuit_open)
    assert isinstance(answer, errors.Unavailable)
    assert answer.retry_after_seconds == pytest.approx(passed_on)


def test_an_undocumented_status_without_details_is_left_to_the_server_interceptor() -> None:
    broken = rpc_error(grpc.StatusCode.INTERNAL, None, "")
    with pytest.raises(grpc.aio.AioRpcError) as caught, relaying("catalog"):
        raise broken
    assert caught.value is broken


def test_unimplemented_is_the_dependency_unavailable_only_for_a_method_its_older_releases_lack() -> None:
    """A method newer than some of the dependency's pods (a rollout, a rollback): their "Method not found!" is
    the dependency not serving it yet. A method every release has, missing, stays a fault."""
    missing = rpc_error(grpc.StatusCode.UNIMPLEMENTED, None, "")
    answer = relayed("users", missing, method_is_new=True)
    assert isinstance(answer, errors.Unavailable)
    assert (answer.reason, answer.metadata, answer.retry_after_seconds) == (
        "DEPENDENCY_UNAVAILABLE",
        {"dependency": "users"},
        1.0,
    )
    assert relayed("users", missing) is missing


def test_a_relayed_server_overloaded_without_the_shed_marker_counts_shed() -> None:
    """A dependency of a release before the shopmesh-shed marker sheds with RESOURCE_EXHAUSTED SERVER_OVERLOADED
    and no marker: during a rollout the relay still counts it shed, as it did before the marker."""
    overloaded = rpc_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        errors.ResourceExhausted("server overloaded", reason=errors.SERVER_OVERLOADED, retry_after_seconds=0.1),
        "shopmesh.catalog",
    )
    assert not answered_shed(overloaded)
    answer = relayed("catalog", overloaded)
    assert isinstance(answer, errors.ReplayedError)
    assert answer.shed


def test_a_relayed_rate_limit_without_the_shed_marker_is_not_shed() -> None:
    limited = rpc_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        errors.ResourceExhausted("slow down", reason="RATE_LIMITED", retry_after_seconds=1),
        "shopmesh.gateway",
    )
    answer = relayed("gateway", limited)
    assert isinstance(answer, errors.ReplayedError)
    assert not answer.shed


@pytest.mark.parametrize(
    ("code", "retried", "spent"),
    [
        (grpc.StatusCode.UNAVAILABLE, True, True),
        (grpc.StatusCode.UNAVAILABLE, False, False),
        (grpc.StatusCode.NOT_FOUND, True, False),
    ],
    ids=["transient-after-retries", "transient-first-attempt", "not-transient-after-retries"],
)
def test_a_relayed_transient_answer_to_a_retry_attempt_has_its_retries_spent(
    code: grpc.StatusCode, retried: bool, spent: bool
) -> None:
    """Whatever its reason: catalog's DATABASE_UNAVAILABLE, which the relay's channel retried, goes out "do not
    retry" as a DEPENDENCY_UNAVAILABLE does. A first attempt's answer is still the caller's to retry (no layer
    below did), and "do not retry" means nothing for a status no channel retries."""
    failed = rpc_error(
        code,
        errors.Unavailable("database unavailable", reason="DATABASE_UNAVAILABLE", retry_after_seconds=0.5),
        "shopmesh.catalog",
        retried=retried,
    )
    answer = relayed("catalog", failed)
    assert isinstance(answer, errors.ReplayedError)
    assert (answer.retries_spent, answer.final) == (spent, False)
