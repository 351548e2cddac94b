"""A gRPC or gRPC-Web call of ShopService's must carry its one request message whole: a body that does not
(none, a frame cut short of its length prefix, more than one), a frame whose flag is not a request message's,
a message flagged compressed under no compression, and a gRPC-Web text body that is not base64 are refused at
once as INVALID_ARGUMENT, a client's mistake, instead of reaching the gateway."""

from __future__ import annotations

from typing import Any

from google.rpc import code_pb2 as grpc_code
from google.rpc import error_details_pb2

from .grpc_encodings import ACCEPTED_GRPC_ENCODINGS, GRPC_ENCODING
from .head import LUA, LUA_PER_ROUTE
from .local_replies import answered_over_grpc, code_details_start, grpc_answer_headers, validation_failed_details
from .matching import FILTER_CONFIG

# The field violation's reason in the refusal, and its message.
INCOMPLETE_GRPC_MESSAGE = "INCOMPLETE_GRPC_MESSAGE"
INCOMPLETE_GRPC_MESSAGE_TEXT = (
    "the request is not one whole gRPC message: its body must be a single frame, a 5-byte prefix and as many "
    "bytes as the prefix says"
)
# The field violation's reason in the refusal of a frame whose flag byte is neither 0 (a message) nor 1 (a
# compressed one): gRPC-Web's 0x80 is a trailers frame, the server's alone; the other bits mean nothing yet. The
# gateway's gRPC server read such a frame as a message and carried the call out.
INVALID_GRPC_FRAME_FLAG = "INVALID_GRPC_FRAME_FLAG"
INVALID_GRPC_FRAME_FLAG_MESSAGE = (
    "the request's frame is neither a message (flag 0) nor a compressed message (flag 1): a trailers frame "
    "(0x80) or another flag is no request's"
)
# The field violation's reason in the refusal of a message flagged compressed under no compression (no
# grpc-encoding, or identity), which the gateway's gRPC server answered INTERNAL ("Compression bit set but no
# encoding configured"), and its message.
MISSING_GRPC_ENCODING = "MISSING_GRPC_ENCODING"
MISSING_GRPC_ENCODING_MESSAGE = (
    "the request's message is flagged compressed but its grpc-encoding names no compression: send grpc-encoding "
    "deflate or gzip with it, or the message uncompressed (flag 0)"
)
# The field violation's reason in the refusal of a gRPC-Web text body that is not base64, and its message; the
# gRPC-Web filter's own answer was HTTP 400, which gRPC reads as INTERNAL ("Bad gRPC-web request, invalid base64
# data.").
MALFORMED_GRPC_WEB_TEXT = "MALFORMED_GRPC_WEB_TEXT"
MALFORMED_GRPC_WEB_TEXT_MESSAGE = (
    "an application/grpc-web-text body must be base64: groups of 4 characters of A-Z, a-z, 0-9, + and /, padded with ="
)
# The gRPC-Web filter's reasons for that 400 begin so (Envoy's response code details).
_BASE64_DECODE_FAILED = "grpc_base_64_decode_failed"
# The Lua filter of this check: disabled but on the routes of ShopService's methods (one_message_required).
ONE_MESSAGE_FILTER = "shopmesh.grpc_one_message"
# A gRPC frame's prefix: a flag byte and the message's length in 4 bytes, big-endian.
_PREFIX_BYTES = 5
# The flag of a compressed message; 0 is an uncompressed one, and no other is a request's.
_COMPRESSED = 1
# The encodings of ACCEPTED_GRPC_ENCODINGS that compress: a message flagged compressed must be in one of them.
COMPRESSIONS = tuple(name for name in ACCEPTED_GRPC_ENCODINGS if name != "identity")


def _refusal_headers(message: str, violation: error_details_pb2.BadRequest.FieldViolation) -> dict[str, str]:
    """The trailers-only gRPC answer of a refusal, with the details the services give a client's mistake."""
    details = validation_failed_details(violation)
    return {":status": "200", **dict(grpc_answer_headers(grpc_code.INVALID_ARGUMENT, message, details))}


