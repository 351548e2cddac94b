"""Why every shopmesh error is trailers-only, shown with a real Envoy (the proxy of the local mesh, and of
Istio's sidecars).

The rule (docs/contracts.md, shopmesh_chassis.grpc_errors): a service answers an error by aborting before it
sends response headers, so the grpc-status travels in the only HEADERS frame of the response. That frame is
what a mesh's proxy decides on. Istio's default retry policy has Envoy retry `unavailable` (its gRPC
retry-on) on another host (the previous-hosts predicate); a DestinationRule's outlierDetection has Envoy
eject a host after consecutive 5xx, which for gRPC Envoy derives from the grpc-status in the response
headers (UNAVAILABLE counts as 503). Both work only when the status is in those headers.

Here chassis servers of the sample service run in this process behind one Envoy 1.40 of our own (a static
bootstrap: round robin over plaintext HTTP/2), one answering OK and one answering UNAVAILABLE through the
chassis' own error mapping. Trailers-only, Envoy ejects the failing instance, and retries its calls on the
other. The control is the same error sent after response headers: it reaches the client as it is. By the
time Envoy reads the status in the trailers it has forwarded the headers, so it does not retry (Envoy's
router documents that a gRPC status in trailers never triggers a retry), and its outlier detector has
counted the call a success (the router maps grpc-status to an HTTP code for outlier detection from the
response headers only), although Envoy did read the trailers: the host's rq_error counts every one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from shopmesh.sample.v1 import sample_pb2, sample_pb2_grpc
from shopmesh_chassis import errors
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_chassis.testing import eventually

from .envoykit import Backend, Mesh

if TYPE_CHECKING:
    from shopmesh.sample.v1.sample_pb2_grpc import SampleServiceAsyncStub

DOWN = "INSTANCE_DOWN"
# The response header the control backend sends before its error.
SENT_FIRST = "x-sent-before-the-error"
CALLS = 20

CONSECUTIVE_5XX = 3
# A DestinationRule's outlierDetection counting 5xx as Envoy gets it: eject a host after 3 consecutive 5xx, for
# longer than the test lasts; at most one host of the two. (The charts' own counts a pod's transport failures
# only, never the statuses it answers: test_outlier_detection.py.)
OUTLIER_DETECTION: dict[str, Any] = {
    "consecutive_5xx": CONSECUTIVE_5XX,
    "interval": "1s",
    "base_ejection_time": "30s",
    "max_ejection_percent": 50,
}
# Istio's default retry policy as Envoy gets it (retry_on also has connect-failure, refused-stream, cancelled
# and retriable-status-codes there, and 2 retries), narrowed to what is under test: UNAVAILABLE, retried once,
# on a host not tried yet.
RETRY_UNAVAILABLE_ELSEWHERE: dict[str, Any] = {
    "retry_on": "unavailable",
    "num_retries": 1,
    "retry_host_predicate": [
        {
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
            },
        }
    ],
    "host_selection_retry_max_attempts": 5,
}


class DownTrailersOnly(Backend):
    """An instance that cannot answer now: it raises the chassis' Unavailable, which the chassis' interceptor
    turns into an abort before anything was sent, a trailers-only UNAVAILABLE."""

    async def answer(self, request: sample_pb2.EchoRequest, context: Any) -> sample_pb2.EchoResponse:
        raise errors.Unavailable("this instance cannot answer now", reason=DOWN, retry_after_seconds=0.1)


class DownAfterHeaders(Backend):
    """The control: the same error, raised after the handler sent response headers. The chassis maps it just
    the same, but the status can only follow the headers, in the trailers."""

    async def answer(self, request: sample_pb2.EchoRequest, context: Any) -> sample_pb2.EchoResponse:
        await context.send_initial_metadata(((SENT_FIRST, "1"),))
        raise errors.Unavailable("this instance cannot answer now", reason=DOWN, retry_after_seconds=0.1)


@dataclass(frozen=True)
class Answer:
    """What the client saw of one call through Envoy."""

    code: grpc.StatusCode
    # ErrorInfo.reason of an error (the chassis' mapping, through Envoy); None for OK.
    reason: str | None
    # The response headers that came before the status (initial metadata); none for a trailers-only error.
    headers: tuple[str, ...]


async def echo(stub: SampleServiceAsyncStub) -> Answer:
    call = stub.Echo(sample_pb2.EchoRequest(message="hello"), timeout=5)
    code, reason = grpc.StatusCode.OK, None
    try:
        await call
    except grpc.aio.AioRpcError as error:
        code, reason = error.code(), details_of(error).reason
    return Answer(code, reason, tuple(key for key, _ in await call.initial_metadata()))


async def echo_calls(address: str, count: int) -> list[Answer]:
    """`count` Echo calls one after the other through a plain channel: no retries of the client's own, so every
    retry is Envoy's."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = sample_pb2_grpc.SampleServiceStub(channel)
        return [await echo(stub) for _ in range(count)]


