"""Where the stack's child processes' output goes: prefixed on the console, or into one file per process."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, TextIO

from shopmesh_chassis.local_stack import PRIVATE_FILE_MODE, PRIVATE_FOLDER_MODE

from . import console

# Bright, distinguishable foreground colours; a service keeps its colour for the whole run.
_COLOURS = ("36", "33", "35", "32", "34", "91", "96", "93", "95", "92")
_RESET = "\033[0m"


class LogSink(Protocol):
    """Receives every line a child process writes (stdout and stderr merged), without its newline."""

    def __call__(self, name: str, line: str) -> None: ...


def _colour_wanted(stream: TextIO) -> bool:
    # https://no-color.org, and no escape codes in files, pipes or dumb terminals.
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _console_of(stream: TextIO) -> console.Console:
    return console.Console(lambda: stream)


class ConsoleSink:
    """Writes `<name padded> | <line>`, coloured per process when the stream is a terminal."""

    def __init__(self, names: Iterable[str] = (), *, stream: TextIO | None = None, colour: bool | None = None) -> None:
        # The launcher's own writer on stdout: once its reader is gone, neither writes (`console`).
        self._console = console.stdout if stream is None else _console_of(stream)
        self._colour = _colour_wanted(self._console.stream()) if colour is None else colour
        self._colours: dict[str, str] = {}
        self._width = 0
        for name in names:
            self._register(name)

    def _register(self, name: str) -> str:
        if name not in self._colours:
            self._colours[name] = _COLOURS[len(self._colours) % len(_COLOURS)]
            self._width = max(self._width, len(name))
        return self._colours[name]

    def __call__(self, name: str, line: str) -> None:
        colour = self._register(name)
        prefix = f"{name:<{self._width}} |"
        if self._colour:
            prefix = f"\033[{colour}m{prefix}{_RESET}"
        self._console.say(f"{prefix} {line}")


class FileLogSink:
    """Appends each process's lines to `<directory>/<name>.log` and keeps them in memory for assertions."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.lines: dict[str, list[str]] = {}

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.log"

    def text(self, name: str) -> str:
        return "\n".join(self.lines.get(name, []))

    def __call__(self, name: str, line: str) -> None:
        self.lines.setdefault(name, []).append(line)
        append_private_line(self.path(name), line)


def append_private_line(path: Path, line: str) -> None:
    """Append `line` to the log file `path`, made (with its folder) this user's alone if it is not there."""
    # Opened per line: no handle outlives a test, a restarted process appends to the same file, and one that
    # `--reset` removed while it was written to is made again.
    with _opened_private(path) as file:
        file.write(line + "\n")


class PrivateLog:
    """A log file that one writer appends to line by line, opened once (`append_private_line` opens it per line,
    a system call or two more for each line of a chatty process): made (with its folder) this user's alone if it
    is not there, and made again if it is removed while written to (`--reset` empties the data directory once
    the launcher's PostgreSQL server runs). OSError where it cannot be opened or written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: TextIO | None = None

    def write(self, line: str) -> None:
        if self._file is not None and os.fstat(self._file.fileno()).st_nlink == 0:
            self.close()
        if self._file is None:
            self._file = _opened_private(self.path)
        self._file.write(line + "\n")

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            # What a full disk refused to take is not written on closing either.
            with contextlib.suppress(OSError):
                file.close()


def _opened_private(path: Path) -> TextIO:
    # This user's alone, as the rest of the data directory (`make_private_folder`): logs name customers.
    path.parent.mkdir(mode=PRIVATE_FOLDER_MODE, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE_MODE)
    # Line-buffered: each line is in the file as soon as it is written, for whoever reads it meanwhile.
    return open(fd, "a", encoding="utf-8", buffering=1)
