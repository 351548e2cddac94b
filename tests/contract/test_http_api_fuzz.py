"""The HTTP/JSON API keeps its OpenAPI document for any request a client can send: Schemathesis reads the
document the edge serves (`GET /openapi.json`, generated from the contract by shopmesh_platform.openapi),
draws requests from it, valid and deliberately invalid, and sends them over real HTTP to the real Envoy in
front of the whole stack that `make run` starts.

Each answer must be what the document promises: no 5xx for anything a client sent, a 4xx for a request
the document does not allow, a body that is the operation's response schema (or a google.rpc.Status with
its details on an error), the content type and headers it names, and a protected operation refusing a
request without its bearer token. A wrong document fails here as surely as a wrong server.

The draws are fixed (`derandomize`), so CI is repeatable; `HTTP_FUZZ_EXAMPLES=500 HTTP_FUZZ_RANDOM=1
pytest tests/contract/test_http_api_fuzz.py` explores further.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CheckContext
from schemathesis.core.transport import Response
from schemathesis.generation.case import Case
from schemathesis.specs.openapi.checks import unsupported_method

from shopmesh_platform.http_api import OPENAPI_PATH, openapi_document
from shopmesh_platform.stack import Stack

EXAMPLES = int(os.environ.get("HTTP_FUZZ_EXAMPLES", "60"))
RANDOM = os.environ.get("HTTP_FUZZ_RANDOM") == "1"
# The rate limiter would answer most drawn requests 429 (correct, and tested in the gateway's own tests).
ENV = {
    "gateway": {
        "RATE_LIMIT_PER_SECOND": "100000",
        "RATE_LIMIT_BURST": "100000",
        "PASSWORD_RATE_LIMIT_PER_SECOND": "100000",
        "PASSWORD_RATE_LIMIT_BURST": "100000",
    }
}
PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class Live:
    url: str


@pytest.fixture(scope="module")
def live(module_dir: Path) -> Iterator[Live]:
    """The stack with its HTTP edge, run on an event loop of its own thread: Schemathesis calls from this
    one and blocks it, while the stack's loop keeps reading its processes' output."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="stack", daemon=True)
    thread.start()
    stack = Stack.for_tests(module_dir, env=ENV, http=True)

    def on_loop(coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, loop)
        return future.result(timeout=180)

    on_loop(stack.__aenter__())
    try:
        assert stack.http_url is not None
        TOKEN["access"] = signed_up(stack.http_url)
        yield Live(stack.http_url)
    finally:
        on_loop(stack.__aexit__(None, None, None))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def post_json(url: str, body: dict[str, str]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def signed_up(url: str) -> str:
    """A new account's access token."""
    email = f"fuzz-{uuid.uuid4().hex[:8]}@example.com"
    post_json(f"{url}/v1/users", {"email": email, "password": PASSWORD, "displayName": "Fuzz"})
    token: str = post_json(f"{url}/v1/login", {"email": email, "password": PASSWORD})["accessToken"]
    return token


def test_the_edge_serves_the_document_make_proto_generated(live: Live) -> None:
    with urllib.request.urlopen(f"{live.url}{OPENAPI_PATH}", timeout=30) as response:
        assert response.headers["content-type"] == "application/json"
        assert json.loads(response.read()) == json.loads(openapi_document().read_text())


# The committed document, which the edge serves (above). (Schemathesis' lazy `from_fixture` loading does not
# work with pytest 9.2: it renames test nodes through an attribute pytest no longer has.)
schema = schemathesis.openapi.from_path(openapi_document())
# Every check stays on, the rejection of what the document forbids included, but for two:
# - the document states the types of a request, not the services' rules (lengths, ranges, a required field),
#   which its descriptions give in words: a request of the right shape may still be refused, with a 400 and
#   its field violations;
# - the check that a method a path does not take is a 405 with `Allow` is narrowed (below) by one case.
schema.config.checks.update(excluded_check_names=["positive_data_acceptance", "unsupported_method"])


@schemathesis.check
def unsupported_method_but_a_bare_query(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """Schemathesis' own `unsupported_method`, except for a QUERY without a content type, which is malformed
    (RFC 10008) and which Envoy refuses with 400 before any route is looked at."""
    request = response.request
    if request.method == "QUERY" and response.status_code == 400 and "content-type" not in request.headers:
        return None
    return unsupported_method(ctx, response, case)


# The protected operations' bearer token, set by the `live` fixture for the auth provider below. Schemathesis
# draws some requests while pytest collects, before any stack runs: those carry PENDING until the test.
TOKEN: dict[str, str] = {}
PENDING = "token-of-the-user-signed-up-when-the-stack-runs"


@schema.auth()
class SignedUpUser:
    """A real user's access token on every request Schemathesis makes: then it also checks that a protected
    operation refuses the same request without it, or with a made-up one."""

    def get(self, case: Case, context: object) -> str | None:
        # The public operations are drawn without one: they must answer anybody.
        if not case.operation.definition.raw.get("security"):
            return None
        return TOKEN.get("access", PENDING)

    def set(self, case: Case, data: str, context: object) -> None:
        # The name as the security scheme has it: Schemathesis removes it by that name to probe without it.
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    derandomize=not RANDOM,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_any_request_as_its_openapi_document_says(case: Case, live: Live) -> None:
    if case.headers and case.headers.get("Authorization") == f"Bearer {PENDING}":
        case.headers["Authorization"] = f"Bearer {TOKEN['access']}"
    case.call_and_validate(base_url=live.url)
