"""Domain errors reach the client as the right status with google.rpc details; nothing leaks."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from shopmesh.sample.v1 import sample_pb2, sample_pb2_grpc
from shopmesh_chassis import errors
from shopmesh_chassis.grpc_errors import (
    MAX_RETRY_DELAY_SECONDS,
    ErrorDetails,
    details_from,
    details_of,
    to_rpc_status,
)
from shopmesh_chassis.logs import TraceContextFilter
from shopmesh_chassis.server import ChassisServer
from shopmesh_chassis.testing import eventually, serve_in_process
from shopmesh_chassis.testing.sample_service import SampleServicer, binding

from .conftest import sample_settings

CASES = [
    (sample_pb2.ERROR_KIND_INVALID_ARGUMENT, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
    (sample_pb2.ERROR_KIND_NOT_FOUND, grpc.StatusCode.NOT_FOUND, "THING_NOT_FOUND"),
    (sample_pb2.ERROR_KIND_ALREADY_EXISTS, grpc.StatusCode.ALREADY_EXISTS, "THING_EXISTS"),
    (sample_pb2.ERROR_KIND_FAILED_PRECONDITION, grpc.StatusCode.FAILED_PRECONDITION, "THING_CLOSED"),
    (sample_pb2.ERROR_KIND_ABORTED, grpc.StatusCode.ABORTED, "CONFLICT"),
    (sample_pb2.ERROR_KIND_UNAUTHENTICATED, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"),
    (sample_pb2.ERROR_KIND_PERMISSION_DENIED, grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"),
    (sample_pb2.ERROR_KIND_RESOURCE_EXHAUSTED, grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED"),
    (sample_pb2.ERROR_KIND_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, "BACKEND_DOWN"),
]


@pytest.mark.parametrize(("kind", "code", "reason"), CASES)
async def test_each_domain_error_maps_to_its_status_with_error_info(
    stub: sample_pb2_grpc.SampleServiceStub, kind: int, code: grpc.StatusCode, reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Fail(sample_pb2.FailRequest(kind=kind))  # type: ignore[arg-type]
    details = details_of(caught.value)
    assert details.code == code
    assert details.error_info is not None
    assert details.error_info.reason == reason
    assert details.error_info.domain == "shopmesh.sample"


async def test_invalid_argument_carries_field_violations(stub: sample_pb2_grpc.SampleServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Fail(sample_pb2.FailRequest(kind=sample_pb2.ERROR_KIND_INVALID_ARGUMENT))
    violations = details_of(caught.value).field_violations
    assert [(v.field, v.description, v.reason) for v in violations] == [("message", "must not be empty", "REQUIRED")]


@pytest.mark.parametrize(
    ("kind", "seconds"),
    [
        (sample_pb2.ERROR_KIND_RESOURCE_EXHAUSTED, 1.5),
        (sample_pb2.ERROR_KIND_UNAVAILABLE, 0.25),
        (sample_pb2.ERROR_KIND_ABORTED, errors.CONFLICT_RETRY_AFTER_SECONDS),
    ],
)
async def test_retryable_errors_carry_retry_info(
    stub: sample_pb2_grpc.SampleServiceStub, kind: int, seconds: float
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Fail(sample_pb2.FailRequest(kind=kind))  # type: ignore[arg-type]
    assert details_of(caught.value).retry_delay_seconds == pytest.approx(seconds)


async def test_not_found_carries_error_metadata(stub: sample_pb2_grpc.SampleServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Fail(sample_pb2.FailRequest(kind=sample_pb2.ERROR_KIND_NOT_FOUND))
    info = details_of(caught.value).error_info
    assert info is not None
    assert dict(info.metadata) == {"id": "thing_1"}


async def test_unexpected_exception_is_internal_and_leaks_nothing(
    stub: sample_pb2_grpc.SampleServiceStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(TraceContextFilter("sample"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Fail(sample_pb2.FailRequest(kind=sample_pb2.ERROR_KIND_UNEXPECTED))
    error = caught.value
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in (error.details() or "")
    assert "RuntimeError" not in (error.details() or "")
    assert "hunter2" not in str(error.trailing_metadata())
    # The client gets a trace id to quote; the log holds the traceback under that id.
    assert "trace_id=" in (error.details() or "")
    trace_id = (error.details() or "").split("trace_id=")[1].rstrip(")")
    logged = [r for r in caplog.records if r.exc_info and "hunter2" in str(r.exc_info[1])]
    assert [getattr(r, "trace_id", None) for r in logged] == [trace_id]


async def test_errors_are_trailers_only(stub: sample_pb2_grpc.SampleServiceStub) -> None:
    call = stub.Fail(sample_pb2.FailRequest(kind=sample_pb2.ERROR_KIND_NOT_FOUND))
    with pytest.raises(grpc.aio.AioRpcError):
        await call
    # In a trailers-only response the status travels in the only HEADERS frame; gRPC surfaces
    # that frame as trailing metadata and reports no initial metadata.
    assert not await call.initial_metadata()
    trailing = await call.trailing_metadata()
    assert any(key == "grpc-status-details-bin" for key, _ in trailing)


async def test_success_after_errors_keeps_serving(
    stub: sample_pb2_grpc.SampleServiceStub, servicer: SampleServicer
) -> None:
    for kind in (sample_pb2.ERROR_KIND_UNEXPECTED, sample_pb2.ERROR_KIND_NOT_FOUND):
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Fail(sample_pb2.FailRequest(kind=kind))
    assert (await stub.Echo(sample_pb2.EchoRequest(message="still here"))).message == "still here"


@pytest.mark.parametrize("body", [b"\x0a\x05ab", b"\xff\xff\xff"], ids=["truncated", "garbage"])
async def test_a_body_that_is_no_message_of_the_method_is_invalid_argument_with_error_info(
    server: ChassisServer, body: bytes
) -> None:
    """A gRPC or gRPC-Web client's own bytes: grpcio's own answer would be UNKNOWN, naming the parser's
    exception, without details."""
    async with grpc.aio.insecure_channel(server.address) as raw:
        echo = raw.unary_unary("/shopmesh.sample.v1.SampleService/Echo")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await echo(body, timeout=5)
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.error_info is not None
    assert details.error_info.reason == "MALFORMED_REQUEST"
    assert "DecodeError" not in (caught.value.details() or "")


@pytest.mark.parametrize("size", [12_000, 20_000, 120_000])
async def test_request_metadata_as_large_as_the_http_edge_forwards_is_served_not_refused_as_resource_exhausted(
    server: ChassisServer, size: int
) -> None:
    # gRPC's defaults refuse more than 8 KiB at random and 16 KiB always, with RESOURCE_EXHAUSTED, which the
    # HTTP/JSON edge answers 429 (rate limited): a long query string reaches the gateway twice (its path and
    # the transcoder's x-envoy-original-path), up to the edge's 60 KiB header limit each.
    metadata = (
        ("x-envoy-original-path", "/v1/products:search?query=" + "x" * (size // 2)),
        ("x-long", "y" * (size // 2)),
    )
    async with grpc.aio.insecure_channel(server.address) as channel:
        for _ in range(8):  # between the soft and the hard limit gRPC refuses at random
            echoed = await sample_pb2_grpc.SampleServiceStub(channel).Echo(
                sample_pb2.EchoRequest(message="m"), metadata=metadata, timeout=10
            )
            assert echoed.message == "m"


class _CancelledInside(SampleServicer):
    """A handler that ends with CancelledError though its caller did not cancel: it awaited a task that
    something else cancelled (a grpc.aio call on a channel being closed, a shared task stopped)."""

    async def Echo(self, request: sample_pb2.EchoRequest, context: Any) -> sample_pb2.EchoResponse:
        inner: asyncio.Task[None] = asyncio.get_running_loop().create_task(asyncio.sleep(10))
        asyncio.get_running_loop().call_later(0.05, inner.cancel)
        await inner
        return sample_pb2.EchoResponse(message=request.message)


async def test_a_handler_ending_with_a_cancellation_of_its_own_answers_the_caller_at_once() -> None:
    """grpc.aio takes a handler's CancelledError for the client's cancellation and sends no status: the
    interceptor re-raised it, and the caller waited until its deadline (grpcurl, without one: for ever)."""
    async with (
        serve_in_process(sample_settings(), [binding(_CancelledInside())]) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub = sample_pb2_grpc.SampleServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Echo(sample_pb2.EchoRequest(message="m"), timeout=5)
    # A caller left without a status sees DEADLINE_EXCEEDED at its deadline: an answer is one the server sent.
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "INTERRUPTED")


def _wire_size(status: status_pb2.Status) -> int:
    """The bytes of trailers `status` takes as gRPC sends it: grpc-status-details-bin in base64 (unpadded)
    and grpc-message percent-encoded (every byte outside printable ASCII, and "%", as three)."""
    details = -(-len(status.SerializeToString()) * 4 // 3)
    message = sum(1 if 0x20 <= byte <= 0x7E and byte != ord("%") else 3 for byte in status.message.encode())
    return details + message


# Any text a client may send back in an error: ASCII, accented, CJK, emoji, percent signs and newlines.
TEXTS = ["x", "é", "漢", "😀", "%", "\n"]


@pytest.mark.parametrize("text", TEXTS)
def test_an_error_status_stays_small_enough_for_a_clients_trailers(text: str) -> None:
    """Whatever a domain error holds, its status stays far below the 8 KiB of trailers a gRPC client takes,
    as sent: long texts are cut (in UTF-8 bytes, between characters), of many metadata entries the first
    are kept, and of many violations the first are listed and the message says how many."""
    many = errors.InvalidArgument(
        text * 10_000,
        [errors.FieldViolation(f"items[{i}].{text * 300}", text * 300, "BAD") for i in range(500)],
        metadata={f"key_{i}": text * 10_000 for i in range(20)},
    )
    status = to_rpc_status(many, "shopmesh.test")
    assert _wire_size(status) < 7 * 1024
    assert status.message.endswith(" of 500 violations listed)")
    [violations] = [d for d in status.details if d.Is(error_details_pb2.BadRequest.DESCRIPTOR)]
    listed = error_details_pb2.BadRequest()
    violations.Unpack(listed)
    assert 0 < len(listed.field_violations) < 500
    assert [v.field.split(".")[0] for v in listed.field_violations] == [
        f"items[{i}]" for i in range(len(listed.field_violations))
    ]
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert "key_0" in info.metadata
    assert info.metadata["key_0"].endswith("…")
    retryable = errors.Unavailable(text * 10_000, metadata={f"key_{i}": text * 10_000 for i in range(20)})
    assert _wire_size(to_rpc_status(retryable, "shopmesh.test")) < 7 * 1024
    small = errors.InvalidArgument("bad", [errors.FieldViolation("a", "b", "C")])
    assert to_rpc_status(small, "shopmesh.test").message == "bad"


@pytest.mark.parametrize(
    ("asked", "sent"),
    [(1e300, MAX_RETRY_DELAY_SECONDS), (math.inf, MAX_RETRY_DELAY_SECONDS), (math.nan, 0.0), (-1.0, 0.0), (1.5, 1.5)],
)
def test_a_retry_delay_out_of_range_is_sent_clamped_never_as_a_failure_of_its_own(asked: float, sent: float) -> None:
    """A rate limit of 1e-300 a second hinted 1e300 s, which no Duration holds: the refusal became INTERNAL."""
    status = to_rpc_status(errors.ResourceExhausted("slow down", retry_after_seconds=asked), "shopmesh.test")
    [packed] = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    info = error_details_pb2.RetryInfo()
    packed.Unpack(info)
    assert info.retry_delay.ToTimedelta().total_seconds() == sent


def test_a_long_list_of_ids_names_whole_ids_only_and_counts_them_all() -> None:
    """A list of ids cut by the transport's limit on a metadata value ended in an id that named nothing;
    listed_ids stops before it, at a whole id, counting UTF-8 bytes (a client sees the value as sent)."""
    ids = [f"prod_{i:02d}_".ljust(64, "é") for i in range(50)]
    metadata = errors.listed_ids(ids, key="product_ids", count_key="short_count")
    listed = metadata["product_ids"].split(",")
    assert listed == ids[: len(listed)]
    assert len(metadata["product_ids"].encode()) <= errors.MAX_LISTED_IDS_BYTES
    assert metadata["short_count"] == "50"
    status = to_rpc_status(errors.FailedPrecondition("short", metadata=metadata), "shopmesh.test")
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.metadata["product_ids"] == metadata["product_ids"]
    assert errors.listed_ids(["a", "b"], key="ids", count_key="count") == {"ids": "a,b", "count": "2"}


async def test_a_text_field_that_is_not_utf8_is_named_with_its_own_reason(server: ChassisServer) -> None:
    """Such a body is no message to protobuf's parser either, but the HTTP/JSON transcoder sends one for any
    query parameter that is not UTF-8 (`?query=caf%E9` from a Latin-1 form): the client hears which field."""
    async with grpc.aio.insecure_channel(server.address) as raw:
        echo = raw.unary_unary("/shopmesh.sample.v1.SampleService/Echo")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await echo(b"\x0a\x02\xff\xfe", timeout=5)
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.error_info is not None
    assert details.error_info.reason == "NOT_UTF8"
    assert [(v.field, v.reason) for v in details.field_violations] == [("message", "NOT_UTF8")]


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xff\xff",  # no google.rpc.Status
        # A Status whose ErrorInfo detail does not decode.
        status_pb2.Status(
            code=14, details=[any_pb2.Any(type_url="type.googleapis.com/google.rpc.ErrorInfo", value=b"\xff\xff")]
        ).SerializeToString(),
    ],
    ids=["no-status", "undecodable-error-info"],
)
def test_details_that_do_not_decode_read_as_none_keeping_the_calls_status(raw: bytes) -> None:
    """A garbling proxy or a broken peer: the call failed UNAVAILABLE all the same, and a caller that retries or
    falls back on that code must do so, not fail on a DecodeError (the gateway answered its product page INTERNAL)."""
    details = details_from(grpc.StatusCode.UNAVAILABLE, "connect failed", [("grpc-status-details-bin", raw)])
    assert details == ErrorDetails(code=grpc.StatusCode.UNAVAILABLE, message="connect failed")


class Mistaken(SampleServicer):
    """Fail's mistakes a service can make: a domain error the chassis cannot turn into a status (ErrorInfo
    metadata that is not text, a violation's path that is not a string), and a handler returning no
    response, or another method's."""

    async def Fail(self, request: sample_pb2.FailRequest, context: Any) -> Any:
        if request.kind == sample_pb2.ERROR_KIND_NOT_FOUND:
            raise errors.NotFound("order o_1 not in /srv/app/orders.db", metadata={"attempts": 3})  # type: ignore[dict-item]
        if request.kind == sample_pb2.ERROR_KIND_INVALID_ARGUMENT:
            raise errors.InvalidArgument("bad", [errors.FieldViolation(("items", 2), "bad")])  # type: ignore[arg-type]
        if request.kind == sample_pb2.ERROR_KIND_ALREADY_EXISTS:
            return sample_pb2.EchoResponse(message="not a FailResponse")
        return None


