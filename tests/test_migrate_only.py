"""MIGRATE_ONLY=true: a service with a database, started as its image starts it (`python -m shopmesh_<service>`),
brings a fresh database to its heads and exits 0 without ever opening a port. The Helm chart runs it so in the
pod's `migrate` init container, which no probe kills, before the app container (docs/operations.md, "Migrations
and locks")."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from shopmesh_chassis.migrations import alembic_config
from shopmesh_chassis.testing import accepts_connections, free_port, start_process
from shopmesh_chassis.testing.postgres import PostgresServer

from .contract.migration_sql import SERVICE_VERSIONS

# The gateway owns no data: its chart renders no init container, and MIGRATE_ONLY refuses to start it.
SERVICES = {versions.parents[1].name.removeprefix("shopmesh_"): versions for versions in SERVICE_VERSIONS}
# Bounds a hang only: beside other test workers a start's imports alone took over 20 s.
EXIT_BOUND_SECONDS = 120.0


@dataclass
class Run:
    returncode: int | None
    listened: bool
    output: str


def migrate_only(service: str, tmp_path: Path, env: dict[str, str]) -> Run:
    """Run the service with MIGRATE_ONLY=true until it exits (or the bound), watching its gRPC and metrics ports."""
    host, grpc_port, metrics_port = "127.0.0.1", free_port(), free_port()
    process = start_process(
        [sys.executable, "-m", f"shopmesh_{service}"],
        port=grpc_port,
        log_path=tmp_path / f"{service}.log",
        # NATS and SMTP on ports nothing listens on: the migrations need neither.
        env={
            "MIGRATE_ONLY": "true",
            "METRICS_PORT": str(metrics_port),
            "NATS_URL": f"nats://{host}:{free_port()}",
            "SMTP_PORT": str(free_port()),
            **env,
        },
        host=host,
    )
    listened = False
    try:
        deadline = time.monotonic() + EXIT_BOUND_SECONDS
        while process.process.poll() is None and time.monotonic() < deadline:
            listened |= accepts_connections(host, grpc_port, 0.2) or accepts_connections(host, metrics_port, 0.2)
            time.sleep(0.05)
        return Run(process.process.poll(), listened, process.output())
    finally:
        process.stop()


def heads(service: str) -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config(SERVICES[service])).get_heads())


def revisions_in(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return set(MigrationContext.configure(connection).get_current_heads())
    finally:
        engine.dispose()


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_migrate_only_brings_a_fresh_sqlite_database_to_its_heads_and_exits_0_without_listening(
    service: str, tmp_path: Path
) -> None:
    run = migrate_only(service, tmp_path, {"DATA_DIR": str(tmp_path), "SERVICE_NAME": service})
    assert run.returncode == 0, run.output
    assert not run.listened, run.output
    assert revisions_in(f"sqlite:///{tmp_path / service}.db") == heads(service)


def test_migrate_only_brings_a_fresh_postgres_database_to_its_heads_and_exits_0_without_listening(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    # On PostgreSQL each migration commits on its own, under the advisory lock: as in the clusters.
    url = postgres.create_database()
    run = migrate_only(
        "orders", tmp_path, {"DATABASE_URL": url, "IDEMPOTENCY_FINGERPRINT_KEY": "k" * 32, "SERVICE_NAME": "orders"}
    )
    assert run.returncode == 0, run.output
    assert not run.listened, run.output
    assert revisions_in(url.replace("+asyncpg", "+psycopg")) == heads("orders")


def test_migrate_only_refuses_to_start_a_service_without_a_database(tmp_path: Path) -> None:
    # Exit 0 would tell the chart's init container, or whoever set it, that migrations ran.
    run = migrate_only("gateway", tmp_path, {})
    assert run.returncode == 2, run.output
    assert "MIGRATE_ONLY is true but gateway owns no database to migrate" in run.output
    assert not run.listened, run.output
