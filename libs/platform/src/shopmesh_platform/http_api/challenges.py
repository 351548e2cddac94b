"""WWW-Authenticate on every 401 of the edge: the bearer challenge RFC 6750 (section 3) has a protected resource
send, with `error="invalid_token"` when the gateway refused the token itself."""

from __future__ import annotations

import re
from typing import Any

from .head import LUA

WWW_AUTHENTICATE = "www-authenticate"
REALM = "shopmesh"
BEARER_CHALLENGE = f'Bearer realm="{REALM}"'
# The gateway's ErrorInfo reasons for a token it was sent and refused (shopmesh_gateway.tokens and .sign_outs; the
# edge does not import the gateway, a test keeps the two in step): RFC 6750's `invalid_token`, "expired, revoked,
# malformed, or invalid for other reasons". TOKEN_MISSING has no error code (RFC 6750 section 3.1: a request that
# carried no authentication is told only the scheme), and neither has any other 401 (Login's INVALID_CREDENTIALS,
# a password refused, is no token's).
INVALID_TOKEN_REASONS = ("TOKEN_INVALID", "TOKEN_EXPIRED", "TOKEN_REVOKED")
INVALID_TOKEN_CHALLENGE = f'{BEARER_CHALLENGE}, error="invalid_token"'
# The start of the Status' ErrorInfo in the transcoder's JSON (compact, `@type` first, then its fields in their
# order: reason is field 1), as a Lua pattern: the reason that follows is the gateway's, never a message's (whose
# quotes JSON escapes) nor a field violation's.
_ERROR_INFO_REASON = re.sub(r"([^A-Za-z0-9])", r"%\1", '"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"')

# The reason is in the answer's body: the transcoder has made the gateway's trailers-only error (its Status in
# grpc-status-details-bin, a protobuf in base64) a JSON body by the time an answer reaches this filter. Only a
# 401's body is read, and it is a short Status (never gzipped: the filter is before the compressor on the way
# out, and a HEAD's is dropped only after it).
_SCRIPT = f"""
local invalid_token = {{{", ".join(f'["{reason}"] = true' for reason in INVALID_TOKEN_REASONS)}}}

function envoy_on_response(response)
  local headers = response:headers()
  if headers:get(":status") ~= "401" or headers:get("{WWW_AUTHENTICATE}") ~= nil then
    return
  end
  local challenge = '{BEARER_CHALLENGE}'
  local body = response:body()
  if body ~= nil and body:length() > 0 then
    local reason = string.match(body:getBytes(0, body:length()), '{_ERROR_INFO_REASON}([A-Z0-9_]+)"')
    if reason ~= nil and invalid_token[reason] then
      challenge = '{INVALID_TOKEN_CHALLENGE}'
    end
  end
  -- body() waited for the body: the headers' handle from before it is no longer valid.
  response:headers():add("{WWW_AUTHENTICATE}", challenge)
end
"""


def bearer_challenge() -> dict[str, Any]:
    """The Lua filter adding the challenge to every 401 without one: the gateway's UNAUTHENTICATED as the
    transcoder answers it. Between the compressor and the transcoder, so that on the way out it reads the JSON
    as the transcoder made it."""
    return {
        "name": "shopmesh.bearer_challenge",
        "typed_config": {"@type": LUA, "default_source_code": {"inline_string": _SCRIPT}},
    }
