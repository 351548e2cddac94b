"""The public API's routes: for each path, 405 for a method it does not take, 400 for a query the transcoder
would bind over the path or the body, HEAD with each GET, the custom verbs; then ShopService's gRPC methods,
its methods this edge does not know (forwarded), and any other service (refused)."""

from __future__ import annotations

import re
from typing import Any

from ..openapi import PATH_VARIABLE
from .contract import PUBLIC_SERVICE, api_paths, body_methods, singular_query_parameters
from .get_body import body_on_get_refused
from .head import HEAD_AS_GET, LUA_PER_ROUTE
from .headers import no_grpc_headers
from .local_replies import validation_failed
from .matching import FILTER_CONFIG, GRPC, NOT_GRPC, TRANSCODER_OFF, method_in, set_header
from .request_limits import BUFFER_PER_ROUTE

# Checkout runs the whole saga before it answers: an HTTP client sends no gRPC deadline, so the edge bounds
# the call above the gateway's own longest path, checkout's calls one after the other (a key-set refetch and
# the account's e-mail from users, 5 s each, then orders, 15 s: 25 s). A gRPC or gRPC-Web client's
# `grpc-timeout` still wins when it is shorter.
ROUTE_TIMEOUT = "30s"
# A route with max_stream_duration has Envoy's router ignore its `timeout` (the mesh's GRPC_TIMEOUTS relies on
# that to leave the bound to the caller's deadline); a call without grpc-timeout would then wait for ever. Both
# of these are the stream's bound, from its first byte: ROUTE_TIMEOUT without a grpc-timeout, the client's
# grpc-timeout when it is shorter, never longer than ROUTE_TIMEOUT.
ROUTE_BOUND = {"max_stream_duration": {"max_stream_duration": ROUTE_TIMEOUT, "grpc_timeout_header_max": ROUTE_TIMEOUT}}

# The field violation's reason, in the 400 for a query parameter naming a path variable, and the name of the
# routes answering it (their local reply is the whole Status already, details included).
PATH_VARIABLE_IN_QUERY = "PATH_VARIABLE_IN_QUERY"
PATH_VARIABLE_IN_QUERY_ROUTE = "path-variable-in-query"
# The same for a query on a route whose body is the whole request (`body: "*"`; the field violation names no
# field: the query is none of the body's).
QUERY_WITH_BODY = "QUERY_WITH_BODY"
QUERY_WITH_BODY_ROUTE = "query-with-body"
# The same for a query parameter of a singular field given more than once (`?pageSize=1&pageSize=7`).
REPEATED_QUERY_PARAMETER = "REPEATED_QUERY_PARAMETER"
REPEATED_QUERY_PARAMETER_ROUTE = "repeated-query-parameter"
# The same for a query parameter that is not `name=value` with a name (`?=secret`, a bare `?pageSize`; the
# field violation names no field: the transcoder would have bound it to none).
MALFORMED_QUERY_PARAMETER = "MALFORMED_QUERY_PARAMETER"
MALFORMED_QUERY_PARAMETER_ROUTE = "malformed-query-parameter"
# The largest RE2 program (Envoy's measure of a regex's size) the edge's configuration may hold, in place of
# Envoy's 100: a repeated parameter's regex spells its name twice, each of its characters as written or
# percent-escaped (up to about 330, `maxRecommendations`). RE2 matches in linear time whatever the size; this bounds
# the memory of the few compiled regexes, not the work of a request.
MAX_REGEX_PROGRAM_SIZE = 1024


def http_json_route(match: dict[str, Any]) -> dict[str, Any]:
    """A route an HTTP/JSON request takes before the transcoder rewrites it into a call of the API (then it
    is routed again, as gRPC). Nothing is forwarded by it: the transcoder refuses a path the API does not
    have. gRPC's own headers are dropped from it: the transcoder frames the call itself. A GET or HEAD with a
    body is refused (get_body)."""
    return {
        "match": match,
        "route": {"cluster": "gateway", "timeout": ROUTE_TIMEOUT},
        "typed_per_filter_config": {
            "envoy.filters.http.header_mutation": no_grpc_headers(),
            **body_on_get_refused(),
        },
    }