async def test_outlier_detection_ejects_a_backend_whose_errors_are_trailers_only(mesh: Mesh) -> None:
    good, down = Backend(), DownTrailersOnly()
    envoy = await mesh.envoy_in_front_of([good, down], outlier_detection=OUTLIER_DETECTION)

    # Round robin sends every other call to the failing instance, until it has failed CONSECUTIVE_5XX times.
    failed: list[Answer] = []
    async with grpc.aio.insecure_channel(envoy.address) as channel:
        stub = sample_pb2_grpc.SampleServiceStub(channel)
        for _ in range(4 * CONSECUTIVE_5XX):
            answer = await echo(stub)
            if answer.code != grpc.StatusCode.OK:
                failed.append(answer)
            if len(failed) == CONSECUTIVE_5XX:
                break
    # The chassis' UNAVAILABLE, trailers-only, as the client got it through Envoy.
    assert failed == [Answer(grpc.StatusCode.UNAVAILABLE, DOWN, ())] * CONSECUTIVE_5XX

    # Envoy ejects it (on its main thread, right after the third failure).
    await eventually(
        lambda: envoy.stats()["outlier_detection.ejections_active"] == 1,
        f"Envoy ejecting the instance after {CONSECUTIVE_5XX} trailers-only UNAVAILABLE",
        timeout=10,
    )
    stats = envoy.stats()
    assert stats["outlier_detection.ejections_enforced_consecutive_5xx"] == 1
    assert stats["outlier_detection.ejections_enforced_total"] == 1
    hosts = envoy.hosts()
    assert hosts[down.address].ejected
    assert not hosts[good.address].ejected

    # Only the good instance is left: every call succeeds, and the ejected one gets none.
    calls_before = (good.calls, down.calls)
    answers = await echo_calls(envoy.address, CALLS)
    assert {answer.code for answer in answers} == {grpc.StatusCode.OK}
    assert (good.calls, down.calls) == (calls_before[0] + CALLS, calls_before[1])


async def test_route_retry_on_unavailable_reaches_the_other_backend_when_the_error_is_trailers_only(
    mesh: Mesh,
) -> None:
    good, down = Backend(), DownTrailersOnly()
    envoy = await mesh.envoy_in_front_of([good, down], retry_policy=RETRY_UNAVAILABLE_ELSEWHERE)

    answers = await echo_calls(envoy.address, CALLS)

    # Every call succeeds, though round robin sent at least every other one to the failing instance first.
    assert [answer.code for answer in answers] == [grpc.StatusCode.OK] * CALLS
    assert down.calls >= CALLS // 2
    # Each of its UNAVAILABLE was retried once, on the good instance, which answered every call once.
    stats = envoy.stats()
    assert stats["upstream_rq_retry"] == stats["upstream_rq_retry_success"] == down.calls
    assert good.calls == CALLS


async def test_an_error_after_response_headers_is_neither_retried_nor_seen_as_unavailable_by_the_retry_policy(
    mesh: Mesh,
) -> None:
    """The same retry policy, but the failing instance sends response headers before its UNAVAILABLE.

    Envoy's router decides on a retry when the response headers arrive: here they say nothing of an error,
    so Envoy forwards them to the client, and when the status comes in the trailers it is too late to retry.
    Every UNAVAILABLE reaches the client, after the backend's headers, and Envoy counts no retry, although it
    read the status in the trailers: the host's rq_error counts each one."""
    good, down = Backend(), DownAfterHeaders()
    envoy = await mesh.envoy_in_front_of([good, down], retry_policy=RETRY_UNAVAILABLE_ELSEWHERE)

    answers = await echo_calls(envoy.address, CALLS)

    failed = [answer for answer in answers if answer.code != grpc.StatusCode.OK]
    # Round robin: half the calls went to the failing instance, and every one of its errors reached the client,
    # with the headers it sent before.
    assert down.calls == good.calls == CALLS // 2
    assert len(failed) == down.calls
    assert {(answer.code, answer.reason) for answer in failed} == {(grpc.StatusCode.UNAVAILABLE, DOWN)}
    assert all(SENT_FIRST in answer.headers for answer in failed)
    stats = envoy.stats()
    assert stats["upstream_rq_retry"] == 0
    assert stats["upstream_rq_total"] == CALLS
    assert envoy.hosts()[down.address].stats["rq_error"] == down.calls


async def test_outlier_detection_does_not_eject_a_backend_whose_errors_come_after_response_headers(
    mesh: Mesh,
) -> None:
    """The control of the first test: an instance answering only UNAVAILABLE, far more than CONSECUTIVE_5XX
    times in a row, but each time after response headers. Envoy's router feeds the outlier detector a code
    from the response headers only (their grpc-status mapped to HTTP when they have one, else :status, 200
    here: a success), so the instance is never ejected and keeps its half of the calls; Envoy counts the
    errors in the host's rq_error all the same."""
    good, down = Backend(), DownAfterHeaders()
    envoy = await mesh.envoy_in_front_of([good, down], outlier_detection=OUTLIER_DETECTION)

    answers = await echo_calls(envoy.address, CALLS)

    assert down.calls == good.calls == CALLS // 2
    assert down.calls > 3 * CONSECUTIVE_5XX
    assert sum(answer.code == grpc.StatusCode.UNAVAILABLE for answer in answers) == down.calls
    stats = envoy.stats()
    assert stats["outlier_detection.ejections_detected_consecutive_5xx"] == 0
    assert stats["outlier_detection.ejections_active"] == 0
    host = envoy.hosts()[down.address]
    assert not host.ejected
    assert host.stats["rq_error"] == down.calls
