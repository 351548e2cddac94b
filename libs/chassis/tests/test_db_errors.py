"""Which database failures are the database's (UNAVAILABLE, retry) and which a lost race (ABORTED)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import exc as sqlalchemy_exc
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError

from shopmesh_chassis.db import Database
from shopmesh_chassis.db_errors import (
    DATABASE_UNAVAILABLE,
    DatabaseUnreachable,
    Duplicate,
    as_domain_error,
    database_did_not_answer,
    database_unavailable,
    duplicates_raised,
    server_said,
)
from shopmesh_chassis.errors import CONFLICT_RETRY_AFTER_SECONDS, Aborted, Unavailable
from shopmesh_chassis.testing import free_port
from shopmesh_chassis.testing.postgres import PostgresServer


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


def test_a_call_cut_off_without_an_answer_is_unavailable_as_a_pool_timeout_is_with_the_same_wait() -> None:
    cut_off = database_did_not_answer(2.0)
    assert database_unavailable(cut_off)
    pool_timeout = as_domain_error(sqlalchemy_exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached"))
    assert isinstance(pool_timeout, Unavailable)
    assert (cut_off.reason, cut_off.retry_after_seconds) == (pool_timeout.reason, pool_timeout.retry_after_seconds)
    assert "no answer from the database within 2s" in str(cut_off)


@pytest.mark.parametrize("sqlstate", ["40001", "40P01"])
def test_a_lost_race_is_aborted_with_a_short_retry_delay(sqlstate: str) -> None:
    mapped = as_domain_error(failed(sqlstate))
    assert isinstance(mapped, Aborted)
    # money.proto: CONCURRENT_UPDATE is safe to retry; the RetryInfo says how soon.
    assert mapped.reason == "CONCURRENT_UPDATE"
    assert mapped.retry_after_seconds == CONFLICT_RETRY_AFTER_SECONDS


@pytest.mark.parametrize("sqlstate", ["23505", "22P02", "42P01"])
def test_a_statement_the_database_refuses_is_nobody_elses_fault(sqlstate: str) -> None:
    assert as_domain_error(failed(sqlstate)) is None
    assert not database_unavailable(failed(sqlstate))


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("postgresql://shop@127.0.0.1:{closed_port}/shop", id="refused"),
        pytest.param("postgresql://shop@/shop?host=/nonexistent-socket-dir", id="no-unix-socket"),
        pytest.param("postgresql://shop@db.invalid:5432/shop", id="unresolvable-host"),
    ],
)
@pytest.mark.parametrize("use", ["transaction", "read"])
async def test_a_postgresql_that_cannot_be_reached_is_unavailable(url: str, use: str) -> None:
    # The closed port is picked now, not at collection, when a server started meanwhile could take it.
    database = Database(url.format(closed_port=free_port()))
    try:
        with pytest.raises(DatabaseUnreachable) as caught:
            async with getattr(database, use)():
                pass
    finally:
        await database.dispose()
    assert database_unavailable(caught.value)


async def test_an_oserror_of_the_callers_own_is_not_a_database_outage(blank_db: Database) -> None:
    """A handler that cannot open a file of its own is at fault itself: a consumer parks its message after
    its attempts instead of waiting for a database that is there."""

    async def use_a_missing_file() -> None:
        async with blank_db.transaction() as connection:
            await connection.execute(text("SELECT 1"))
            raise FileNotFoundError(2, "No such file or directory", "/nonexistent/template.txt")

    with pytest.raises(FileNotFoundError) as caught:
        await use_a_missing_file()
    assert not isinstance(caught.value, DatabaseUnreachable)
    assert as_domain_error(caught.value) is None
    assert not database_unavailable(caught.value)


async def _two_unique_keys(database: Database) -> None:
    async with database.transaction() as connection:
        await connection.execute(
            text(
                "CREATE TABLE people (id TEXT PRIMARY KEY, email TEXT NOT NULL CONSTRAINT uq_people_email UNIQUE, "
                "email_token TEXT CONSTRAINT uq_people_email_token UNIQUE)"
            )
        )
        await connection.execute(
            text("INSERT INTO people (id, email, email_token) VALUES ('p1', 'a@example.com', 't1')")
        )


async def _insert(
    database: Database, person_id: str, email: str | None, key: str | None = None, email_token: str | None = None
) -> None:
    async with database.transaction() as connection:
        with duplicates_raised(key):
            await connection.execute(
                text("INSERT INTO people (id, email, email_token) VALUES (:id, :email, :email_token)"),
                {"id": person_id, "email": email, "email_token": email_token},
            )


@pytest.mark.parametrize(
    ("person_id", "email"),
    [pytest.param("p1", "b@example.com", id="primary-key"), pytest.param("p2", "a@example.com", id="unique-column")],
)
async def test_an_insert_meeting_a_unique_key_raises_duplicate(blank_db: Database, person_id: str, email: str) -> None:
    await _two_unique_keys(blank_db)
    with pytest.raises(Duplicate) as caught:
        await _insert(blank_db, person_id, email)
    assert isinstance(caught.value.__cause__, IntegrityError)
    # The key's value stays out of the message: the driver's DETAIL names it.
    assert "example.com" not in str(caught.value)


async def test_a_duplicate_of_another_key_than_the_one_named_stays_the_drivers_error(blank_db: Database) -> None:
    await _two_unique_keys(blank_db)
    with pytest.raises(Duplicate):
        await _insert(blank_db, "p2", "a@example.com", key="email")
    with pytest.raises(IntegrityError):
        await _insert(blank_db, "p1", "b@example.com", key="email")


async def test_an_integrity_error_other_than_a_unique_key_is_no_duplicate(blank_db: Database) -> None:
    await _two_unique_keys(blank_db)
    with pytest.raises(IntegrityError):
        await _insert(blank_db, "p2", None)


async def test_a_duplicate_of_a_key_whose_name_contains_the_one_named_stays_the_drivers_error(
    blank_db: Database,
) -> None:
    """email_token is not email, though its column and constraint name say "email" too (and PostgreSQL's
    DETAIL repeats them): matched by the whole name, not found somewhere in the driver's message."""
    await _two_unique_keys(blank_db)
    with pytest.raises(IntegrityError):  # not Duplicate, which is no IntegrityError
        await _insert(blank_db, "p2", "b@example.com", key="email", email_token="t1")


