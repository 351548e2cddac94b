"""Database failures as the contracts name them (ABORTED, UNAVAILABLE) instead of INTERNAL.

The server interceptor applies `as_domain_error` to every exception a handler lets through; the
decorator does the same at a use case's boundary, for code that must react to it (retry, compensate).
A store turns an insert's unique-key violation into `Duplicate` (`duplicates_raised`) and catches
`DATABASE_ERRORS` where a failed write is best effort, so that its use cases import no driver's errors.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import ParamSpec, TypeVar

from sqlalchemy import exc

from shopmesh_chassis.errors import Aborted, DomainError, Unavailable

P = ParamSpec("P")
R = TypeVar("R")

# PostgreSQL serialization_failure and deadlock_detected: the transaction lost a race; retrying it works.
_CONFLICT_SQLSTATES = {"40001", "40P01"}
# PostgreSQL saying it cannot serve now, though the connection itself worked: classes 08 (connection
# exception) and 53 (insufficient resources: too many connections, out of memory or disk), the server
# shutting down or starting up (57P01-57P03), and a read-only transaction (25006: a primary demoted by a
# failover). Each comes as a plain DBAPIError, not an OperationalError.
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53")
_UNAVAILABLE_SQLSTATES = {"57P01", "57P02", "57P03", "25006"}
# SQLite's primary result codes (the low byte of an extended one) that say the database file cannot serve
# now, and will once the lock is released, the disk or memory freed, the volume back or writable again:
# locked by another writer (BUSY, LOCKED), out of memory, not writable (READONLY: a read-only file or
# directory, a file moved away), an I/O error, a full disk (FULL), a file that cannot be opened (a missing or
# unmounted directory: CANTOPEN), its locking protocol failing (PROTOCOL). Every other code is the
# statement's or the schema's (SQLITE_ERROR: no such table or column, a syntax error, too many columns;
# RANGE, MISMATCH, TOOBIG...), or a file that is no database or a damaged one, which waiting does not mend.
# sqlite3 raises OperationalError for most of either kind: its class says nothing here.
_SQLITE_UNAVAILABLE_CODES = {
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_NOMEM,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_PROTOCOL,
}
# PostgreSQL unique_violation; SQLite's UNIQUE and PRIMARY KEY constraints (extended result codes).
_UNIQUE_VIOLATION_SQLSTATE = "23505"
_SQLITE_UNIQUE_VIOLATION_CODES = {sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY}
_RETRY_AFTER_SECONDS = 0.5
# The ErrorInfo reason of an unreachable, locked or exhausted database.
DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"


class DatabaseUnreachable(ConnectionError):
    """Connecting to the database failed: at the socket (refused, a host that does not resolve, a missing Unix
    socket file, a timeout), or the server refused the connection, whatever its SQLSTATE (no connections allowed
    to the database, no such database, a password refused, too many connections). `Database` raises it in place
    of the driver's error, raised while connecting (`db.connect_failures_unreachable`), so that an OSError of a
    handler's own code (a file it cannot open) is not taken for a database outage, and a refused connection not
    for a statement's failure. Its message names the database's address and the server's SQLSTATE; `said` is
    what went wrong without the address (the server's words, the socket's error: free text, no ErrorInfo reason),
    `sqlstate` the server's code ('' when the server said none: a socket that failed)."""

    def __init__(self, message: str, *, said: str = "", sqlstate: str = "") -> None:
        super().__init__(message)
        self.said = said or message
        self.sqlstate = sqlstate


def _sqlstate(error: exc.DBAPIError) -> str:
    """The SQLSTATE the driver's error carries ('' when it gives none)."""
    return str(getattr(error.orig, "sqlstate", None) or "")


def server_said(error: exc.DBAPIError) -> tuple[str, str]:
    """The server's own words, their first line ('password authentication failed for user "shop"': never the
    password; the driver's lines after it are detail and hints), and the SQLSTATE ('' when the driver gives none)."""
    # A driver error with no message at all (splitlines() of "" is empty) is named by its type.
    lines = str(error.orig).splitlines() if error.orig is not None else []
    said = lines[0] if lines else type(error.orig if error.orig is not None else error).__name__
    return said, _sqlstate(error)


class Duplicate(Exception):
    """An insert met a row with the same unique key: most often a concurrent request that inserted it first,
    whose row the use case then reads and answers with. Not a DomainError: one that no use case catches is a
    broken invariant, INTERNAL as the driver's IntegrityError under it (its `__cause__`) would be."""


@contextlib.contextmanager
def duplicates_raised(key: str | tuple[str, ...] | None = None) -> Iterator[None]:
    """Statements run inside raise `Duplicate` for a unique-key violation; any other integrity error (a
    foreign key, a NOT NULL) stays the driver's. `key`: only a violation of the unique key on that column, or
    on exactly those columns (a tuple, in any order), of a table with more than one key, is a Duplicate,
    whatever declares the key: a unique constraint, a unique index, the primary key. Matched by whole column
    names, never found in the driver's message: another key's name may contain this one's (email_token).
    See _violated_key_is for how each database names the key."""
    try:
        yield
    except exc.IntegrityError as error:
        columns = (key,) if isinstance(key, str) else key
        if _unique_violation(error) and (columns is None or _violated_key_is(error, columns)):
            # Not the driver's text: PostgreSQL's DETAIL carries the key's value (an e-mail address).
            raise Duplicate("a row with the same unique key exists") from error
        raise


