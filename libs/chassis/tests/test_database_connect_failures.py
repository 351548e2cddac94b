"""A PostgreSQL that refuses this service a new connection, whatever it says why, is a database unavailable now
(UNAVAILABLE DATABASE_UNAVAILABLE, with a retry delay), logged as one line naming where it is: never INTERNAL."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest
from sqlalchemy import text

from shopmesh.sample.v1 import sample_pb2, sample_pb2_grpc
from shopmesh_chassis.db import Database
from shopmesh_chassis.db_errors import DATABASE_UNAVAILABLE
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_chassis.testing import serve_in_process
from shopmesh_chassis.testing.postgres import PostgresServer
from shopmesh_chassis.testing.sample_service import SampleServicer, binding

from .conftest import sample_settings


class Reading(SampleServicer):
    """Echo reads from the service's database first, as a store's read would."""

    def __init__(self, database: Database) -> None:
        super().__init__()
        self.database = database

    async def Echo(self, request: sample_pb2.EchoRequest, context: Any) -> sample_pb2.EchoResponse:
        async with self.database.read() as connection:
            await connection.execute(text("SELECT 1"))
        return await super().Echo(request, context)


# What each refusal is, by the SQLSTATE the server answers a connection attempt with.
NOT_ACCEPTING_CONNECTIONS = "55000"  # ALTER DATABASE ... ALLOW_CONNECTIONS false, as an operator does
NO_SUCH_DATABASE = "3D000"
WRONG_PASSWORD = "28P01"


@pytest.mark.parametrize(
    "sqlstate",
    [
        pytest.param(NOT_ACCEPTING_CONNECTIONS, id="database-not-accepting-connections"),
        pytest.param(NO_SUCH_DATABASE, id="no-such-database"),
        pytest.param(WRONG_PASSWORD, id="wrong-password"),
    ],
)
async def test_a_database_refusing_new_connections_answers_unavailable_database_unavailable_logged_as_one_line(
    postgres: PostgresServer, caplog: pytest.LogCaptureFixture, sqlstate: str
) -> None:
    url = postgres.create_database()
    name = url.rsplit("/", 1)[1]
    if sqlstate == NO_SUCH_DATABASE:
        url = postgres.url("no_such_database")
    elif sqlstate == WRONG_PASSWORD:
        url = postgres.url(name, password="not-the-password")
    database = Database(url)
    try:
        if sqlstate == NOT_ACCEPTING_CONNECTIONS:
            # A connection in the pool first, as a serving replica has: the refusal meets its pre-ping's reconnect.
            async with database.read() as connection:
                await connection.execute(text("SELECT 1"))
            postgres.refuse_connections(name)
        caplog.set_level(logging.WARNING)
        async with (
            serve_in_process(sample_settings(), [binding(Reading(database))]) as server,
            grpc.aio.insecure_channel(server.address) as channel,
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await sample_pb2_grpc.SampleServiceStub(channel).Echo(sample_pb2.EchoRequest(message="hi"), timeout=20)
    finally:
        await database.dispose()
        postgres.allow_connections(name)
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.UNAVAILABLE, caught.value.details()
    assert details.error_info is not None
    assert details.error_info.reason == DATABASE_UNAVAILABLE
    assert details.retry_delay_seconds is not None
    assert details.retry_delay_seconds > 0
    said = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert [record.exc_info for record in said] == [None] * len(said), "a traceback was logged"
    lines = [record.getMessage() for record in said]
    assert any(database.address in line and sqlstate in line for line in lines), lines
    assert not any(postgres.password in line or "not-the-password" in line for line in lines), lines