# Each way the services' schemas can declare a unique key, with the key's columns as a store names them.
UNIQUE_KEYS = [
    pytest.param(["CREATE TABLE accounts (id TEXT PRIMARY KEY, a TEXT, b TEXT)"], ("id",), id="primary-key-pkey"),
    pytest.param(
        ["CREATE TABLE accounts (id TEXT, a TEXT, b TEXT, CONSTRAINT pk_accounts PRIMARY KEY (id))"],
        ("id",),
        id="primary-key-named-pk",
    ),
    pytest.param(
        [
            "CREATE TABLE accounts (id TEXT PRIMARY KEY, a TEXT, b TEXT)",
            "CREATE UNIQUE INDEX ix_accounts_a ON accounts (a)",
        ],
        ("a",),
        id="unique-index",
    ),
    pytest.param(
        ["CREATE TABLE accounts (id TEXT PRIMARY KEY, a TEXT UNIQUE, b TEXT)"], ("a",), id="unique-column-unnamed"
    ),
    pytest.param(
        ["CREATE TABLE accounts (id TEXT PRIMARY KEY, a TEXT, b TEXT, CONSTRAINT uq_accounts_a_b UNIQUE (a, b))"],
        ("a", "b"),
        id="several-columns",
    ),
    pytest.param(
        ["CREATE TABLE accounts (id TEXT PRIMARY KEY, a TEXT, b TEXT, CONSTRAINT uq_accounts_a_b UNIQUE (a, b))"],
        ("b", "a"),
        id="several-columns-named-in-another-order",
    ),
    pytest.param(
        ["CREATE TABLE accounts (id TEXT PRIMARY KEY, a TEXT, b TEXT, CONSTRAINT uq_accounts_pair UNIQUE (a, b))"],
        ("a", "b"),
        id="several-columns-named-for-their-purpose",
    ),
]
FIRST = {"id": "r1", "a": "x", "b": "y"}


async def _create(database: Database, statements: list[str]) -> None:
    async with database.transaction() as connection:
        for statement in statements:
            await connection.execute(text(statement))
        await connection.execute(text("INSERT INTO accounts (id, a, b) VALUES (:id, :a, :b)"), FIRST)


