"""gRPC's service-config retries apply to idempotent methods only, as declared in the contract."""

from __future__ import annotations

import json

import grpc
import pytest

from shopmesh.sample.v1 import sample_pb2, sample_pb2_grpc
from shopmesh_chassis.client import service_config
from shopmesh_chassis.testing.sample_service import DESCRIPTOR, SampleServicer


def test_service_config_lists_exactly_the_idempotent_methods() -> None:
    config = json.loads(service_config([DESCRIPTOR]))
    names = config["methodConfig"][0]["name"]
    assert sorted(n["method"] for n in names) == ["Echo", "Fail", "Relay"]
    assert config["methodConfig"][0]["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert "retryThrottling" in config


async def test_idempotent_method_is_retried_on_unavailable(
    stub: sample_pb2_grpc.SampleServiceStub, servicer: SampleServicer
) -> None:
    behaviour = sample_pb2.Behaviour(attempt_key="echo-1", fail_first_attempts=2)
    response = await stub.Echo(sample_pb2.EchoRequest(message="x", behaviour=behaviour))
    # Two attempts failed with a trailers-only UNAVAILABLE; gRPC retried and the third succeeded.
    assert response.attempt == 3
    assert servicer.attempts["echo-1"] == 3


async def test_non_idempotent_method_is_not_retried(
    stub: sample_pb2_grpc.SampleServiceStub, servicer: SampleServicer
) -> None:
    behaviour = sample_pb2.Behaviour(attempt_key="record-1", fail_first_attempts=1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Record(sample_pb2.RecordRequest(message="x", behaviour=behaviour))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.attempts["record-1"] == 1


async def test_retries_give_up_after_max_attempts(
    stub: sample_pb2_grpc.SampleServiceStub, servicer: SampleServicer
) -> None:
    behaviour = sample_pb2.Behaviour(attempt_key="echo-2", fail_first_attempts=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Echo(sample_pb2.EchoRequest(message="x", behaviour=behaviour))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.attempts["echo-2"] == 4
