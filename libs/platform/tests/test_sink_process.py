"""The sinks' shared process behaviour: a stop signal is honoured from the first moment they serve."""

from __future__ import annotations

import subprocess
import sys

# A sink whose serve() is signalled before it does anything, as a launcher may stop a sink the moment its
# port accepts (a stack whose start failed): it must end as its stop says, not die of the signal.
SIGNALLED_AT_ONCE = """
import asyncio, os, signal, sys
from shopmesh_platform.sink_process import run_sink

async def serve(directory, host, port, stop):
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(stop.wait(), 60)
    print("stopped", flush=True)

sys.exit(run_sink(serve, [], prog="sink", description="", port=0, directory="."))
"""


def test_a_sink_signalled_as_soon_as_it_serves_stops_as_asked_and_exits_zero() -> None:
    run = subprocess.run([sys.executable, "-c", SIGNALLED_AT_ONCE], capture_output=True, text=True, timeout=120)
    assert (run.returncode, run.stdout.strip()) == (0, "stopped"), run.stderr