async def _insert_same(
    database: Database, columns: tuple[str, ...], key: str | tuple[str, ...], *, role: str | None = None
) -> None:
    """Insert a row that repeats the first one's `columns` only, under duplicates_raised(key) (as `role`)."""
    row = {"id": "r2", "a": "x2", "b": "y2"} | {column: FIRST[column] for column in columns}
    async with database.transaction() as connection:
        if role is not None:
            await connection.execute(text(f"SET LOCAL ROLE {role}"))
        with duplicates_raised(key):
            await connection.execute(text("INSERT INTO accounts (id, a, b) VALUES (:id, :a, :b)"), row)


@pytest.mark.parametrize(("statements", "columns"), UNIQUE_KEYS)
async def test_a_duplicate_of_the_key_named_is_a_duplicate_whatever_declares_the_key(
    blank_db: Database, statements: list[str], columns: tuple[str, ...]
) -> None:
    await _create(blank_db, statements)
    with pytest.raises(Duplicate):
        await _insert_same(blank_db, columns, columns[0] if len(columns) == 1 else columns)


async def test_a_duplicate_of_a_key_of_several_columns_is_not_one_of_a_key_on_one_of_them(blank_db: Database) -> None:
    await _create(
        blank_db,
        ["CREATE TABLE accounts (id TEXT PRIMARY KEY, a TEXT, b TEXT, CONSTRAINT uq_accounts_a_b UNIQUE (a, b))"],
    )
    with pytest.raises(IntegrityError):  # not Duplicate, which is no IntegrityError
        await _insert_same(blank_db, ("a", "b"), "a")
    with pytest.raises(IntegrityError):
        await _insert_same(blank_db, ("a", "b"), ("a", "b", "id"))


@pytest.mark.parametrize(
    ("statements", "columns", "named"),
    [
        pytest.param(*UNIQUE_KEYS[2].values, True, id="unique-index-ix"),
        pytest.param(*UNIQUE_KEYS[3].values, True, id="unique-column-unnamed"),
        pytest.param(*UNIQUE_KEYS[4].values, True, id="several-columns-uq"),
        pytest.param(
            ["CREATE TABLE accounts (id TEXT PRIMARY KEY, a TEXT, b TEXT, CONSTRAINT uq_accounts_a UNIQUE (a))"],
            ("a",),
            True,
            id="one-column-uq",
        ),
        # The name cannot say these keys' columns: the driver's error, as before the DETAIL was read.
        pytest.param(*UNIQUE_KEYS[0].values, False, id="primary-key-pkey"),
        pytest.param(*UNIQUE_KEYS[6].values, False, id="several-columns-named-for-their-purpose"),
    ],
)
async def test_on_postgresql_without_the_keys_detail_the_key_is_known_by_its_conventional_name(
    postgres: PostgresServer, statements: list[str], columns: tuple[str, ...], named: bool
) -> None:
    """A role that may insert but not read the columns gets no "Key (...)=(...)" DETAIL (PostgreSQL keeps the
    values from it), as a server whose messages are in another language sends none that reads as one."""
    database = Database(postgres.create_database())
    role = f"writer_{uuid.uuid4().hex}"
    try:
        await _create(database, statements)
        async with database.transaction() as connection:
            await connection.execute(text(f"CREATE ROLE {role} NOLOGIN"))
            await connection.execute(text(f"GRANT INSERT ON accounts TO {role}"))
        with pytest.raises(Duplicate if named else IntegrityError) as caught:
            await _insert_same(database, columns, columns[0] if len(columns) == 1 else columns, role=role)
        violation = caught.value.__cause__ if named else caught.value
        assert isinstance(violation, IntegrityError)
        driver_error = violation.orig.__cause__ if violation.orig is not None else None
        assert getattr(driver_error, "detail", "?") is None, "a DETAIL was sent: this proves nothing of the name"
    finally:
        async with database.transaction() as connection:
            await connection.execute(text(f"DROP OWNED BY {role}"))
            await connection.execute(text(f"DROP ROLE IF EXISTS {role}"))
        await database.dispose()


class _SilentDriverError(Exception):
    sqlstate = "57P01"


def test_what_the_server_said_is_named_by_the_drivers_error_type_when_it_said_nothing() -> None:
    # A connect failure or migration error whose driver message is empty must still be reported, not raise.
    error = DBAPIError("SELECT 1", {}, _SilentDriverError(""))
    assert server_said(error) == ("_SilentDriverError", "57P01")
