"""Database failures as the contract names them, instead of INTERNAL."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from sqlalchemy import exc

from shopmesh_chassis.errors import Aborted, Unavailable

P = ParamSpec("P")
R = TypeVar("R")

# PostgreSQL serialization_failure and deadlock_detected: the transaction lost a race; retrying it works.
_CONFLICT_SQLSTATES = {"40001", "40P01"}
_RETRY_AFTER_SECONDS = 0.5


# chassis-candidate: every service with a database needs this mapping (contracts list ABORTED and
# UNAVAILABLE for database trouble); the chassis interceptor turns the raw exceptions into INTERNAL.
def database_errors_as_domain_errors(operation: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Concurrency conflicts become ABORTED; an unreachable, locked or exhausted database UNAVAILABLE."""

    @functools.wraps(operation)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await operation(*args, **kwargs)
        except exc.DBAPIError as error:
            if getattr(error.orig, "sqlstate", None) in _CONFLICT_SQLSTATES:
                raise Aborted(
                    "concurrent update of the same records; retry",
                    reason="CONCURRENT_UPDATE",
                ) from error
            if isinstance(error, exc.OperationalError | exc.InterfaceError) or error.connection_invalidated:
                raise Unavailable(
                    "database unavailable", reason="DATABASE_UNAVAILABLE", retry_after_seconds=_RETRY_AFTER_SECONDS
                ) from error
            raise
        except (exc.TimeoutError, OSError) as error:  # connection pool exhausted; cannot connect
            raise Unavailable(
                "database unavailable", reason="DATABASE_UNAVAILABLE", retry_after_seconds=_RETRY_AFTER_SECONDS
            ) from error

    return wrapper
