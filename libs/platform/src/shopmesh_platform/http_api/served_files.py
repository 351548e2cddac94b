"""What Envoy answers itself from files: the OpenAPI document at OPENAPI_PATH and the storefront's page,
script and style (docs/storefront.md)."""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path
from typing import Any

from .matching import TRANSCODER_OFF, method_in, set_header
from .routes import method_not_allowed

# Where the edge serves the OpenAPI document.
OPENAPI_PATH = "/openapi.json"
# The storefront's files (in shopmesh_platform's `storefront` folder) → where the edge serves them and as what.
# Each is sent with STOREFRONT_HEADERS.
STOREFRONT_FILES = {
    "index.html": ("/", "text/html; charset=utf-8"),
    "app.js": ("/assets/app.js", "text/javascript; charset=utf-8"),
    # The countries orders ships to, which app.js imports (written by k8s/storefront_countries.py).
    "countries.js": ("/assets/countries.js", "text/javascript; charset=utf-8"),
    "app.css": ("/assets/app.css", "text/css; charset=utf-8"),
}
# The page runs its own script and style only and talks to this origin only: an injected script or a
# form posting elsewhere is refused by the browser. The page itself builds every element from data as text,
# never as HTML; this is the second line.
STOREFRONT_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
STOREFRONT_HEADERS = {
    "content-security-policy": STOREFRONT_CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    # No validator to revalidate with (Envoy answers from memory): small files, fetched again, so a new
    # release is seen at once.
    "cache-control": "no-cache",
}
# Envoy keeps a direct response's body in memory and refuses a larger file than this at startup (its
# default, 4 KiB, is far below the OpenAPI document's and the storefront script's sizes).
MAX_DOCUMENT_BYTES = 1024 * 1024


def storefront_folder() -> Path:
    """The storefront's files, where shopmesh_platform keeps them."""
    return Path(str(importlib.resources.files("shopmesh_platform") / "storefront"))


def openapi_routes(document: Path | None) -> list[dict[str, Any]]:
    """`/openapi.json`, answered by Envoy from the file."""
    if document is None:
        return []
    # A Swagger UI on another origin may read it: header_hygiene adds the CORS headers the CORS filter skips.
    return _file_routes(OPENAPI_PATH, document, {"content-type": "application/json"})


def storefront_routes(folder: Path | None) -> list[dict[str, Any]]:
    """Each of STOREFRONT_FILES at its path, answered by Envoy from the file."""
    if folder is None:
        return []
    return [
        route
        for name, (path, content_type) in STOREFRONT_FILES.items()
        for route in _file_routes(path, folder / name, {"content-type": content_type, **STOREFRONT_HEADERS})
    ]


def _file_routes(path: str, file: Path, headers: dict[str, str]) -> list[dict[str, Any]]:
    """GET and HEAD of `path` answered by Envoy with the file (read when it starts) and these headers, and 405
    for any other method there but OPTIONS (a preflight, for the CORS filter)."""
    served = {
        "match": {"path": path, "headers": [method_in(["GET", "HEAD"])]},
        "direct_response": {"status": 200, "body": {"filename": str(file)}},
        "response_headers_to_add": [set_header(key, value) for key, value in headers.items()],
        "typed_per_filter_config": TRANSCODER_OFF,
    }
    return [served, method_not_allowed(path, re.escape(path), ["GET", "HEAD"])]
