"""`python -m shopmesh_payments` starts, serves a charge without NATS reachable, and stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc

from shopmesh.payments.v1 import payments_pb2, payments_pb2_grpc
from shopmesh_chassis.client import idempotency_metadata
from shopmesh_chassis.testing import PYTHON, free_port, start_process_serving

from .conftest import charge_request


async def test_the_process_serves_charges_while_nats_is_unreachable_and_drains_on_sigterm(tmp_path: Path) -> None:
    env = {
        "DATA_DIR": str(tmp_path),
        "DATABASE_URL": "",
        "METRICS_PORT": "-1",
        "NATS_URL": f"nats://127.0.0.1:{free_port()}",
        "LOG_FORMAT": "text",
    }
    process = await start_process_serving(
        [PYTHON, "-m", "shopmesh_payments"], log_path=tmp_path / "payments.log", env=env
    )
    try:
        async with grpc.aio.insecure_channel(process.address) as channel:
            stub = payments_pb2_grpc.PaymentsServiceStub(channel)
            response = await stub.Charge(charge_request("ord_1"), metadata=idempotency_metadata("ord_1:charge"))
            assert response.payment.state == payments_pb2.PAYMENT_STATE_CAPTURED
        process.signal(signal.SIGTERM)
        assert process.wait() == 0, process.output()
    finally:
        process.stop()
    assert (tmp_path / "payments.db").exists()
