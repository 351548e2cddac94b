"""Locust with the shoppers' locustfile, once the edge answers.

    python -m shopmesh_loadgen [--host URL] [--wait SECONDS] [any of Locust's options: --headless -u 10 -r 2 -t 1m]

The host is `--host`, else LOCUST_HOST, else make run's edge (http://127.0.0.1:8080). Its `/healthz` is asked
first, for up to `--wait` seconds (default: one try): a load run against nothing would only print a table of
connection errors, so it exits 1 at once with one line naming the address instead. Then this process becomes
Locust (exec): Ctrl-C, its stats and its exit status (1 when any request failed; a product page served without
its recommendations is no failure: it has a row of its own in the stats) are Locust's own.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from shopmesh_loadgen import DEFAULT_HOST, LOCUSTFILE


def edge_answers(host: str, wait: float) -> str | None:
    """None once `host`'s /healthz answers 200 within `wait` seconds (one try when 0), else why not."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with urllib.request.urlopen(f"{host}/healthz", timeout=3) as answer:
                if answer.status == 200:
                    return None
                why = f"/healthz answered {answer.status}"
        except urllib.error.HTTPError as error:
            why = f"/healthz answered {error.code}"
        except (urllib.error.URLError, OSError) as error:
            why = str(getattr(error, "reason", error))
        if time.monotonic() >= deadline:
            return why
        time.sleep(1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shopmesh_loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default=os.environ.get("LOCUST_HOST") or DEFAULT_HOST)
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the edge (default: one try)")
    args, locust_args = parser.parse_known_args(argv)
    host = args.host.rstrip("/")
    why = edge_answers(host, args.wait)
    if why is not None:
        print(
            f"error: nothing answers at {host} ({why}): start the stack first (`make run`), "
            "or name its edge (make load LOAD_URL=http://HOST:PORT)",
            file=sys.stderr,
        )
        return 1
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", host, *locust_args]
    os.execv(sys.executable, command)


if __name__ == "__main__":
    sys.exit(main())