def _path_regex(template: str) -> str:
    """A path of this template (Envoy matches it against the whole path, without the query), spelled with
    the slashes the transcoder ignores: it routes `/v1/products/prod_1/` (and `prod_1//`) as
    `/v1/products/prod_1`, and `/v1/orders/ord_1/:cancel` as `/v1/orders/ord_1:cancel`, so a route of the edge
    that missed them would let that path past its 405 and its refusal of a path variable in the query. After
    a custom verb it takes no slash (`:cancel/` is a 404 there), so neither does the route."""
    if _has_custom_verb(template):
        base, verb = template.rsplit(":", 1)
        return _template_regex(base) + "/*" + re.escape(":" + verb)
    return _template_regex(template) + "/*"


def _template_regex(template: str) -> str:
    parts = PATH_VARIABLE.split(template)
    # split() keeps the variables' names at the odd places.
    return "".join("[^/]+" if index % 2 else re.escape(part) for index, part in enumerate(parts))


def method_routes() -> list[dict[str, Any]]:
    """For each path of the API: 405 with `Allow` for a method it does not take there (HTTP's answer; the
    transcoder would say 404), 400 for a query parameter naming one of its variables, 400 for any query with a
    method whose body is the whole request, then, for a path with a custom verb, the methods it takes. Envoy
    tries routes in order: `/v1/orders/{order_id}:cancel` comes first, and its POST is routed there, before
    `/v1/orders/{order_id}` (whose variable would take in `ord_1:cancel`) could call it a 405. A preflight
    (OPTIONS) goes on to the CORS filter."""
    routes = []
    for template, methods in sorted(api_paths().items(), key=lambda item: not _has_custom_verb(item[0])):
        regex = _path_regex(template)
        routes.append(method_not_allowed(template, regex, allowed_methods(methods)))
        routes.extend(_path_variables_in_query(template, regex))
        routes.extend(
            _repeated_query_parameter(template, regex, name) for name in singular_query_parameters().get(template, [])
        )
        routes.extend(_query_with_body(template, regex, method) for method in body_methods().get(template, []))
        if "GET" in methods:
            routes.append(_malformed_query_parameter(template, regex))
            routes.append(_head_route(regex))
        if _has_custom_verb(template):
            match = {"safe_regex": {"regex": regex}, "headers": [method_in(methods), NOT_GRPC]}
            routes.append(http_json_route(match))
    return routes


def allowed_methods(methods: list[str]) -> list[str]:
    """The methods the edge takes on a path whose API methods are these: HEAD with every GET."""
    return [*methods, "HEAD"] if "GET" in methods and "HEAD" not in methods else list(methods)


def _head_route(regex: str) -> dict[str, Any]:
    """HEAD of a path the API takes GET on: called as the GET, answered without its body (_HEAD_AS_GET_SCRIPT)."""
    route = http_json_route({"safe_regex": {"regex": regex}, "headers": [method_in(["HEAD"]), NOT_GRPC]})
    route["typed_per_filter_config"]["envoy.filters.http.lua"] = {"@type": LUA_PER_ROUTE, "name": HEAD_AS_GET}
    return route


def unknown_method_forwarded() -> dict[str, Any]:
    """gRPC or gRPC-Web for a method of ShopService's that this edge's descriptor set does not have
    (`/shopmesh.gateway.v1.ShopService/NoSuchMethod`): forwarded to the gateway with the buffer filter off, so
    the gateway's gRPC server answers it on its headers. Through the buffer, a streaming call whose client
    keeps its side open waited for its deadline (or ROUTE_TIMEOUT) instead of the gateway's UNIMPLEMENTED. And
    a gateway newer than this edge's
    descriptor set (a canary under the same chart) is reached over gRPC for its new methods. An HTTP/JSON
    request on such a path takes the routes after this one, to the transcoder, which refuses it (404)."""
    return {
        "match": {"prefix": f"/{PUBLIC_SERVICE}/", "headers": [GRPC]},
        "route": {"cluster": "gateway", **ROUTE_BOUND},
        "decorator": {"operation": "public API", "propagate": False},
        "typed_per_filter_config": {"envoy.filters.http.buffer": {"@type": BUFFER_PER_ROUTE, "disabled": True}},
    }


