"""The public API's HTTP routes and access as clients know them, recorded in http_routes.json.

`buf breaking` sees neither a method's `google.api.http` rule nor its `(shopmesh.common.v1.access)` option:
`post: "/v1/login"` becoming "/v1/signin", or Register becoming ACCESS_AUTHENTICATED, passes it, and every
HTTP client of that route breaks. So each ShopService method's route (the whole HttpRule: verb, path, body,
response body, additional bindings) and access are recorded, and test_http_routes_kept.py fails on any
recorded one removed or changed.

    .venv/bin/python tests/contract/http_routes.py   record the routes of new methods

records new methods only: it refuses (exit 1) while a recorded route is removed or changed, so it never
launders a breaking change into the record (docs/contracts.md, "HTTP routes")."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from google.api import annotations_pb2
from google.protobuf import json_format

from shopmesh.common.v1 import access_pb2
from shopmesh.gateway.v1 import shop_pb2

RECORD = Path(__file__).resolve().with_name("http_routes.json")
COMMAND = ".venv/bin/python tests/contract/http_routes.py"


def current_routes() -> dict[str, dict[str, Any]]:
    """Each ShopService method's HttpRule (as proto JSON) with its access, by method name."""
    routes = {}
    for method in shop_pb2.DESCRIPTOR.services_by_name["ShopService"].methods:
        options = method.GetOptions()
        rule = json_format.MessageToDict(options.Extensions[annotations_pb2.http])
        access = access_pb2.Access.Name(options.Extensions[access_pb2.access])
        routes[method.name] = {**rule, "access": access}
    return routes


def recorded_routes() -> dict[str, dict[str, Any]]:
    routes: dict[str, dict[str, Any]] = json.loads(RECORD.read_text())
    return routes


def broken_routes(recorded: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]]) -> list[str]:
    """Each recorded route that `current` removes or changes, said as a client would meet it."""
    return [
        f"{method}: {route} removed" if method not in current else f"{method}: {route} became {current[method]}"
        for method, route in recorded.items()
        if current.get(method) != route
    ]


def main() -> int:
    recorded, current = recorded_routes(), current_routes()
    broken = broken_routes(recorded, current)
    if broken:
        print(
            "error: recorded routes removed or changed, which breaks their HTTP clients; keep them (serve a new "
            "path or access from a new method instead):\n" + "\n".join(broken),
            file=sys.stderr,
        )
        return 1
    added = {method: route for method, route in current.items() if method not in recorded}
    RECORD.write_text(json.dumps({**recorded, **added}, indent=2) + "\n")
    print(f"recorded {len(added)} new route(s): {', '.join(added) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
