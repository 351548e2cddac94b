"""`--reset`: what it deletes (the stack's data, its sockets' folder), what it says, and what it refuses."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from shopmesh_platform import run
from shopmesh_platform.processes import StackError
from shopmesh_platform.stack import SOCKETS_PREFIX

from .run_kit import ctrl_c, launched


def test_reset_wipes_a_data_directory_but_refuses_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    (data / "nats").mkdir(parents=True)
    (data / "catalog.db").write_bytes(b"")
    monkeypatch.chdir(tmp_path)

    run.reset_data_dir(Path("data"))
    assert list(data.iterdir()) == []
    with pytest.raises(StackError, match="refusing to --reset"):
        run.reset_data_dir(Path("."))
    assert tmp_path.exists()


def test_reset_also_removes_the_sockets_folder_a_killed_launcher_left_outside_the_data_directory(
    tmp_path: Path,
) -> None:
    """The sockets' folder is in /tmp, behind `mesh/sockets`: emptying the data directory alone would leave it."""
    left = Path(tempfile.mkdtemp(prefix=SOCKETS_PREFIX, dir="/tmp"))
    try:
        (left / "catalog.sock").touch()
        data = tmp_path / "data"
        (data / "mesh").mkdir(parents=True)
        (data / "mesh" / "sockets").symlink_to(left)
        run.reset_data_dir(data)
        assert list(data.iterdir()) == []
        assert not left.exists()
    finally:
        shutil.rmtree(left, ignore_errors=True)


def test_reset_says_what_it_deleted(tmp_path: Path) -> None:
    """A new user's orders, accounts and e-mails vanished without a word: the line names what went."""
    data = tmp_path / "data"
    for folder in ("nats", "mail", "traces"):
        (data / folder).mkdir(parents=True)
    for name in ("catalog.db", "catalog.db-wal", "orders.db", "orders.fingerprint-key", "stack.json"):
        (data / name).write_bytes(b"")

    said = run.reset_data_dir(data)
    assert list(data.iterdir()) == []
    assert said == (
        f"--reset: deleted {data} (the SQLite databases of catalog, orders; the idempotency keys of orders; "
        "mail, nats, stack.json, traces)"
    )


async def test_the_launcher_says_what_reset_deleted_before_it_starts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "mail").mkdir(parents=True)
    (data / "catalog.db").write_bytes(b"")
    async with launched(data, "--services", "", "--http-port", "0", "--reset") as (process, lines):
        said = f"--reset: deleted {data} (the SQLite databases of catalog; mail)"
        assert said in lines, lines[:5]
        assert lines.index(said) < next(i for i, line in enumerate(lines) if line.startswith("starting "))
        await ctrl_c(process)


def test_reset_refuses_a_directory_that_holds_more_than_the_stacks_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `make run RUN_ARGS="--reset --data-dir docs"` (or `/tmp`, a typo for `/tmp/shop`): a folder of someone's
    # files, neither the working directory, nor a parent, nor home, nor a repository root. --reset deletes
    # the stack's data; it must not delete a folder the stack never wrote.
    (tmp_path / ".git").mkdir()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "architecture.md").write_text("# the only copy\n")
    (docs / "notes").mkdir()
    (docs / "notes" / "ideas.txt").write_text("unsaved work\n")
    monkeypatch.chdir(tmp_path)

    with pytest.raises(StackError, match="refusing to --reset"):
        run.reset_data_dir(Path("docs"))
    assert (docs / "architecture.md").read_text() == "# the only copy\n"


def test_reset_takes_the_postgresql_log_folder_for_the_stacks_and_deletes_it(tmp_path: Path) -> None:
    """`make run --postgres` writes postgres/server.log: taken for someone else's, it made --reset refuse."""
    data = tmp_path / "data"
    (data / "postgres").mkdir(parents=True)
    (data / "postgres" / "server.log").write_text("ERROR:  division by zero\n")

    said = run.reset_data_dir(data)
    assert list(data.iterdir()) == []
    assert "postgres" in said
