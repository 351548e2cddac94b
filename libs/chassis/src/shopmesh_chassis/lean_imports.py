"""A service process imports no more than its image holds.

A service's image installs that service's dependencies only. The workspace's virtual environment, in which
`make run` and the tests start every service, holds more: aiohttp (the launcher's shoppers and HTTP client)
and pygments (pytest's). Libraries import them when they happen to be installed: nats-py for a WebSocket
transport (`ws://` servers, which no image could use), Alembic's Mako to colour its error pages. Neither is
used by a service, and importing them cost each service start 0.5 s of CPU of its 1.7 s (measured with
`python -X importtime` on the orders service) — hundreds of starts in `make test`, eight at once in
`make run`. Each service's `__main__` calls `install()` right after `early_signals.install()`, before any
library is imported; a library then finds them missing, as in the image.
"""

from __future__ import annotations

import sys

# Modules a service never uses that its libraries import when installed (see above).
NOT_IN_ANY_IMAGE = ("aiohttp", "pygments")


def install() -> None:
    """Make importing NOT_IN_ANY_IMAGE fail with ModuleNotFoundError in this process, unless already imported."""
    for name in NOT_IN_ANY_IMAGE:
        # None in sys.modules: `import name` raises ModuleNotFoundError (the import system's documented rule).
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
