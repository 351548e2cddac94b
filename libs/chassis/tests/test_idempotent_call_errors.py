"""What a client of an idempotent call makes of a failed call, without a server: which statuses are worth another
try, and the error for a status the callee's contract does not promise."""

from __future__ import annotations

import grpc
from grpc.aio import Metadata

from shopmesh_chassis.grpc_errors import IDEMPOTENT_RETRY_CODES, TRANSIENT_CODES, unexpected_status


def test_an_idempotent_call_retries_a_lost_race_besides_the_transient_statuses() -> None:
    assert grpc.StatusCode.ABORTED in IDEMPOTENT_RETRY_CODES
    assert grpc.StatusCode.ABORTED not in TRANSIENT_CODES
    assert TRANSIENT_CODES < IDEMPOTENT_RETRY_CODES


def test_an_unexpected_status_is_a_runtime_error_naming_the_call_its_code_and_details() -> None:
    error = grpc.aio.AioRpcError(grpc.StatusCode.NOT_FOUND, Metadata(), Metadata(), details="no such thing")
    unexpected = unexpected_status("catalog GetProduct", error)
    assert type(unexpected) is RuntimeError
    assert str(unexpected) == "catalog GetProduct answered NOT_FOUND: no such thing"
