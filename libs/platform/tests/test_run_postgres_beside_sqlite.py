"""`make run RUN_ARGS=--postgres` on a data directory that holds the SQLite databases of runs without it: the
services started quietly on empty PostgreSQL databases, and a user took their data for lost. One warning line
names the files left unused and how to use them."""

from __future__ import annotations

from pathlib import Path

from shopmesh_platform import run

from .run_kit import ctrl_c, launched

POSTGRES_ONLY = ("--services", "", "--http-port", "0", "--postgres")
STARTING_POSTGRES = "starting a throwaway PostgreSQL server ..."


def earlier_sqlite_run(data: Path) -> None:
    """What a run without --postgres leaves: the services' SQLite files, their journals and keys, NATS' store."""
    (data / "nats").mkdir(parents=True)
    for name in ("catalog.db", "catalog.db-wal", "orders.db", "orders.fingerprint-key"):
        (data / name).write_bytes(b"")


async def test_postgres_on_a_data_directory_of_sqlite_databases_warns_that_they_are_not_used(tmp_path: Path) -> None:
    data = tmp_path / "data"
    earlier_sqlite_run(data)
    async with launched(data, *POSTGRES_ONLY, ready_within=120) as (process, lines):
        [warning] = [line for line in lines if line.startswith("warning: --postgres")]
        assert "(catalog.db, orders.db) are not used: run without --postgres to use them" in warning, warning
        assert str(data) in warning, warning
        assert lines.index(warning) < lines.index(STARTING_POSTGRES), "said before the start, not lost in it"
        await ctrl_c(process)
    assert (data / "catalog.db").exists(), "nothing of the SQLite data is touched"


async def test_postgres_with_reset_says_what_it_deleted_and_no_warning(tmp_path: Path) -> None:
    data = tmp_path / "data"
    earlier_sqlite_run(data)
    async with launched(data, *POSTGRES_ONLY, "--reset", ready_within=120) as (process, lines):
        assert not [line for line in lines if line.startswith("warning:")], lines
        assert any(
            line.startswith(f"--reset: deleted {data} (the SQLite databases of catalog, orders") for line in lines
        )
        await ctrl_c(process)


def test_a_data_directory_without_sqlite_databases_has_nothing_to_warn_of(tmp_path: Path) -> None:
    (tmp_path / "nats").mkdir()
    (tmp_path / "postgres").mkdir()
    (tmp_path / "orders.fingerprint-key").write_bytes(b"")
    (tmp_path / "notes.db").write_bytes(b"")  # no service's
    assert run.unused_sqlite_warning(tmp_path) is None
    assert run.unused_sqlite_warning(tmp_path / "not-there") is None
