"""Work that holds the GIL for seconds in one C call, as bindings that never release it do (zxcvbn-rs-py's):
for tests that prove such work does not stall an event loop. A thread running it would: only another process
frees the loop. Module-level functions, so that a process pool can run them (pickled by name)."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

# Backtracks over every way to split the a's before failing at the end: each `a` more doubles the time, and
# the regular-expression engine keeps the GIL throughout one match.
_BACKTRACKING = re.compile(r"(a+)+b")


def _seconds_to_match(length: int) -> float:
    started = time.perf_counter()
    _BACKTRACKING.fullmatch("a" * length)
    return time.perf_counter() - started


def _length_holding(seconds: float) -> int:
    """The length whose match takes `seconds`, from the growth of the last two measured (about twofold per `a`,
    more on some machines: a fixed twofold held for five times as long as asked)."""
    length, took = 12, _seconds_to_match(12)
    while took < seconds / 16:
        length, before, took = length + 1, took, _seconds_to_match(length + 1)
    growth = max(took / max(before, 1e-9), 1.5) if length > 12 else 2.0
    return length + max(0, math.ceil(math.log(seconds / took, growth)))


def holding_the_gil(times_file: str, seconds: float, *_arguments: object) -> bool:
    """Holds the GIL for about `seconds` in one call, with the wall-clock times it started and stopped holding
    written to `times_file` (one line each; the first as it starts). Any further arguments are ignored, so it can
    stand in for a check given its caller's; returns False."""
    length = _length_holding(seconds)
    started = time.time()
    _write(times_file, f"{started!r}\n")
    _BACKTRACKING.fullmatch("a" * length)
    _write(times_file, f"{started!r}\n{time.time()!r}\n")
    return False


def held(times_file: str) -> tuple[float, float | None]:
    """The times `holding_the_gil` started and stopped holding (None while it holds)."""
    times = [float(line) for line in Path(times_file).read_text().split()]
    return times[0], times[1] if len(times) > 1 else None


def _write(path: str, text: str) -> None:
    # Renamed into place: a reader that sees the file sees all of it.
    writing = Path(f"{path}.writing")
    writing.write_text(text)
    writing.replace(path)
