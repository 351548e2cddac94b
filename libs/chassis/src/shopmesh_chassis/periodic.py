"""Background housekeeping: a job run now and then every `interval_seconds` until stopped.

A failing run is logged and the next one comes on schedule: an error with its traceback, except when the
database is unavailable (`database_unavailable`), which is no bug and would otherwise fill the logs with one
traceback a run for as long as the outage lasts; then one warning when the outage starts and one line when a
run succeeds again, as the event consumers and orders' recovery say it. Stopping lets a run in progress finish its
transaction (cancelling it only past a timeout), so shutdown never leaves half a sweep behind.
A job that works a queue rather than keeping house may wait less: after a failure, from
`retry_after_failure_seconds` doubling up to the interval (its work waits, a whole interval would hold it up);
after a run that found work due sooner, as long as the run asks (`run_within`).
`delete_in_batches` is the purge such a job runs over a table that grows; `in_batches` the same loop for a
purge whose batch is more than one DELETE (rows of several tables, or rows kept elsewhere as they go).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import Column, ColumnElement, Table, delete, select, tuple_

from shopmesh_chassis.backoff import backoff_delay
from shopmesh_chassis.db import Database, DbConnection
from shopmesh_chassis.db_errors import OutageReport, database_unavailable
from shopmesh_chassis.tasks import cancel_and_wait

log = logging.getLogger("shopmesh.periodic")


class Periodic:
    def __init__(
        self,
        name: str,
        interval_seconds: float,
        job: Callable[[], Awaitable[object]],
        *,
        retry_after_failure_seconds: float | None = None,
    ) -> None:
        self.name = name
        self._interval = interval_seconds
        self._job = job
        self._retry_after_failure = retry_after_failure_seconds
        self._failures_in_a_row = 0
        # What the run in progress asked with run_within; None: the interval.
        self._within: float | None = None
        self._stopping = asyncio.Event()
        # Set to end the wait between runs: by stop, or by run_soon.
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # One warning an outage, without the traceback; the runs that fail during it only at DEBUG.
        every = f"every {interval_seconds:.1f}s"
        if retry_after_failure_seconds is not None:
            every = f"again after {retry_after_failure_seconds:.1f}s, the wait doubling up to {interval_seconds:.1f}s,"
        self._outage = OutageReport(
            log,
            name,
            gone=f"%(name)s failed: the database is unavailable; it runs {every} until it "
            "is back, without a line each time: %(cause)s",
            still="%(name)s failed: the database is still unavailable: %(cause)s",
            say_again_seconds=None,
        )

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self, timeout: float = 10.0) -> None:
        if self._task is None:
            return
        self._stopping.set()
        self._wake.set()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
        finally:
            # Past the timeout, or the stop itself cancelled (its shutdown hook cut off at
            # SHUTDOWN_HOOKS_BUDGET_SECONDS): the shield kept the run going, and it must not outlive the stop.
            # A run that already ended is left as it is.
            await cancel_and_wait(self._task)
        self._task = None

    def run_soon(self) -> None:
        """Run the job now instead of after the rest of the interval; after the run in progress, if one is.

        For a job that had to skip a run (what it needs was not there yet): waiting out the interval, it
        might never run at all in a process restarted more often."""
        self._wake.set()

    def run_within(self, seconds: float) -> None:
        """Called by the job during a run: the next run comes at most `seconds` after this one ends (never later
        than the interval), for a job that knows when its next work is due. Only for the wait after this run;
        ignored if the run fails."""
        self._within = seconds if self._within is None else min(self._within, seconds)

    def _pause(self, failed: bool) -> float:
        """The wait after a run."""
        if failed:
            if self._retry_after_failure is None:
                return self._interval
            pause = backoff_delay(self._retry_after_failure, self._failures_in_a_row, cap=self._interval)
            if pause < self._interval:
                # Counted only while the wait still grows: an outage of hours would otherwise count on without
                # end, for waits that all are the interval.
                self._failures_in_a_row += 1
            return pause
        self._failures_in_a_row = 0
        return self._interval if self._within is None else min(max(self._within, 0.0), self._interval)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            # Cleared before the run: a run_soon (or run_within) during it is for the wait after it.
            self._wake.clear()
            self._within = None
            try:
                result = await self._job()
            except Exception as error:
                pause = self._pause(failed=True)
                if database_unavailable(error):
                    self._outage.away(error)
                else:
                    log.exception("%s failed; next run in %.1fs", self.name, pause)
            else:
                pause = self._pause(failed=False)
                log.debug("%s done: %s", self.name, result)
                self._outage.back()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), pause)


async def delete_in_batches(
    database: Database,
    table: Table,
    key: Column[object] | tuple[Column[object], ...],
    condition: ColumnElement[bool],
    *,
    batch_size: int = 500,
) -> int:
    """Delete the rows of `table` matching `condition`, at most `batch_size` per transaction; how many.

    Short transactions, not one long one: each holds the write lock (SQLite's one writer; row locks on
    PostgreSQL) only for its batch, and the service's own writes go in between. `key` names a row within
    the rows matching `condition` (SQLite has no DELETE ... LIMIT): a column, or the columns of a composite
    primary key, so that each batch finds its rows by the key's index. Replicas purging at once delete each
    row once; the later one finds fewer rows and stops."""
    columns = key if isinstance(key, tuple) else (key,)
    named = tuple_(*columns) if len(columns) > 1 else columns[0]
    statement = delete(table).where(condition, named.in_(select(*columns).where(condition).limit(batch_size)))

    async def batch(session: DbConnection) -> int:
        return int((await session.execute(statement)).rowcount or 0)

    return await in_batches(database, batch, batch_size=batch_size)


async def in_batches(database: Database, batch: Callable[[DbConnection], Awaitable[int]], *, batch_size: int) -> int:
    """Run `batch` (which handles at most `batch_size` rows and says how many) in a transaction of its own,
    again until one handles fewer; how many in all. Short transactions, as `delete_in_batches` says why."""
    handled = 0
    while True:
        async with database.transaction() as session:
            count = await batch(session)
        handled += count
        if count < batch_size:
            return handled
        await asyncio.sleep(0)  # let writers queued behind this batch go first
