"""A gRPC or gRPC-Web call of ShopService's must carry its one request message whole: a body that does not
(none, a frame cut short of its length prefix, more than one) is refused at once as INVALID_ARGUMENT, a client's
mistake, instead of reaching the gateway."""

from __future__ import annotations

from typing import Any

from google.rpc import code_pb2 as grpc_code
from google.rpc import error_details_pb2

from .head import LUA, LUA_PER_ROUTE
from .local_replies import ERROR_DOMAIN, grpc_answer_headers
from .matching import FILTER_CONFIG

# The field violation's reason in the refusal, and its message.
INCOMPLETE_GRPC_MESSAGE = "INCOMPLETE_GRPC_MESSAGE"
INCOMPLETE_GRPC_MESSAGE_TEXT = (
    "the request is not one whole gRPC message: its body must be a single frame, a 5-byte prefix and as many "
    "bytes as the prefix says"
)
# The Lua filter of this check: disabled but on the routes of ShopService's methods (one_message_required).
ONE_MESSAGE_FILTER = "shopmesh.grpc_one_message"
# A gRPC frame's prefix: a flag byte and the message's length in 4 bytes, big-endian.
_PREFIX_BYTES = 5


def _refusal_headers() -> dict[str, str]:
    """The trailers-only gRPC answer of the refusal, with the details the services give a client's mistake."""
    info = error_details_pb2.ErrorInfo(reason="VALIDATION_FAILED", domain=ERROR_DOMAIN)
    violation = error_details_pb2.BadRequest.FieldViolation(
        description="one request message, whole", reason=INCOMPLETE_GRPC_MESSAGE
    )
    details = [info, error_details_pb2.BadRequest(field_violations=[violation])]
    return {
        ":status": "200",
        **dict(grpc_answer_headers(grpc_code.INVALID_ARGUMENT, INCOMPLETE_GRPC_MESSAGE_TEXT, details)),
    }


def _lua_table(headers: dict[str, str]) -> str:
    return "{" + ", ".join(f'["{name}"] = "{value}"' for name, value in headers.items()) + "}"


# After the buffer filter, the body is whole (end of stream) and gRPC-Web's is binary (the gRPC-Web filter
# decoded its text mode). The gateway's gRPC server (grpc.aio) never answered a unary call that ended without a
# whole message: its handler returns without a status, so the call waited for its deadline (the edge's 30 s
# bound) and came back UNAVAILABLE, a status a client retries, for its own mistake.
_SCRIPT = f"""
function envoy_on_request(request)
  local body = request:body()
  local size = 0
  if body ~= nil then
    size = body:length()
  end
  -- One message is whole when its 5-byte prefix's length is the rest of the body: read that prefix alone,
  -- never walk a body of many frames (a MiB of empty frames would be 200,000 reads for one request).
  local whole = false
  if size >= {_PREFIX_BYTES} then
    local prefix = body:getBytes(0, {_PREFIX_BYTES})
    local length = 0
    for index = 2, {_PREFIX_BYTES} do
      length = length * 256 + string.byte(prefix, index)
    end
    whole = size == {_PREFIX_BYTES} + length
  end
  if not whole then
    request:respond({_lua_table(_refusal_headers())}, "")
  end
end
"""


def one_message_check() -> dict[str, Any]:
    """The Lua filter refusing a unary call whose body is not one whole gRPC message, disabled but where a
    route enables it (one_message_required). After the buffer filter."""
    return {
        "name": ONE_MESSAGE_FILTER,
        "disabled": True,
        "typed_config": {"@type": LUA, "source_codes": {ONE_MESSAGE_FILTER: {"inline_string": _SCRIPT}}},
    }


def one_message_required() -> dict[str, Any]:
    """A route's per-filter configuration enabling one_message_check: on the routes of ShopService's methods
    whose client sends one message (contract.single_request_methods), whose body the buffer filter has whole."""
    return {
        ONE_MESSAGE_FILTER: {
            "@type": FILTER_CONFIG,
            "disabled": False,
            "config": {"@type": LUA_PER_ROUTE, "name": ONE_MESSAGE_FILTER},
        }
    }
