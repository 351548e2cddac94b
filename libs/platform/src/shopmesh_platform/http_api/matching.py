"""Matchers and header actions the routes, filters and local replies share: what a gRPC or gRPC-Web request
looks like, a method among some, a header set, a gRPC header refused unless of its form."""

from __future__ import annotations

from typing import Any

FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"

# The content types Envoy takes for gRPC and gRPC-Web: its gRPC check takes `application/grpc` and anything
# after `application/grpc+`, its gRPC-Web filter its four types exactly (no `+json`, no parameters). Anything
# else, `application/grpc-json` and `application/grpc-web+json` included, the transcoder reads as an HTTP/JSON
# request, and refuses as one: its answer must be mapped to a JSON Status, not left as gRPC's.
GRPC_CONTENT_TYPE = r"application/grpc(\+.*)?|application/grpc-web(-text)?(\+proto)?"
# A request whose content type is not gRPC's nor gRPC-Web's (a GET or a preflight has none at all).
NOT_GRPC = {
    "name": "content-type",
    "string_match": {"safe_regex": {"regex": GRPC_CONTENT_TYPE}},
    "invert_match": True,
    "treat_missing_header_as_empty": True,
}
# A request whose content type is gRPC's or gRPC-Web's.
GRPC = {**NOT_GRPC, "invert_match": False}
# gRPC-Web's text mode (the grpc-web JS client's default): its body is the base64 of the binary one, which the
# gRPC-Web filter decodes.
GRPC_WEB_TEXT = {
    "name": "content-type",
    "string_match": {"safe_regex": {"regex": r"application/grpc-web-text(\+proto)?"}},
}
# On a route answered by Envoy itself: the transcoder would refuse a path the API does not have first.
TRANSCODER_OFF = {"envoy.filters.http.grpc_json_transcoder": {"@type": FILTER_CONFIG, "disabled": True}}


def method_in(methods: list[str]) -> dict[str, Any]:
    return {"name": ":method", "string_match": {"safe_regex": {"regex": "|".join(methods)}}}


def set_header(name: str, value: str) -> dict[str, Any]:
    return {"header": {"key": name, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


def grpc_header_refused(route: str, header: str, taken: dict[str, Any], status: int, message: str) -> dict[str, Any]:
    """The route `route`, refusing gRPC or gRPC-Web whose `header` is there but not what `taken` (a string match)
    matches, with a direct response of `status` and `message`, which a local reply of the route's name makes a
    gRPC status: never forwarded, since the gateway's gRPC server (grpc-core) keeps its failed parse of a
    header in the HPACK table of the one connection the edge keeps to it for every client. Several values are
    matched joined by ',': refused unless `taken` matches them so."""
    return {
        "name": route,
        "match": {
            "prefix": "/",
            "headers": [
                GRPC,
                {"name": header, "present_match": True},
                {"name": header, "string_match": taken, "invert_match": True},
            ],
        },
        "direct_response": {"status": status, "body": {"inline_string": message}},
        "typed_per_filter_config": {
            **TRANSCODER_OFF,
            "envoy.filters.http.buffer": {"@type": FILTER_CONFIG, "disabled": True},
        },
    }
