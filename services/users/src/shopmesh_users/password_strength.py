"""How guessable a new password is, by zxcvbn's estimate (zxcvbn-rs, through its Python bindings).

NIST SP 800-63B 5.1.1.2 asks that a new password be refused when it is on a list of commonly used or compromised
values, or is a context-specific word (the service's name, the username). zxcvbn estimates the guesses an
attacker needs, from its bundled lists (the most common passwords of public breaches, English words, names and
surnames, words of television and films) and the patterns people build from them (l33t substitutions, keyboard
walks, repeats, sequences, dates), with the caller's words (the e-mail address) as a list of their own: so
"12345678", "password1" and the e-mail address itself all count as guessable. The Rust port is used, not the pure
Python zxcvbn, which took ~0.7 s of CPU for 24 characters of l33t symbols (the Rust one ~0.07 s).

The estimate runs in a process of its own (`PasswordStrength`), not on the event loop nor in a thread: the
bindings hold the GIL for the whole estimate, so a thread frees nothing (measured: a loop ticking every
millisecond beside `asyncio.to_thread(zxcvbn, ...)` stalled for the estimate's full length), and every other call
of the replica waited for each Register's estimate.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from zxcvbn_rs_py import zxcvbn

from shopmesh_chassis.errors import Unavailable
from shopmesh_users.domain.validation import GuessableCheck
from shopmesh_users.metrics import EstimateFailure

# zxcvbn's scores 0 and 1: fewer than about a million guesses, what an attacker makes online against a service
# that throttles logins, or in seconds against a leaked hash.
MIN_SCORE = 2
# Only a password's first characters are estimated: the estimate's cost grows faster than the length (128
# characters of l33t symbols held the event loop for seconds, 32 for about 0.1 s, on a loaded machine). A
# password whose first 32 characters are hard to guess is no easier whole; one whose first 32 are guessable
# ("a" * 32 and anything) is refused.
ESTIMATED_CHARACTERS = 32
# A context-specific word for every account (NIST's example: the name of the service).
SERVICE_WORDS = ("shopmesh",)


def too_guessable(password: str, context: Sequence[str]) -> bool:
    """Whether `password` is too easy to guess, given the words of the account it is for (`context`: its e-mail
    address and the parts of it, which zxcvbn matches in any letter case)."""
    words = [word for word in (*context, *SERVICE_WORDS) if word]
    estimate = zxcvbn(password[:ESTIMATED_CHARACTERS], user_inputs=words)
    return int(estimate.score) < MIN_SCORE


# Answered for an estimate asked after `PasswordStrength.close` (the service is stopping): another replica can
# answer the Register.
STOPPED_REASON = "PASSWORD_STRENGTH_STOPPED"
STOPPED_RETRY_AFTER_SECONDS = 1.0

# How often the estimating process looks whether the service that started it is still there.
PARENT_CHECK_SECONDS = 1.0


def _estimating_process_started(parent: int) -> None:
    # Ctrl-C in a terminal reaches the whole process group: the service stops the pool itself, and a worker
    # interrupted mid-wait would only print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A service killed outright (SIGKILL, the OOM killer) closes nothing, and the worker holds both ends of its
    # own queue, so it would wait for work forever, outliving the service.
    threading.Thread(target=_end_with, args=(parent,), name="parent-watch", daemon=True).start()


def _end_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(1)


def _uncounted(_cause: EstimateFailure) -> None:
    pass


class PasswordStrength:
    """Runs `estimate` (a module-level function: it is pickled by name) in one process of its own, started by
    `start` or else the first estimate. One at a time is enough: Registers at their estimate are bounded
    (`Passwords.before_hash`), so only a few wait for it, and an estimate takes milliseconds. A process that died
    (killed, out of memory) is replaced by the next estimate's, which is tried once more on it. Each estimate that
    fails is told to `on_failure` with its cause (`UsersMetrics.estimate_failed`): a process that keeps failing
    fails every Register while the service reports SERVING."""

    def __init__(
        self, estimate: GuessableCheck = too_guessable, on_failure: Callable[[EstimateFailure], None] = _uncounted
    ) -> None:
        self._estimate = estimate
        self._on_failure = on_failure
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False

    def _started(self) -> ProcessPoolExecutor:
        if self._closed:
            self._on_failure("stopped")
            # Not a new process: nothing would close it.
            raise Unavailable(
                "the service is stopping; retry on another replica",
                reason=STOPPED_REASON,
                retry_after_seconds=STOPPED_RETRY_AFTER_SECONDS,
            )
        if self._pool is None:
            # Not fork: the service's gRPC threads and their locks would be copied mid-use into the child.
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_estimating_process_started,
                initargs=(os.getpid(),),
            )
        return self._pool

    async def start(self) -> None:
        """At the service's startup: the process started and zxcvbn loaded by a throwaway estimate, or the first
        Register pays for them (~0.6 s measured, far more on a pod of a tenth of a CPU, against the gateway's 5 s
        USERS_TIMEOUT_SECONDS)."""
        await self.too_guessable(SERVICE_WORDS[0], [])

    async def too_guessable(self, password: str, context: Sequence[str]) -> bool:
        words = list(context)
        pool = self._started()
        try:
            return await self._estimated_on(pool, password, words, retry=False)
        except BrokenProcessPool:
            # Every estimate in flight on the dead process ends here: the first to come back replaces it, and the
            # others retry on its replacement rather than replace that in turn.
            if self._pool is pool:
                self._pool = None
                pool.shutdown(wait=False)
            return await self._estimated_on(self._started(), password, words, retry=True)

    async def _estimated_on(self, pool: ProcessPoolExecutor, password: str, words: list[str], *, retry: bool) -> bool:
        """The estimate's answer from `pool`'s process; its failure told to `on_failure`, but for the first death of
        a process, which is retried. A cancelled estimate (its caller left, the warm-up's bound) is no failure of
        the process'."""
        try:
            # Submitted here, not by the caller: a pool already broken refuses the submission itself.
            return await asyncio.get_running_loop().run_in_executor(pool, self._estimate, password, words)
        except BrokenProcessPool:
            if retry:
                self._on_failure("broken")
            raise
        except Exception:
            self._on_failure("error")
            raise

    async def close(self) -> None:
        """At shutdown: waits for the estimate still running, off the event loop, and ends the process. An
        estimate asked after is answered UNAVAILABLE."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