def other_grpc_refused() -> dict[str, Any]:
    """gRPC for any service but ShopService (health, reflection, the internal services): refused at once as
    UNIMPLEMENTED (Envoy's gRPC answer to a 404), with a message saying why. Without this route no route
    matched, but only once the buffer filter had the whole request: a streaming call whose client keeps its
    side open (grpcurl's reflection `list`) waited for its deadline instead. The buffer is off here: the call is
    refused on its headers. Readable cross-origin (the CORS filter skips a direct response, so header_hygiene
    gives it readable_cross_origin's headers): the refusal is the same text for everyone."""
    return {
        "match": {"prefix": "/", "headers": [GRPC]},
        "direct_response": {
            "status": 404,
            "body": {"inline_string": f"only {PUBLIC_SERVICE} is served on this port"},
        },
        "typed_per_filter_config": {
            **TRANSCODER_OFF,
            "envoy.filters.http.buffer": {"@type": FILTER_CONFIG, "disabled": True},
        },
    }


def _path_variables_in_query(template: str, regex: str) -> list[dict[str, Any]]:
    """400 for a query parameter naming one of the path's variables (`/v1/orders/ord_1?orderId=ord_2`), by its
    proto or its JSON name, spelled with percent-escapes or not: the transcoder binds the query after the path,
    so the query's value would win silently, and the call would be about another resource than the path (what
    an access log, a WAF or a per-path policy in front saw). A preflight goes on to the CORS filter."""
    routes = []
    for variable in PATH_VARIABLE.findall(template):
        for name in sorted({variable, _json_name(variable)}):
            body = validation_failed(
                f"{_field_named(variable, [name])}: given by the path ({template}), not as a query parameter",
                {
                    "field": variable,
                    "description": "given by the path, not as a query parameter",
                    "reason": PATH_VARIABLE_IN_QUERY,
                },
            )
            routes.append(
                {
                    "name": PATH_VARIABLE_IN_QUERY_ROUTE,
                    "match": {
                        "safe_regex": {"regex": regex},
                        "headers": [
                            {
                                "name": ":path",
                                "string_match": {"safe_regex": {"regex": _query_naming(name)}},
                            },
                            {**method_in(["OPTIONS"]), "invert_match": True},
                        ],
                    },
                    "direct_response": {"status": 400, "body": {"inline_string": body}},
                    "typed_per_filter_config": TRANSCODER_OFF,
                }
            )
    return routes


def _query_with_body(template: str, regex: str, method: str) -> dict[str, Any]:
    """400 for a query on a route whose body is the whole request (`body: "*"`: `POST /v1/orders?card.number=`).
    google.api.http gives such a route no query parameters, and the OpenAPI document declares none, but the
    transcoder binds them into the request all the same: a card's number and CVV or a password in a URL would be
    taken, and be wherever URLs are written (this edge's access log and span, a proxy's log, a browser's
    history), and sent on to the gateway as x-envoy-original-path. Any query: a name the message has or not, an
    empty one (`?`). A preflight goes on to the CORS filter (the method is not OPTIONS)."""
    body = validation_failed(
        f"{method} {template} takes the request as its JSON body, not as query parameters",
        {"description": "the request is the JSON body, with no query parameters", "reason": QUERY_WITH_BODY},
    )
    return {
        "name": QUERY_WITH_BODY_ROUTE,
        "match": {
            "safe_regex": {"regex": regex},
            "headers": [
                method_in([method]),
                {"name": ":path", "string_match": {"safe_regex": {"regex": r"[^?]*\?.*"}}},
            ],
        },
        "direct_response": {"status": 400, "body": {"inline_string": body}},
        "typed_per_filter_config": TRANSCODER_OFF,
    }


def _repeated_query_parameter(template: str, regex: str, name: str) -> dict[str, Any]:
    """400 for a query parameter of a singular field given twice or more (`/v1/products?pageSize=1&pageSize=7`),
    by its JSON or its proto name alike (the transcoder binds both to the one field), spelled with
    percent-escapes or not: the transcoder keeps the last value silently, so the call would be made with
    another value than the one an access log, a WAF or a cache in front reads (commonly the first). GET and
    the HEAD called as it; a preflight goes on to the CORS filter."""
    field = _proto_name(name)
    body = validation_failed(
        f"{_field_named(field, [name, field])}: given more than once; {template} takes one value of it",
        {"field": field, "description": "one value only, given once", "reason": REPEATED_QUERY_PARAMETER},
    )
    spelled = "|".join(_spelled(spelling) for spelling in sorted({name, field}))
    parameter = rf"(?:{spelled})(?:=[^&]*)?"
    twice = rf"[^?]*\?(?:.*&)?{parameter}&(?:.*&)?{parameter}(?:&.*)?"
    return _query_refused(REPEATED_QUERY_PARAMETER_ROUTE, regex, twice, body)