_INCOMPLETE = _refusal_headers(
    INCOMPLETE_GRPC_MESSAGE_TEXT,
    error_details_pb2.BadRequest.FieldViolation(
        description="one request message, whole", reason=INCOMPLETE_GRPC_MESSAGE
    ),
)
_INVALID_FLAG = _refusal_headers(
    INVALID_GRPC_FRAME_FLAG_MESSAGE,
    error_details_pb2.BadRequest.FieldViolation(
        description="a frame's flag: 0, or 1 for a compressed message", reason=INVALID_GRPC_FRAME_FLAG
    ),
)
_MISSING_ENCODING = _refusal_headers(
    MISSING_GRPC_ENCODING_MESSAGE,
    error_details_pb2.BadRequest.FieldViolation(
        field=GRPC_ENCODING,
        description=f"a compression ({', '.join(COMPRESSIONS)}) for a message flagged compressed",
        reason=MISSING_GRPC_ENCODING,
    ),
)


def _lua_table(headers: dict[str, str]) -> str:
    return "{" + ", ".join(f'["{name}"] = "{value}"' for name, value in headers.items()) + "}"


# After the buffer filter, the body is whole (end of stream) and gRPC-Web's is binary (the gRPC-Web filter
# decoded its text mode). The gateway's gRPC server (grpc.aio) never answered a unary call that ended without a
# whole message: its handler returns without a status, so the call waited for its deadline (the edge's 30 s
# bound) and came back UNAVAILABLE, a status a client retries, for its own mistake. A frame of another flag it
# read as a message, and one flagged compressed under no compression it answered INTERNAL. The grpc-encoding
# is one of ACCEPTED_GRPC_ENCODINGS or none by then (grpc_encodings.grpc_encoding_refused).
_SCRIPT = f"""
local compressions = {{{", ".join(f'["{name}"] = true' for name in COMPRESSIONS)}}}

function envoy_on_request(request)
  local body = request:body()
  local size = 0
  if body ~= nil then
    size = body:length()
  end
  if size < {_PREFIX_BYTES} then
    request:respond({_lua_table(_INCOMPLETE)}, "")
    return
  end
  -- One message is whole when its 5-byte prefix's length is the rest of the body: read that prefix alone,
  -- never walk a body of many frames (a MiB of empty frames would be 200,000 reads for one request).
  local prefix = body:getBytes(0, {_PREFIX_BYTES})
  local length = 0
  for index = 2, {_PREFIX_BYTES} do
    length = length * 256 + string.byte(prefix, index)
  end
  if size ~= {_PREFIX_BYTES} + length then
    request:respond({_lua_table(_INCOMPLETE)}, "")
    return
  end
  local flag = string.byte(prefix, 1)
  if flag > {_COMPRESSED} then
    request:respond({_lua_table(_INVALID_FLAG)}, "")
  elseif flag == {_COMPRESSED} and not compressions[request:headers():get("{GRPC_ENCODING}") or ""] then
    request:respond({_lua_table(_MISSING_ENCODING)}, "")
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


def grpc_web_text_not_base64() -> dict[str, Any]:
    """The gRPC-Web filter's 400 for a text body that is not base64 (its reasons grpc_base_64_decode_failed and
    ..._bad_size, for a length not of 4-character groups), which gRPC-Web reads as INTERNAL, answered
    INVALID_ARGUMENT with the details of the services' validation errors."""
    violation = error_details_pb2.BadRequest.FieldViolation(
        description="the base64 of the binary gRPC-Web body", reason=MALFORMED_GRPC_WEB_TEXT
    )
    return answered_over_grpc(
        400,
        "local_reply_400_grpc_web_text",
        grpc_code.INVALID_ARGUMENT,
        MALFORMED_GRPC_WEB_TEXT_MESSAGE,
        validation_failed_details(violation),
        only=[code_details_start(_BASE64_DECODE_FAILED)],
    )
