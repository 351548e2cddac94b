"""Password hashing with argon2id (argon2-cffi), off the event loop, a few at a time.

A hash takes tens of milliseconds of CPU by design, so it runs in a worker thread: the service keeps
answering other calls (GetJwks, GetUser) while logins are being checked. Each hash also holds its memory
cost (64 MiB by default) while it runs, so only `concurrency` run at once: with asyncio's thread pool
alone (up to 32 threads, sized by the node's CPUs, not the pod's) 40 concurrent logins for unknown
e-mails took the service from 168 to 504 MB, past its 384 MiB limit. Up to `queue` more wait for a turn;
beyond that a caller is told to come back (RESOURCE_EXHAUSTED with RetryInfo) at once.

A caller with a deadline is also told so at once when its hash would, at worst, not be done by then: those
ahead of it, `concurrency` at a time, then its own, each taking as long as a hash has been taking here (a
moving estimate, measured, seeded by the hash made at start). The queue alone admitted 34 callers at ~0.5 s
a hash, the last finishing after ~8.5 s, while the gateway waits 5 s: its tail waited out the deadline and
ended DEADLINE_EXCEEDED, a server error that showed a busy users as a down one, instead of the refusal
the client could act on. A caller that would start at once is admitted whatever the estimate, so a hash
still runs, and is measured, when the estimate is too high.

A thread cannot be stopped: a caller that gives up (its deadline passed, its client went away) leaves a
hash that runs on. Its turn is therefore given back when the thread is done, not when the caller leaves,
and the hashes run on threads of their own, `concurrency` of them; otherwise each abandoned login would
let one more 64 MiB hash start beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from shopmesh_chassis import call_context
from shopmesh_chassis.errors import Overloaded

P = ParamSpec("P")
R = TypeVar("R")

BUSY_REASON = "PASSWORD_HASHING_BUSY"
BUSY_RETRY_AFTER_SECONDS = 1.0
# Weight of the latest hash in the estimate of how long one takes: it follows the last few hashes, so a node
# that got busier (or quieter) shows within seconds, and one slow hash does not refuse a queue's worth.
HASH_SECONDS_WEIGHT = 0.2
# Registers at or waiting for their guessability estimate at once. Estimates run one at a time, up to ~0.1 s each
# (32 characters of l33t symbols; milliseconds for most passwords): the last of 32, as many as the hashing queue
# holds by default, waits about ~3.2 s at worst, within the gateway's 5 s, while a burst of Registers is refused
# at once rather than queued to wait out its deadline. (With 8, ten concurrent Registers of one address, which
# the store answers all but one ALREADY_EXISTS, had one refused PASSWORD_HASHING_BUSY instead.)
# About: a cancelled Register frees its place, but an estimate already handed to the process runs on (up to two),
# and after the process died the next estimate pays its respawn (~0.6 s, several seconds on a 100m pod).
ESTIMATING_AT_ONCE = 32


def _busy(message: str) -> Overloaded:
    # The service's capacity, not the caller's quota: counted as the chassis' load shedding is.
    return Overloaded(message, reason=BUSY_REASON, retry_after_seconds=BUSY_RETRY_AFTER_SECONDS)


class Passwords:
    def __init__(
        self,
        *,
        time_cost: int,
        memory_kib: int,
        parallelism: int,
        concurrency: int,
        queue: int,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)
        self._clock = clock
        # Checked against when the e-mail is unknown, so that a login for an account that does not exist
        # costs the same hashing as one with a wrong password. Timed: the first measure of a hash here.
        started = clock()
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))
        self._hash_seconds = clock() - started
        self._turns = asyncio.Semaphore(concurrency)
        # Not asyncio's default pool, which others share and which may run 32 threads: this one cannot run
        # more hashes than there are turns, whatever happens to the turns.
        self._threads = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="password-hash")
        self._admitted = 0
        # Callers at their own work before their hash (`before_hash`), counted apart from the admitted hashes.
        self._before_hash = 0
        self._concurrency = concurrency
        self._limit = concurrency + queue

    async def hash(self, password: str) -> str:
        return await self._in_turn(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether `password` matches `password_hash`; with None, does the same work and says no."""
        return await self._in_turn(self._verify, password_hash, password)

    def _verify(self, password_hash: str | None, password: str) -> bool:
        try:
            matched = self._hasher.verify(password_hash or self._dummy_hash, password)
        except (VerificationError, InvalidHashError):
            return False
        return matched and password_hash is not None

    @contextlib.contextmanager
    def before_hash(self) -> Iterator[None]:
        """Bounds work of the caller's own that comes before its hash (Register's guessability estimate, one at a
        time): refused PASSWORD_HASHING_BUSY at once when the hashing queue has no room now, so the work is not
        spent on a check that would be refused, or when `ESTIMATING_AT_ONCE` callers are already at it. Without
        the bound any number would queue for the estimate, each to wait out its deadline there. No place in the
        hashing queue is held meanwhile: it is taken by the hash (`hash`), so that callers still at their own work
        never count against logins, whose hashes the queue is for."""
        self._refuse_if_busy()
        if self._before_hash >= ESTIMATING_AT_ONCE:
            raise _busy("too many registrations being checked at once; retry shortly")
        # The event loop is one thread: counting needs no lock.
        self._before_hash += 1
        try:
            yield
        finally:
            self._before_hash -= 1

    async def _in_turn(self, work: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        self._refuse_if_busy()
        self._admitted += 1
        try:
            # A caller that gives up while waiting here leaves no work behind: the hash has not started.
            await self._turns.acquire()
        except BaseException:
            self._admitted -= 1
            raise
        remaining = call_context.inbound_time_remaining()
        if remaining is not None and remaining <= 0:
            # Its deadline passed while it waited, but the call's cancellation has not reached this task (it comes
            # through grpcio's poller, late on a busy node): its hash would run for no one, holding a turn.
            self._give_back()
            raise _busy("the call's deadline passed while its password check waited for a turn")
        try:
            loop = asyncio.get_running_loop()
            running = loop.run_in_executor(self._threads, functools.partial(self._timed, work, *args, **kwargs))
        except BaseException:  # the threads were shut down (the service is stopping)
            self._give_back()
            raise
        running.add_done_callback(self._done)
        # Shielded: a caller cancelled here stops waiting, but the hash holds its turn until it is done.
        result, _seconds = await asyncio.shield(running)
        return result

    def _refuse_if_busy(self) -> None:
        """PASSWORD_HASHING_BUSY when the admitted checks leave no room, or would, at worst, keep one more from
        being done by its deadline."""
        ahead = self._admitted
        if ahead >= self._limit:
            raise _busy("too many password checks at once; retry shortly")
        remaining = call_context.inbound_time_remaining()
        if remaining is None or ahead < self._concurrency:
            return
        # At worst those ahead have just started: each `concurrency` of them takes a hash's time, then its own.
        finished_in = (ahead // self._concurrency + 1) * self._hash_seconds
        if finished_in > remaining:
            raise _busy("too many password checks ahead to finish before the call's deadline; retry shortly")

    def _timed(self, work: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> tuple[R, float]:
        started = self._clock()
        result = work(*args, **kwargs)
        return result, self._clock() - started

    def _done(self, running: asyncio.Future[tuple[Any, float]]) -> None:
        # On the event loop, as every other read of the estimate; a hash whose caller left counts too.
        if not running.cancelled() and running.exception() is None:
            _result, seconds = running.result()
            self._hash_seconds += HASH_SECONDS_WEIGHT * (seconds - self._hash_seconds)
        self._give_back()

    def _give_back(self) -> None:
        self._admitted -= 1
        self._turns.release()

    async def close(self) -> None:
        """At shutdown, after the server stopped: waits for the hashes still running (a caller that left
        may have started one), off the event loop so the other shutdown hooks keep running."""
        await asyncio.to_thread(self._threads.shutdown, wait=True, cancel_futures=True)

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether the hash was made with other parameters than the configured ones (they were raised)."""
        return self._hasher.check_needs_rehash(password_hash)
