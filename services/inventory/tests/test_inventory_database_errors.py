"""Database trouble reaches clients as the statuses the contract names, not as INTERNAL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import exc

from shopmesh_chassis.db import Database
from shopmesh_chassis.db_errors import DatabaseUnreachable, database_errors_as_domain_errors
from shopmesh_chassis.errors import Aborted, NotFound, Unavailable
from shopmesh_chassis.testing import free_port
from shopmesh_inventory.application import Inventory


class _PostgresError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def _failing(error: BaseException) -> Callable[[], Awaitable[None]]:
    @database_errors_as_domain_errors
    async def operation() -> None:
        raise error

    return operation


@pytest.mark.parametrize("sqlstate", ["40001", "40P01"])
async def test_serialization_failures_and_deadlocks_are_aborted(sqlstate: str) -> None:
    with pytest.raises(Aborted) as caught:
        await _failing(exc.DBAPIError("UPDATE stock", {}, _PostgresError(sqlstate)))()
    assert caught.value.reason == "CONCURRENT_UPDATE"


@pytest.mark.parametrize(
    "error",
    [
        exc.OperationalError("BEGIN IMMEDIATE", {}, Exception("database is locked")),
        exc.InterfaceError("SELECT 1", {}, Exception("connection is closed")),
        exc.TimeoutError("QueuePool limit reached"),
        DatabaseUnreachable("cannot connect to the database: [Errno 111] Connection refused"),
    ],
)
async def test_unreachable_locked_or_exhausted_databases_are_unavailable_with_a_retry_delay(
    error: BaseException,
) -> None:
    with pytest.raises(Unavailable) as caught:
        await _failing(error)()
    assert caught.value.reason == "DATABASE_UNAVAILABLE"
    assert caught.value.retry_after_seconds is not None


@pytest.mark.parametrize(
    "error",
    [
        NotFound("no such reservation"),
        exc.IntegrityError("INSERT", {}, Exception("CHECK constraint failed")),
        RuntimeError("a bug"),
        FileNotFoundError(2, "No such file or directory"),
    ],
)
async def test_domain_errors_and_bugs_pass_through_unchanged(error: BaseException) -> None:
    with pytest.raises(type(error)) as caught:
        await _failing(error)()
    assert caught.value is error


async def test_a_postgresql_that_does_not_answer_makes_operations_unavailable() -> None:
    database = Database(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/inventory")
    try:
        with pytest.raises(Unavailable):
            await Inventory(database).get_stock(["prod_a"])
    finally:
        await database.dispose()
