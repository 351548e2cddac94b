"""What the local sinks (mail, traces) share as processes of the stack: the same command line
(`--host`, `--port`, `--dir`), one log line per event on stdout, and running until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from .topology import LOCAL_HOST

Serve = Callable[[Path, str, int], Coroutine[Any, Any, None]]


def run_sink(
    serve: Serve, argv: Sequence[str] | None, *, prog: str, description: str, port: int, directory: str
) -> int:
    """Parse the sink's command line and run `serve(directory, host, port)` in a new event loop."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default=LOCAL_HOST)
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--dir", type=Path, default=Path(directory), help="where it stores what it receives")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    asyncio.run(serve(args.dir.absolute(), args.host, args.port))
    return 0


async def until_stopped() -> None:
    """Return on the first SIGTERM or SIGINT (the launcher stops its children with SIGTERM)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