def _unique_violation(error: exc.IntegrityError) -> bool:
    if isinstance(error.orig, sqlite3.Error):
        return getattr(error.orig, "sqlite_errorcode", None) in _SQLITE_UNIQUE_VIOLATION_CODES
    return _sqlstate(error) == _UNIQUE_VIOLATION_SQLSTATE


_SQLITE_UNIQUE_FAILED = "UNIQUE constraint failed: "
# PostgreSQL's DETAIL of a unique violation, in English (the server's lc_messages): "Key (a, b)=(1, 2) already
# exists.", the key's columns then its values; as `Database` leaves it (without_key_values), "Key (a, b) already
# exists.". Only the columns are read.
_POSTGRESQL_KEY_DETAIL = re.compile(r"Key \((?P<columns>.+?)\)(?:=\(| already exists)")


def without_key_values(sqlstate: str, detail: str) -> str | None:
    """PostgreSQL's DETAIL without a value in it: a unique violation's with its key's columns only, which tell
    duplicates_raised which key it was; None for any other (it quotes values: a foreign key's, a failing row)."""
    if sqlstate != _UNIQUE_VIOLATION_SQLSTATE or (key := _POSTGRESQL_KEY_DETAIL.match(detail)) is None:
        return None
    return f"Key ({key['columns']}) already exists."


def _violated_key_is(error: exc.IntegrityError, key: tuple[str, ...]) -> bool:
    """Whether the unique key violated is on the columns `key`.

    SQLite names the columns, for a unique constraint, a unique index and a primary key alike: "UNIQUE
    constraint failed: users.email", or "table.a, table.b" for a key of several. PostgreSQL names the
    constraint or index, which alone cannot say a primary key's columns (people_pkey, pk_people) nor those
    of one named for its purpose (uq_orders_idempotency); its DETAIL lists them (`Database` keeps that much
    of it: without_key_values), and is read first. Without such a DETAIL (a server whose messages are in
    another language; a role that may not read the columns, from which PostgreSQL keeps the key) the name
    decides, whole: uq_<table>_<columns> and ix_<table>_<columns> (a unique index) as the services name them,
    <table>_<columns>_key as PostgreSQL names a unique constraint left unnamed, the columns joined by "_"."""
    if isinstance(error.orig, sqlite3.Error):
        message = str(error.orig)
        if not message.startswith(_SQLITE_UNIQUE_FAILED):
            return False
        named = message.removeprefix(_SQLITE_UNIQUE_FAILED).split(", ")
        return _same_columns([column.rpartition(".")[2] for column in named], key)
    # asyncpg's error, which SQLAlchemy's adapter raised its own from, has the fields PostgreSQL sent apart.
    driver_error = error.orig.__cause__ if error.orig is not None else None
    detail = _POSTGRESQL_KEY_DETAIL.match(getattr(driver_error, "detail", None) or "")
    if detail is not None:
        return _same_columns(detail["columns"].split(", "), key)
    table = getattr(driver_error, "table_name", None)
    joined = "_".join(key)
    names = {f"uq_{table}_{joined}", f"ix_{table}_{joined}", f"{table}_{joined}_key"}
    return table is not None and getattr(driver_error, "constraint_name", None) in names


def _same_columns(columns: list[str], key: tuple[str, ...]) -> bool:
    # A key of several columns is the same key in any order the caller names them.
    return len(columns) == len(key) and set(columns) == set(key)


# What a database write can fail with, for a best-effort one that must not fail its caller (logged by the
# type only: a database error's text may carry the statement's parameters).
DATABASE_ERRORS: tuple[type[Exception], ...] = (exc.SQLAlchemyError, DatabaseUnreachable)


def as_domain_error(error: BaseException) -> DomainError | None:
    """ABORTED for a lost concurrency race, UNAVAILABLE for an unreachable, locked or exhausted database."""
    if isinstance(error, sqlite3.Error):
        # Unwrapped: `Database` begins SQLite transactions on the sqlite3 connection itself, past SQLAlchemy,
        # and BEGIN IMMEDIATE is where a writer finds the database locked.
        return _unavailable() if _sqlite_unavailable(error) else None
    if isinstance(error, exc.DBAPIError):
        sqlstate = _sqlstate(error)
        if sqlstate in _CONFLICT_SQLSTATES:
            return Aborted("concurrent update of the same records; retry", reason="CONCURRENT_UPDATE")
        if isinstance(error.orig, sqlite3.Error):
            unavailable = _sqlite_unavailable(error.orig)
        else:
            unavailable = (
                isinstance(error, exc.OperationalError | exc.InterfaceError)
                or error.connection_invalidated
                or sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES
                or sqlstate in _UNAVAILABLE_SQLSTATES
            )
        return _unavailable() if unavailable else None
    if isinstance(error, exc.TimeoutError | DatabaseUnreachable):  # connection pool exhausted; cannot connect
        return _unavailable()
    return None


