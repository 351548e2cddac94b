"""Write (or check) the `callers` and `callerMethods` of each service chart's values, helm/<service>/values.yaml,
from the topology (callers_of and METHODS_CALLED).

    .venv/bin/python k8s/caller_methods.py          write them
    .venv/bin/python k8s/caller_methods.py --check  exit 1 if a committed values.yaml differs from what this writes

The NetworkPolicy admits a service's callers, and under a mesh a caller may call only the methods its callee's
chart lists for it (docs/mesh.md); the charts cannot import the topology, so each chart holds a copy. This script
writes the copy, so that a call or a method added to the topology (METHODS_CALLED, which tests/k8s holds to the
stubs each caller's code calls) reaches the charts by a command rather than by hand. Only the `callers:` list and
the `callerMethods` block after it (with its comment) are written; the rest of each values.yaml is the chart's
own, the comment above `callers:` included.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script from any checkout: the platform (topology, generated_files) of this one.
sys.path.insert(0, str(ROOT / "libs" / "platform" / "src"))
from shopmesh_platform.generated_files import write_or_check  # noqa: E402
from shopmesh_platform.topology import SERVICES, callers_of, methods_called, service_callers  # noqa: E402

SOURCE = "what k8s/caller_methods.py writes from the topology's callers and METHODS_CALLED"
COMMENT = (
    "# callerMethods: the methods each of those services calls, written by k8s/caller_methods.py from\n"
    "# topology.METHODS_CALLED: under a mesh a caller may call only these, health aside (docs/mesh.md).\n"
)
# The block as written (its comment, the key, its indented lines), and the `callers:` list it follows (an empty
# one written inline).
BLOCK = re.compile(r"^(?:# callerMethods:.*\n(?:#.*\n)*)?callerMethods:\n(?:[ ].*\n)*", re.MULTILINE)
CALLERS = re.compile(r"^callers:.*\n(?:[ ].*\n)*", re.MULTILINE)


def callers(name: str) -> str:
    """`name`'s `callers:` list: the services that call it, and "clients" for the edge (topology.callers_of)."""
    names = callers_of(name)
    return "callers:\n" + "".join(f"  - {caller}\n" for caller in names) if names else "callers: []\n"


def block(name: str) -> str:
    """`name`'s callerMethods block: empty when no service calls it (the edge's callers are clients)."""
    callers = service_callers(name)
    if not callers:
        return ""
    lines = [
        f"  {caller}:\n" + "".join(f"    - {method}\n" for method in methods_called(caller, name)) for caller in callers
    ]
    return COMMENT + "callerMethods:\n" + "".join(lines)


def written(name: str, values: str) -> str:
    """`values` (a chart's values.yaml) with its `callers:` list and callerMethods block replaced by the topology's."""
    without = BLOCK.sub("", values, count=1)
    found = CALLERS.search(without)
    if found is None:
        raise SystemExit(f"error: helm/{name}/values.yaml has no top-level `callers:` list to write")
    return without[: found.start()] + callers(name) + block(name) + without[found.end() :]


def files() -> dict[Path, str]:
    paths = {name: ROOT / "helm" / name / "values.yaml" for name in SERVICES}
    return {path: written(name, path.read_text()) for name, path in paths.items() if path.is_file()}


def main(argv: list[str] | None = None) -> int:
    return write_or_check(argv, __doc__, files, root=ROOT, source=SOURCE, remedy="make caller-methods")


if __name__ == "__main__":
    sys.exit(main())
