"""Which database failures are the database's (UNAVAILABLE, retry) and which a lost race (ABORTED)."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import DBAPIError

from shopmesh_chassis.db_errors import DATABASE_UNAVAILABLE, as_domain_error, database_unavailable
from shopmesh_chassis.errors import Aborted, Unavailable


class DriverError(Exception):
    """What asyncpg's DB-API adapter raises: the SQLSTATE on the exception."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"SQLSTATE {sqlstate}")
        self.sqlstate = sqlstate


def failed(sqlstate: str) -> DBAPIError:
    # A plain DBAPIError, as SQLAlchemy wraps these: not an OperationalError, the connection not invalidated.
    return DBAPIError("SELECT 1", {}, DriverError(sqlstate))


@pytest.mark.parametrize(
    "sqlstate",
    [
        pytest.param("53300", id="too-many-connections"),
        pytest.param("53100", id="disk-full"),
        pytest.param("08006", id="connection-failure"),
        pytest.param("57P01", id="admin-shutdown"),
        pytest.param("57P03", id="starting-up"),
        pytest.param("25006", id="read-only-after-failover"),
        pytest.param("57P02", id="crash-shutdown"),
    ],
)
def test_a_database_that_cannot_serve_now_is_unavailable(sqlstate: str) -> None:
    mapped = as_domain_error(failed(sqlstate))
    assert isinstance(mapped, Unavailable)
    assert mapped.reason == DATABASE_UNAVAILABLE
    assert database_unavailable(failed(sqlstate))


@pytest.mark.parametrize("sqlstate", ["40001", "40P01"])
def test_a_lost_race_is_aborted(sqlstate: str) -> None:
    assert isinstance(as_domain_error(failed(sqlstate)), Aborted)


@pytest.mark.parametrize("sqlstate", ["23505", "22P02", "42P01"])
def test_a_statement_the_database_refuses_is_nobody_elses_fault(sqlstate: str) -> None:
    assert as_domain_error(failed(sqlstate)) is None
    assert not database_unavailable(failed(sqlstate))
