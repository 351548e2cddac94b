"""Password hashing with argon2id (argon2-cffi), off the event loop, a few at a time.

A hash takes tens of milliseconds of CPU by design, so it runs in a worker thread: the service keeps
answering other calls (GetJwks, GetUser) while logins are being checked. Each hash also holds its memory
cost (64 MiB by default) while it runs, so only `concurrency` run at once: with asyncio's thread pool
alone (up to 32 threads, sized by the node's CPUs, not the pod's) 40 concurrent logins for unknown
e-mails took the service from 168 to 504 MB, past its 384 MiB limit. Up to `queue` more wait for a turn;
beyond that a caller is told to come back (RESOURCE_EXHAUSTED with RetryInfo) at once.

A thread cannot be stopped: a caller that gives up (its deadline passed, its client went away) leaves a
hash that runs on. Its turn is therefore given back when the thread is done, not when the caller leaves,
and the hashes run on threads of their own, `concurrency` of them; otherwise each abandoned login would
let one more 64 MiB hash start beside it.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from shopmesh_chassis.errors import Overloaded

P = ParamSpec("P")
R = TypeVar("R")

BUSY_REASON = "PASSWORD_HASHING_BUSY"
BUSY_RETRY_AFTER_SECONDS = 1.0


class Passwords:
    def __init__(self, *, time_cost: int, memory_kib: int, parallelism: int, concurrency: int, queue: int) -> None:
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)
        # Checked against when the e-mail is unknown, so that a login for an account that does not exist
        # costs the same hashing as one with a wrong password.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))
        self._turns = asyncio.Semaphore(concurrency)
        # Not asyncio's default pool, which others share and which may run 32 threads: this one cannot run
        # more hashes than there are turns, whatever happens to the turns.
        self._threads = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="password-hash")
        self._admitted = 0
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

    async def _in_turn(self, work: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        if self._admitted >= self._limit:
            # The service's capacity, not the caller's quota: counted as the chassis' load shedding is.
            raise Overloaded(
                "too many password checks at once; retry shortly",
                reason=BUSY_REASON,
                retry_after_seconds=BUSY_RETRY_AFTER_SECONDS,
            )
        # The event loop is one thread: counting needs no lock.
        self._admitted += 1
        try:
            # A caller that gives up while waiting here leaves no work behind: the hash has not started.
            await self._turns.acquire()
        except BaseException:
            self._admitted -= 1
            raise
        try:
            loop = asyncio.get_running_loop()
            running = loop.run_in_executor(self._threads, functools.partial(work, *args, **kwargs))
        except BaseException:  # the threads were shut down (the service is stopping)
            self._give_back()
            raise
        running.add_done_callback(self._give_back)
        # Shielded: a caller cancelled here stops waiting, but the hash holds its turn until it is done.
        return await asyncio.shield(running)

    def _give_back(self, _done: object = None) -> None:
        self._admitted -= 1
        self._turns.release()

    async def close(self) -> None:
        """At shutdown, after the server stopped: waits for the hashes still running (a caller that left
        may have started one), off the event loop so the other shutdown hooks keep running."""
        await asyncio.to_thread(self._threads.shutdown, wait=True, cancel_futures=True)

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether the hash was made with other parameters than the configured ones (they were raised)."""
        return self._hasher.check_needs_rehash(password_hash)
