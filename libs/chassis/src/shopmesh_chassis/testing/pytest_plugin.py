"""Fixtures every shopmesh test suite shares, loaded for the whole run (`-p` in pyproject's addopts).

- tracing as in a service process: spans exist (trace ids in logs and errors), nothing is exported;
- `postgres`: one throwaway PostgreSQL server for the whole session; tests make their own databases on
  it with `postgres.create_database()`;
- `nats_srv`: a nats-server with JetStream of the test's own, on a free port, its store under tmp_path;
- `blank_db`: an empty database of each kind the services run on (the test runs once on each): SQLite in
  tmp_path, and one on the throwaway PostgreSQL; disposed after;
- `away_from_utc`: the process in a zone off UTC for the test, so that a time written in local time, not
  UTC, shows (log lines, `make traces`).

A skipped or xfailed test fails the run: a test that cannot run here (a tool missing) must say so loudly,
not turn the suite green without it.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from shopmesh_chassis.db import Database
from shopmesh_chassis.testing.nats_server import NatsServer, nats_server
from shopmesh_chassis.testing.postgres import PostgresServer, postgres_server
from shopmesh_chassis.tracing import configure_tracing


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    _fail_a_skip(outcome.get_result(), item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    # A module skipped while collected (pytest.importorskip, skip(allow_module_level=True)): "a tool is missing".
    outcome = yield
    _fail_a_skip(outcome.get_result(), collector.nodeid)


def _fail_a_skip(report: pytest.TestReport | pytest.CollectReport, nodeid: str) -> None:
    # An xfail, failing as expected or passing, is a skip too; pytest counts no failure that keeps `wasxfail`.
    xfail = hasattr(report, "wasxfail")
    if report.skipped or xfail:
        why = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr or "xfail")
        report.outcome = "failed"
        if xfail:
            del report.wasxfail
        report.longrepr = f"{nodeid} was skipped ({why}): shopmesh's tests never skip; make it run or fail"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # pytest-xdist hands out tests by node id: of tests sharing one, a single one runs, and the rest pass unseen.
    # schemathesis's per-operation tests share their function's id under pytest 9.2 (which builds an id from a
    # test's callspec, and they have none: the operation is only in the name, `test_x[GET /v1/products]`): under
    # `make test` one operation of ten was fuzzed. Such a test gets its name's brackets as its id's parameters,
    # first: before --deselect and -k leave tests out (by id; alone, a test would keep the shared id), so a test's
    # id is the same in every run and the one its report shows deselects it.
    shared = Counter(item.nodeid for item in items)
    for item in items:
        base, bracket, params = item.name.partition("[")
        if shared[item.nodeid] > 1 and bracket and params.endswith("]") and item.parent is not None:
            item._id = item.parent.id.child(base).with_params(params[:-1])
    still = sorted(nodeid for nodeid, count in Counter(item.nodeid for item in items).items() if count > 1)
    if still:
        raise pytest.UsageError(f"tests share a node id, and pytest-xdist would run one of each: {', '.join(still)}")


@pytest.fixture(scope="session", autouse=True)
def _tracing() -> None:
    configure_tracing("shopmesh-tests", endpoint=None)


# The session's `postgres` server, once a test has asked for it.
_session_postgres: list[PostgresServer] = []


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        _session_postgres.append(server)
        try:
            yield server
        finally:
            _session_postgres.remove(server)


@pytest.fixture(scope="module", autouse=True)
def _drop_the_modules_databases() -> Iterator[None]:
    """Drops the databases a test module made on the session's `postgres` once the module is done (its own
    module-scoped fixtures, set up after this one, are torn down before it), so that a worker's server holds
    one module's databases, not the whole run's. No fixture wider than a module makes one."""
    before = len(_session_postgres[0].created) if _session_postgres else 0
    yield
    if not _session_postgres:
        return
    server = _session_postgres[0]
    # A test that stopped the server and left it stopped: its databases go with the server's folder.
    with contextlib.suppress(subprocess.CalledProcessError):
        server.drop_databases(server.created[before:])
    del server.created[before:]


@pytest.fixture
def nats_srv(tmp_path: Path) -> Iterator[NatsServer]:
    with nats_server(tmp_path / "nats") as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
async def blank_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "postgresql":
        database = Database(request.getfixturevalue("postgres").create_database())
    else:
        database = Database(f"sqlite:///{tmp_path}/blank.db")
    yield database
    await database.dispose()


@pytest.fixture
def away_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process in a zone 5 h 30 min east of UTC (a POSIX TZ string: no zone database needed), its
    own zone again after (tzset once TZ is restored: the C library keeps the zone it read last)."""
    monkeypatch.setenv("TZ", "IST-5:30")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()
