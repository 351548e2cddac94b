"""The launcher's writer to its terminal, which may go away under it.

`make run | tee run.log` with tee killed by the same Ctrl-C, or a terminal that closed (SIGHUP): every later
write to stdout then fails (EPIPE on a pipe, EIO on a hung-up terminal). A print raising there broke whatever
called it: the signal handler before it cancelled the start, the stop before it finished, and the launcher
ended with a BrokenPipeError traceback and exit status 1 while it was stopping as asked. Nobody reads the
lines any more, so they are dropped, and the launcher carries on with the work they were about.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import sys
from collections.abc import Callable
from typing import TextIO

# The errors of a reader that went away; any other (a full disk behind a redirect) is still raised.
_GONE = (errno.EPIPE, errno.EIO)


class Console:
    """Writes whole lines to a stream, flushed at once (the stream is often a pipe, where they would sit in a
    buffer), and nothing once the reader is gone. The stream is looked up at each write: sys.stdout is not
    always the one it was at import (pytest's capture replaces it)."""

    def __init__(self, stream: Callable[[], TextIO]) -> None:
        self.stream = stream
        self.gone = False

    def say(self, text: str) -> None:
        if self.gone:
            return
        stream = self.stream()
        try:
            stream.write(text + "\n")
            stream.flush()
        except OSError as exc:
            if exc.errno not in _GONE:
                raise
            self.gone = True
            _write_nowhere(stream)


def _write_nowhere(stream: TextIO) -> None:
    """Point the stream's descriptor at /dev/null: the stream's buffer keeps what it failed to write, and every
    later write or flush of it (another writer's, the interpreter's own at exit, which turns a failure into a
    message on stderr and exit status 120) would fail again. Python's documented way for a reader gone."""
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
        descriptor = stream.fileno()
        nowhere = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(nowhere, descriptor)
        finally:
            os.close(nowhere)


# The launcher's own lines and its children's (logsink.ConsoleSink) as one: whichever meets the gone reader
# first stops both.
stdout = Console(lambda: sys.stdout)
stderr = Console(lambda: sys.stderr)


def say(text: str) -> None:
    """A line of the launcher's on stdout, dropped once nobody reads it."""
    stdout.say(text)