def _handled(server: ChassisServer, method: str) -> dict[str, float]:
    return {
        sample.labels["grpc_code"]: sample.value
        for metric in server.metrics.registry.collect()
        if metric.name == "grpc_server_handled"
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels["grpc_method"] == method
    }


@pytest.mark.parametrize(
    "kind",
    [
        sample_pb2.ERROR_KIND_NOT_FOUND,
        sample_pb2.ERROR_KIND_INVALID_ARGUMENT,
        sample_pb2.ERROR_KIND_ALREADY_EXISTS,
        sample_pb2.ERROR_KIND_UNSPECIFIED,
    ],
    ids=["metadata-not-text", "path-not-text", "wrong-response-type", "no-response"],
)
async def test_a_handler_whose_outcome_cannot_be_answered_is_answered_and_counted_internal_with_a_trace_id(
    kind: int, caplog: pytest.LogCaptureFixture
) -> None:
    """These escaped the interceptor: the caller got UNKNOWN "Unexpected <class ...>: ..." (the exception's
    text, a path on the server), and the metrics counted the code the mapping was to send, or OK."""
    caplog.handler.addFilter(TraceContextFilter("sample"))
    async with (
        serve_in_process(sample_settings(), [binding(Mistaken())]) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await sample_pb2_grpc.SampleServiceStub(channel).Fail(sample_pb2.FailRequest(kind=kind), timeout=5)
        # Counted as the handler ends, which may be just after the caller has its answer.
        await eventually(lambda: sum(_handled(server, "Fail").values()) == 1, "the call counted")
        counted = _handled(server, "Fail")
    error = caught.value
    details = error.details() or ""
    assert (error.code(), details.partition(" (")[0]) == (grpc.StatusCode.INTERNAL, "internal error"), details
    assert counted == {"INTERNAL": 1.0}
    # The log holds what went wrong under the trace id the caller was given.
    trace_id = details.split("trace_id=")[1].rstrip(")")
    assert trace_id in {getattr(r, "trace_id", None) for r in caplog.records if r.exc_info}


class Outlived(SampleServicer):
    """Fail waits until its call is cancelled (its deadline passed), then raises a domain error all the same:
    an answer the chassis builds but cannot send."""

    def __init__(self) -> None:
        super().__init__()
        self.ended = asyncio.Event()

    async def Fail(self, request: sample_pb2.FailRequest, context: Any) -> sample_pb2.FailResponse:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.ended.set()
            raise errors.NotFound("thing_1 not found", reason="THING_NOT_FOUND") from None
        return sample_pb2.FailResponse()


async def test_an_error_of_a_call_that_ended_before_its_answer_went_out_is_not_logged_as_a_failure_to_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Sending the answer fails when the call is over; only a failure to build one is answered INTERNAL and
    logged at ERROR (the contract tests' deadlines made such calls, and no service may log an error for them)."""
    servicer = Outlived()
    async with (
        serve_in_process(sample_settings(), [binding(servicer)]) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await sample_pb2_grpc.SampleServiceStub(channel).Fail(sample_pb2.FailRequest(), timeout=0.3)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await eventually(servicer.ended.is_set, "the handler seeing its call end")
        await eventually(lambda: sum(_handled(server, "Fail").values()) == 1, "the call counted")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def _record_once(servicer: SampleServicer) -> tuple[grpc.aio.AioRpcError, dict[str, float]]:
    """One Record call to a server of `servicer` that fails: its error, and the calls counted by code."""
    async with (
        serve_in_process(sample_settings(), [binding(servicer)]) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await sample_pb2_grpc.SampleServiceStub(channel).Record(sample_pb2.RecordRequest(), timeout=5)
        await eventually(lambda: sum(_handled(server, "Record").values()) == 1, "the call counted")
        return caught.value, _handled(server, "Record")


class Unfinished(SampleServicer):
    """Record left as grpc's generated base has it: UNIMPLEMENTED set on the context, then NotImplementedError."""

    Record = sample_pb2_grpc.SampleServiceServicer.Record


async def test_a_handler_that_set_its_status_then_raised_answers_that_status_without_an_error_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Answered INTERNAL "internal error" with an ERROR traceback: the generated base's own UNIMPLEMENTED
    was lost, and the call counted as INTERNAL."""
    error, counted = await _record_once(Unfinished())
    # Trailers-only, as every error the chassis answers.
    assert not error.initial_metadata()
    assert (error.code(), error.details()) == (grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
    assert counted == {"UNIMPLEMENTED": 1.0}
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []


class SetThenCrashed(SampleServicer):
    """Record sets NOT_FOUND, then fails as a bug does: a KeyError, not the generated base's NotImplementedError."""

    async def Record(self, request: sample_pb2.RecordRequest, context: Any) -> sample_pb2.RecordResponse:
        context.set_code(grpc.StatusCode.NOT_FOUND)
        context.set_details("no such record")
        raise KeyError("record_1")


async def test_a_handler_that_set_its_status_then_crashed_is_internal_with_its_traceback_at_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Any exception after set_code was answered the set code, logged at WARNING without a traceback and not
    counted as a server error: a real bug in a handler that had set NOT_FOUND left no trace of itself. Only the
    generated base's NotImplementedError keeps the code it set."""
    caplog.handler.addFilter(TraceContextFilter("sample"))
    error, counted = await _record_once(SetThenCrashed())
    details = error.details() or ""
    assert (error.code(), details.partition(" (")[0]) == (grpc.StatusCode.INTERNAL, "internal error"), details
    assert counted == {"INTERNAL": 1.0}
    trace_id = details.split("trace_id=")[1].rstrip(")")
    crashes = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert [(type(r.exc_info[1]), getattr(r, "trace_id", None)) for r in crashes if r.exc_info] == [
        (KeyError, trace_id)
    ]