def _malformed_query_parameter(template: str, regex: str) -> dict[str, Any]:
    """400 for a query parameter that is not `name=value` with a name: an empty name (`?=secret&pageSize=1`) or
    no `=` (`?pageSize`). The transcoder ignored both, so the first was a 200 with a value bound to nothing, and
    a bare `?pageSize` a call with the default page size while `?pageSize=` is refused: a name the request has no
    field for is refused (docs/http-api.md), and these are no fields either. An empty parameter (`?`, `&&`, a
    trailing `&`) holds neither a name nor a value and is left alone: a browser's form with no fields sends `?`.
    The message quotes none of the query (a secret pasted into a URL is what a client shows). GET and the HEAD
    called as it; a preflight goes on to the CORS filter."""
    body = validation_failed(
        f"a query parameter of {template} is not name=value: each needs a name and an '='",
        {"description": "a query parameter is name=value, with a name", "reason": MALFORMED_QUERY_PARAMETER},
    )
    # A parameter starting with `=` (no name) or with no `=` in it, anywhere in the query.
    malformed = r"[^?]*\?(?:.*&)?(?:=.*|[^&=]+(?:&.*)?)"
    return _query_refused(MALFORMED_QUERY_PARAMETER_ROUTE, regex, malformed, body)


def _query_refused(route: str, regex: str, query: str, body: str) -> dict[str, Any]:
    """A GET (or HEAD) route of the path `regex` whose whole :path matches `query`, answered 400 `body` by the
    edge itself."""
    return {
        "name": route,
        "match": {
            "safe_regex": {"regex": regex},
            "headers": [
                method_in(["GET", "HEAD"]),
                {"name": ":path", "string_match": {"safe_regex": {"regex": query}}},
            ],
        },
        "direct_response": {"status": 400, "body": {"inline_string": body}},
        "typed_per_filter_config": TRANSCODER_OFF,
    }


def _query_naming(name: str) -> str:
    """A path and query (`:path`) whose query has a parameter of this name as the transcoder reads it: it
    decodes a name's percent-escapes before it binds it, so `product%5Fid` is `product_id` (Envoy's own
    query_parameters matcher compares the name as written)."""
    return rf"[^?]*\?(?:.*&)?{_spelled(name)}(?:[=&].*)?"


def _spelled(name: str) -> str:
    """A regex of this name as the transcoder reads it: each character as it is or percent-escaped."""
    return "".join(f"(?:{re.escape(char)}|{_percent_escaped(char)})" for char in name)


def _percent_escaped(char: str) -> str:
    """`char` as `%XX`, its hex digits in either case."""
    return "%" + "".join(
        f"[{digit.upper()}{digit.lower()}]" if digit.isalpha() else digit for digit in f"{ord(char):02X}"
    )


def _field_named(field: str, spellings: list[str]) -> str:
    """A refusal's message names the field as its field violation does (the proto name, as every field path of
    the API's errors: docs/http-api.md, "Errors"), and the query's other spellings of it that it matched:
    `page_size (pageSize in the query)`."""
    others = sorted(set(spellings) - {field})
    return f"{field} ({' or '.join(others)} in the query)" if others else field


def _proto_name(json_name: str) -> str:
    """A field's proto name from its proto3 JSON name (the OpenAPI document's): `pageSize` is `page_size`."""
    return re.sub(r"[A-Z]", lambda found: "_" + found.group(0).lower(), json_name)


def _json_name(field: str) -> str:
    """A field's name in proto3 JSON (protoc's rule: a letter after `_` is capitalized, the `_` dropped)."""
    return re.sub(r"_([a-z])", lambda found: found.group(1).upper(), field)


def _has_custom_verb(template: str) -> bool:
    """`/v1/orders/{order_id}:cancel`, `/v1/products:search` (Google's custom methods)."""
    return ":" in template.rsplit("/", 1)[-1]


def method_not_allowed(template: str, regex: str, methods: list[str]) -> dict[str, Any]:
    return {
        "match": {
            "safe_regex": {"regex": regex},
            "headers": [{**method_in([*methods, "OPTIONS"]), "invert_match": True}],
        },
        "direct_response": {"status": 405, "body": {"inline_string": f"{template} takes {' and '.join(methods)} only"}},
        "response_headers_to_add": [set_header("allow", ", ".join(methods))],
        "typed_per_filter_config": TRANSCODER_OFF,
    }
