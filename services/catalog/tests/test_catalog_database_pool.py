"""The catalog opens its PostgreSQL pool as its settings size it (DATABASE_POOL_SIZE, DATABASE_MAX_OVERFLOW):
the Helm charts' connection budget holds only if every service's wiring takes them.

The pool here has no overflow: an overflow connection is closed when handed back to a full pool, and its
server process leaves pg_stat_activity a moment later, so with one a new connection could be counted beside
a closing one (3 of 1 + 1 seen in CI). Both settings still count: the defaults (4 + 2) would open 4 or more."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text

from shopmesh_catalog.wiring import build
from shopmesh_chassis.testing.postgres import PostgresServer

from .conftest import catalog_settings

_BACKENDS = text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")


async def test_the_catalog_holds_no_more_postgresql_connections_than_its_pool_settings(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    settings = catalog_settings(
        tmp_path, database_url=postgres.create_database(), database_pool_size=2, database_max_overflow=0
    )
    catalog = await build(settings)
    seen: list[int] = []

    async def a_read() -> None:
        async with catalog.database.read() as session:
            await session.execute(text("SELECT pg_sleep(0.1)"))
            # Every backend of this database is the catalog's: nothing else connects to it.
            seen.append(await session.scalar(_BACKENDS) or 0)

    try:
        await asyncio.wait_for(asyncio.gather(*(a_read() for _ in range(6))), timeout=60)
    finally:
        await catalog.database.dispose()
    assert len(seen) == 6
    assert max(seen) <= 2, f"the catalog held {max(seen)} connections with a pool of 2 + 0"
