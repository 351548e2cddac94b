"""HEAD of the API's GETs: a Lua script makes the request the GET, another drops the marked answer's body."""

from __future__ import annotations

from typing import Any

LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
LUA_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute"

# HEAD of a GET of the API (RFC 9110: a resource that takes GET takes HEAD, answered with GET's status and
# headers, no body). google.api.http has no HEAD, so the transcoder knows none; and no filter of Envoy's but Lua
# may change `:method`. The HEAD route's own script makes the request the GET and marks it (dynamic metadata:
# namespace, key; not GATEWAY_STATUS's namespace, which the access log reads whole); the filter's default script
# drops the body of a marked answer (the transcoder has rerouted the call by then, to a route without the first
# script), keeping its content-length: what the GET would send. Envoy's codecs do not drop it themselves: they
# answer the method the filters leave, a GET. The request's Accept-Encoding goes too: an answer the compressor
# gzipped would come framed as chunks, whose last one is body a HEAD must not have.
_HEAD_MARK = ("shopmesh.http_api.head", "head")
HEAD_AS_GET = "head-as-get"
_HEAD_AS_GET_SCRIPT = f"""
function envoy_on_request(request)
  request:headers():replace(":method", "GET")
  request:headers():remove("accept-encoding")
  request:streamInfo():dynamicMetadata():set("{_HEAD_MARK[0]}", "{_HEAD_MARK[1]}", true)
end
"""
_HEAD_BODY_DROPPED_SCRIPT = f"""
function envoy_on_response(response)
  local marked = response:streamInfo():dynamicMetadata():get("{_HEAD_MARK[0]}")
  if marked == nil or not marked["{_HEAD_MARK[1]}"] then
    return
  end
  local length = response:headers():get("content-length")
  response:body():setBytes("")
  if length ~= nil then
    response:headers():replace("content-length", length)
  end
end
"""


def head_as_get() -> dict[str, Any]:
    """The Lua filter of HEAD routes: HEAD_AS_GET by name on theirs, the default (dropping a marked answer's
    body) on every route, which only reads the mark."""
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": LUA,
            "default_source_code": {"inline_string": _HEAD_BODY_DROPPED_SCRIPT},
            "source_codes": {HEAD_AS_GET: {"inline_string": _HEAD_AS_GET_SCRIPT}},
        },
    }
