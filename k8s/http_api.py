"""Write (or check) what the gateway's chart ships for its HTTP/JSON edge, under helm/gateway/files/.

    .venv/bin/python k8s/http_api.py          write them
    .venv/bin/python k8s/http_api.py --check  exit 1 if the committed files differ from what this writes

- `http-api.json`: the Envoy configuration of the `http-api` container in the gateway's pod, from the same
  `shopmesh_platform.http_api.bootstrap` that `make run` uses: listening on all addresses at 8080, the gateway
  on loopback, the admin interface on loopback only (`ADMIN_PORT`: why not a Unix socket as `make run`'s), its
  Prometheus metrics (only those) at 9465. No spans.
- `http-api-traced.json`: the same, with a span per request (the edge's, which the gateway's join) sent to the
  `traces` cluster, which it leaves out: the chart adds it when Envoy starts (`--config-yaml`), where
  `global.otel` says, with the sampling ratio (Envoy has no environment variables in its configuration).
- Both leave out the monitor of Envoy's heap their overload actions name: the chart adds it at start, bounded
  under the container's memory limit (`max_heap_bytes`), which the values may change.
- `shop.binpb`: the API's descriptor set, as `make proto` generates it beside the stubs.
- `shop.openapi.json`: the API's OpenAPI document, likewise, which the edge serves at /openapi.json.
- `index.html`, `app.js`, `countries.js`, `app.css`: the storefront the edge serves at / (shopmesh_platform/storefront).

Helm reads a chart's own files only, so they are copies; `make lint` fails when they are stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from shopmesh_platform.generated_files import write_or_check
from shopmesh_platform.http_api import (
    DESCRIPTOR_FILE,
    OPENAPI_FILE,
    STOREFRONT_FILES,
    HttpApi,
    bootstrap,
    descriptor_set,
    openapi_document,
    storefront_folder,
)

ROOT = Path(__file__).resolve().parent.parent
FILES = ROOT / "helm" / "gateway" / "files"
CONFIG = "http-api.json"
TRACED_CONFIG = "http-api-traced.json"
# Where the chart mounts its ConfigMap in the container (helm/shopmesh-lib, _deployment.tpl).
MOUNT = Path("/etc/shopmesh/http-api")
PORT = 8080
# The admin interface stays a TCP port on loopback here, unlike `make run`'s Unix socket (mode 0600): a pod's
# loopback is its own containers' alone, not every user's of a machine, and a socket would need a writable
# emptyDir mounted for it (the root file system is read-only) for no one else kept out.
ADMIN_PORT = 9901
# Envoy's Prometheus metrics for the ServiceMonitor (the admin interface stays on loopback).
METRICS_PORT = 9465
GATEWAY = "127.0.0.1:50051"


def kubernetes_api(*, traced: bool = False) -> HttpApi:
    return HttpApi(
        # The container's port, which the pod's Service and NetworkPolicy expose.
        host="0.0.0.0",
        port=PORT,
        admin_host="127.0.0.1",
        admin_port=ADMIN_PORT,
        gateway=GATEWAY,
        descriptor=MOUNT / DESCRIPTOR_FILE,
        openapi=MOUNT / OPENAPI_FILE,
        storefront=MOUNT,
        metrics_port=METRICS_PORT,
        # Alone in its pod's network namespace: Envoy's workers each get a socket of the port.
        reuse_port=True,
        traces_cluster_at_start=traced,
        # The chart bounds Envoy's heap under the container's memory limit, whatever the values make it.
        heap_bound_at_start=True,
    )


def rendered() -> dict[str, bytes]:
    """File name → contents, as the chart should hold them."""
    return {
        CONFIG: _json(bootstrap(kubernetes_api())),
        TRACED_CONFIG: _json(bootstrap(kubernetes_api(traced=True))),
        DESCRIPTOR_FILE: descriptor_set().read_bytes(),
        OPENAPI_FILE: openapi_document().read_bytes(),
        **{name: (storefront_folder() / name).read_bytes() for name in STOREFRONT_FILES},
    }


def _json(config: dict[str, object]) -> bytes:
    # Without indentation: the two configurations go into one ConfigMap, which the API server refuses past
    # 1 MiB, and indented they were over half of it (283 KiB each, 106 KiB without). Read them with `jq .`.
    return (json.dumps(config, separators=(",", ":")) + "\n").encode()


def main(argv: list[str] | None = None) -> int:
    return write_or_check(
        argv,
        __doc__,
        lambda: {FILES / name: content for name, content in rendered().items()},
        root=ROOT,
        source="what k8s/http_api.py writes",
        remedy="make http-api",
    )


if __name__ == "__main__":
    sys.exit(main())
