"""The shared pytest plugin drops the databases a test module made on the session's PostgreSQL once the module
is done: a worker of `make test` kept every one to the end of the run (hundreds of copies of template0, GBs
written back to disk while tests ran and deleted file by file at the very end, a minute and more)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FIRST = """
import pathlib

import pytest


@pytest.fixture(scope="module")
def module_database(postgres):
    # A module-scoped fixture's database: still there for the module's last test.
    return postgres.create_database().rsplit("/", 1)[1]


def test_makes_databases(postgres, module_database):
    names = [module_database, postgres.create_database().rsplit("/", 1)[1]]
    pathlib.Path(__file__).with_name("first.txt").write_text(" ".join(names))


def test_the_modules_database_lasts_the_module(postgres, module_database):
    assert module_database in databases(postgres)


def databases(postgres):
    import subprocess

    listed = subprocess.run(
        [str(postgres.bin_dir / "psql"), postgres.url(driver="postgresql"), "-Atc", "SELECT datname FROM pg_database"],
        capture_output=True, text=True, check=True,
    )
    return listed.stdout.split()
"""

SECOND = """
import pathlib

from test_a_first import databases


def test_the_first_modules_databases_are_gone(postgres):
    made = pathlib.Path(__file__).with_name("first.txt").read_text().split()
    mine = postgres.create_database().rsplit("/", 1)[1]
    listed = databases(postgres)
    assert mine in listed
    assert not set(made) & set(listed), f"left over: {set(made) & set(listed)}"
"""


def test_a_modules_databases_are_dropped_when_the_module_is_done(tmp_path: Path) -> None:
    (tmp_path / "test_a_first.py").write_text(FIRST)
    (tmp_path / "test_b_second.py").write_text(SECOND)
    isolated = ["--rootdir", str(tmp_path), "-c", "/dev/null", "-p", "shopmesh_chassis.testing.pytest_plugin"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *isolated, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 passed" in run.stdout, run.stdout
