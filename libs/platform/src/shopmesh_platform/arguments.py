"""Argument types for the platform's command lines: a number outside what the tool can use is a usage error
(argparse's exit 2 with the usage line), not a traceback, a busy loop or a wait that never ends."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def whole_number(minimum: int) -> Callable[[str], int]:
    """An int of at least `minimum`."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = minimum - 1
        if number < minimum:
            raise argparse.ArgumentTypeError(f"{value!r}: want a whole number of at least {minimum}")
        return number

    return parse


def seconds(*, zero: bool = False) -> Callable[[str], float]:
    """A finite number of seconds, above zero (or zero too, with `zero`): nan and inf compare false with
    every bound, so a deadline or a period of either is never reached or reached at once."""

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number < 0 or (number == 0 and not zero):
            bound = "0 or more" if zero else "more than 0"
            raise argparse.ArgumentTypeError(f"{value!r}: want a number of seconds, {bound}")
        return number

    return parse
