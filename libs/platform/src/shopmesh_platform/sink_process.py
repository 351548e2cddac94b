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

# serve(directory, host, port, stop): serves until `stop` is set (the first SIGTERM or SIGINT).
Serve = Callable[[Path, str, int, asyncio.Event], Coroutine[Any, Any, None]]


def run_sink(
    serve: Serve, argv: Sequence[str] | None, *, prog: str, description: str, port: int, directory: str
) -> int:
    """Parse the sink's command line and run `serve(directory, host, port, stop)` in a new event loop."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default=LOCAL_HOST)
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--dir", type=Path, default=Path(directory), help="where it stores what it receives")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    asyncio.run(_serve_until_signalled(serve, args.dir.absolute(), args.host, args.port))
    return 0


async def _serve_until_signalled(serve: Serve, directory: Path, host: str, port: int) -> None:
    # The handlers come before the server: the launcher takes a sink for ready once its port accepts, and may
    # stop it at once (a stack whose start failed); a SIGTERM before them killed the sink with exit -15.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(directory, host, port, stop)
