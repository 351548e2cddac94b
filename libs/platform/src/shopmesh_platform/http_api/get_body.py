"""A GET (or HEAD) with a body refused: its fields are its query parameters, and the transcoder would otherwise
read the body into the call where nothing in front of the edge sees it."""

from __future__ import annotations

from typing import Any

from .head import LUA, LUA_PER_ROUTE
from .local_replies import body_as_it_is, code_details_start, status_is, validation_failed
from .matching import FILTER_CONFIG

# The field violation's reason in the refusal (no field: a GET's fields are its query's, QUERY_WITH_BODY's
# counterpart), and its message.
BODY_ON_GET = "BODY_ON_GET"
BODY_ON_GET_MESSAGE = "a GET takes its fields as query parameters, not as a body: send it without one"
_REFUSAL = validation_failed(
    BODY_ON_GET_MESSAGE,
    {"description": "a GET has no body; its fields are query parameters", "reason": BODY_ON_GET},
)
# The Lua filter of this check: disabled but on the routes an HTTP/JSON request takes to the transcoder
# (body_on_get_refused).
BODY_ON_GET_FILTER = "shopmesh.body_on_get"
# Envoy's reason for a Lua filter's reply (its response code details).
_LUA_RESPONSE = "lua_response"

# The transcoder reads a GET's body as a POST's (`GET /v1/products` with `{"category":"kitchen"}` listed one
# category) and binds the query over it, so an access log, a WAF or a cache in front read another request than
# the one called. Any body, however it is framed: a content-length, chunks (Envoy's HTTP/1.1 codec keeps no
# transfer-encoding for a route to match), or HTTP/2 DATA frames with no length at all; so the body itself, not
# a header. After the buffer filter, which holds every HTTP/JSON request whole anyway (over 1 MiB, its 413): the
# body is there, and reading it costs nothing more (before it, a body over the connection's 32 KiB buffer was
# Envoy's 413, told as over 1 MiB). A request that ended with its headers (no body, `content-length: 0`) has
# none: body() is nil. A HEAD is the GET by then (head.py), and its refusal's body is dropped as a GET's would be.
_SCRIPT = f"""
local refusal = [==[{_REFUSAL}]==]

function envoy_on_request(request)
  local method = request:headers():get(":method")
  if method ~= "GET" and method ~= "HEAD" then
    return
  end
  local body = request:body()
  if body ~= nil and body:length() > 0 then
    request:respond({{[":status"] = "400", ["content-type"] = "application/json"}}, refusal)
  end
end
"""


def body_on_get_check() -> dict[str, Any]:
    """The Lua filter refusing a GET or HEAD with a body, disabled but where a route enables it
    (body_on_get_refused). After the buffer filter, which has the body whole by then."""
    return {
        "name": BODY_ON_GET_FILTER,
        "disabled": True,
        "typed_config": {"@type": LUA, "source_codes": {BODY_ON_GET_FILTER: {"inline_string": _SCRIPT}}},
    }


def body_on_get_refused() -> dict[str, Any]:
    """A route's per-filter configuration enabling body_on_get_check: on the routes an HTTP/JSON request takes
    to the transcoder (routes.http_json_route). The edge's own files (the OpenAPI document, the storefront) are
    answered whatever a request's body: nothing is called with it."""
    return {
        BODY_ON_GET_FILTER: {
            "@type": FILTER_CONFIG,
            "disabled": False,
            "config": {"@type": LUA_PER_ROUTE, "name": BODY_ON_GET_FILTER},
        }
    }


def body_on_get_refusal() -> dict[str, Any]:
    """The local-reply mapper sending the refusal's Status as the script wrote it (Envoy takes a Lua filter's
    reply for a local reply, which the mapper of its 400 would wrap in a Status of its own)."""
    return body_as_it_is(
        {"and_filter": {"filters": [status_is(400, "local_reply_400_body_on_get"), code_details_start(_LUA_RESPONSE)]}}
    )