def _unavailable(message: str = "database unavailable") -> Unavailable:
    return Unavailable(message, reason=DATABASE_UNAVAILABLE, retry_after_seconds=_RETRY_AFTER_SECONDS)


def database_did_not_answer(within_seconds: float) -> Unavailable:
    """The UNAVAILABLE of a database call its caller cut off after `within_seconds` (an asyncio.timeout
    shorter than the pool's checkout or the driver's connect timeout): the same as the pool timing out
    would be mapped to, so `database_unavailable` and the retry it names treat both alike, and the caller
    need not raise a SQLAlchemy error of its own to say so."""
    return _unavailable(f"no answer from the database within {within_seconds:.3g}s")


def sqlite_primary_code(error: sqlite3.Error) -> int | None:
    """The primary result code of an error SQLite reported (its extended one, SQLITE_BUSY_SNAPSHOT or
    SQLITE_IOERR_WRITE, without the extension), or None: the sqlite3 module refusing the call itself (a value
    it cannot bind, a closed connection)."""
    code = getattr(error, "sqlite_errorcode", None)
    return code & 0xFF if code is not None else None


def _sqlite_unavailable(error: sqlite3.Error) -> bool:
    """By the result code, which SQLite sets on every error it reports. An error without one is the caller's
    bug, as a missing table is."""
    return sqlite_primary_code(error) in _SQLITE_UNAVAILABLE_CODES


def database_unavailable(error: BaseException) -> bool:
    """Whether `error` says the database is away (unreachable, locked or exhausted): a raw driver or pool
    error that `as_domain_error` maps to UNAVAILABLE, or that mapping already made (the decorator below)."""
    mapped = error if isinstance(error, DomainError) else as_domain_error(error)
    return isinstance(mapped, Unavailable) and mapped.reason == DATABASE_UNAVAILABLE


def database_errors_as_domain_errors(operation: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Concurrency conflicts become ABORTED; an unreachable, locked or exhausted database UNAVAILABLE."""

    @functools.wraps(operation)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await operation(*args, **kwargs)
        except (exc.DBAPIError, sqlite3.Error, exc.TimeoutError, DatabaseUnreachable) as error:
            mapped = as_domain_error(error)
            if mapped is None:
                raise
            raise mapped from error

    return wrapper


def cause_line(error: BaseException) -> str:
    """What went wrong, on one line: each error inside an exception group (the TaskGroup of a consumer's pull
    loops wraps what it raised); the driver's error under the UNAVAILABLE a service's decorator raised from it
    (which says only "database unavailable"); SQLAlchemy's message, which spans several lines, joined."""
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(
            cause_line(inner) if isinstance(inner, Exception) else repr(inner) for inner in error.exceptions
        )
    cause = error.__cause__ if isinstance(error, DomainError) and isinstance(error.__cause__, Exception) else error
    return " ".join(f"{type(cause).__name__}: {cause}".split())


class OutageReport:
    """The log lines of a database outage as a loop meets it, not one per failure: `gone` as a warning when it
    starts; while it lasts `still` again as a warning at most every `say_again_seconds`, or at DEBUG on every
    failure when that is None; "<name> reached its database again after N s" at INFO when it is back.

    `gone` and `still` are logging formats over a mapping: %(name)s, %(cause)s (cause_line of the error) and,
    for `still`, %(seconds)f since the outage started."""

    def __init__(
        self, log: logging.Logger, name: str, *, gone: str, still: str, say_again_seconds: float | None
    ) -> None:
        self._log = log
        self._name = name
        self._gone = gone
        self._still = still
        self._say_again = say_again_seconds
        # Since when (monotonic) the database has been away, and when that was last said at WARNING.
        self._since: float | None = None
        self._said = 0.0

    @property
    def ongoing(self) -> bool:
        """Whether the last word on the database was that it is away."""
        return self._since is not None

    def away(self, error: BaseException) -> None:
        """A failure that found the database away (`error`)."""
        now = time.monotonic()
        if self._since is None:
            self._since = self._said = now
            self._log.warning(self._gone, {"name": self._name, "cause": cause_line(error)})
            return
        said = {"name": self._name, "seconds": now - self._since, "cause": cause_line(error)}
        if self._say_again is None:
            self._log.debug(self._still, said)
        elif now - self._said >= self._say_again:
            self._said = now
            self._log.warning(self._still, said)

    def back(self) -> None:
        """A success that reached the database: said once, if it was away."""
        if self._since is not None:
            self._log.info("%s reached its database again after %.0fs", self._name, time.monotonic() - self._since)
            self._since = None
