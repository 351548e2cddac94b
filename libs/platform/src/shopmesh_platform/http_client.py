"""ShopService over the HTTP/JSON edge, called like the gRPC stub: `await shop.ListProducts(request)`.

Each method follows its `google.api.http` route in the contract (path parameters from the request's fields,
the other fields as query parameters of a GET or as the JSON body of a POST), with proto3's JSON mapping
both ways (protobuf's json_format), so the simulated shoppers (`shoppers --http`) exercise the edge as a
front-end would. A failed call raises HttpCallError carrying the gRPC code from the google.rpc.Status the
edge returns (or, for an answer without one, the code of its HTTP status) and the status's ErrorInfo, if any.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiohttp
import grpc
from google.api import annotations_pb2
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from shopmesh.gateway.v1 import shop_pb2

SERVICE = shop_pb2.DESCRIPTOR.services_by_name["ShopService"]
_CODES = {code.value[0]: code for code in grpc.StatusCode}
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
# Envoy's own plain-text refusals (a route, parameter or body it cannot transcode): gRPC's HTTP mapping reversed.
_BY_HTTP_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.UNIMPLEMENTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class HttpCallError(Exception):
    """A call the edge answered with an error; `code()` as on grpc.aio.AioRpcError, and the google.rpc.ErrorInfo
    of the status in the body (its reason and metadata, e.g. PRICE_CHANGED's new total), None without one, and
    its RetryInfo's delay in seconds (a rate limit's "come back in 2 s"), None without one."""

    def __init__(
        self,
        code: grpc.StatusCode,
        status: int,
        message: str,
        error_info: error_details_pb2.ErrorInfo | None = None,
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code.name}: {message}")
        self._code = code
        self.status = status
        self.error_info = error_info
        self.retry_delay = retry_delay

    def code(self) -> grpc.StatusCode:
        return self._code


class HttpShop:
    """The ShopService stub's calls, over HTTP/JSON through the edge at the session's base URL."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Message]]:
        method = SERVICE.methods_by_name.get(name)
        if method is None:
            raise AttributeError(name)

        async def call(
            request: Message, metadata: Sequence[tuple[str, str]] = (), timeout: float | None = None
        ) -> Message:
            return await self._call(method, request, dict(metadata), timeout)

        return call

    async def _call(
        self, method: MethodDescriptor, request: Message, headers: Mapping[str, str], timeout: float | None
    ) -> Message:
        # googleapis-common-protos has no type stubs: the extension's field is untyped here.
        rule: Any = method.GetOptions().Extensions[annotations_pb2.http]  # type: ignore[index]
        verb = rule.WhichOneof("pattern")
        if verb is None:
            raise ValueError(f"{method.full_name} has no google.api.http route")
        if verb == "custom":
            raise ValueError(f"{method.full_name}: custom HTTP verbs are not supported here")
        fields: dict[str, Any] = json_format.MessageToDict(request)
        path = getattr(rule, verb)
        if re.search(r"{[^}]*[.=][^}]*}", path) or rule.body not in ("", "*"):
            raise ValueError(f'{method.full_name}: only {{field}} path variables and body "*" are supported here')
        for name in re.findall(r"{(\w+)}", path):
            field = method.input_type.fields_by_name[name]
            fields.pop(field.json_name, None)
            path = path.replace(f"{{{name}}}", urllib.parse.quote(str(getattr(request, name)), safe=""))
        options: dict[str, Any] = {"headers": headers}
        if timeout is not None:
            options["timeout"] = aiohttp.ClientTimeout(total=timeout)
        if rule.body == "*":
            options["json"] = fields
        else:
            options["params"] = {key: _query_value(key, value) for key, value in fields.items()}
        try:
            async with self._session.request(verb.upper(), path, **options) as response:
                text = await response.text()
                if response.status != 200:
                    raise _error(response.status, response.content_type, text)
                reply = message_factory.GetMessageClass(method.output_type)()
                json_format.Parse(text, reply, ignore_unknown_fields=True)
                return reply
        except TimeoutError:
            raise HttpCallError(grpc.StatusCode.DEADLINE_EXCEEDED, 0, f"no answer within {timeout} s") from None
        except aiohttp.ClientError as exc:
            # A connection refused or reset: what a gRPC client reports as UNAVAILABLE.
            raise HttpCallError(grpc.StatusCode.UNAVAILABLE, 0, str(exc)) from None
        except json_format.ParseError as exc:
            raise HttpCallError(
                grpc.StatusCode.INTERNAL, 200, f"the answer is not a {method.output_type.name}: {exc}"
            ) from None


def _query_value(key: str, value: Any) -> str:
    """A query parameter as the transcoder reads it: scalars only (the public API's GETs have no others)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        raise ValueError(f"query parameter {key}: nested and repeated fields are not supported here")
    return str(value)


def _error(status: int, content_type: str, text: str) -> HttpCallError:
    if content_type == "application/json":
        try:
            body = json.loads(text) if text else {}
            code = _CODES.get(int(body.get("code", -1)))
        except (ValueError, AttributeError, TypeError):
            code = None
        if code is not None:
            details = body.get("details")
            return HttpCallError(
                code, status, str(body.get("message", "")), _error_info(details), _retry_delay(details)
            )
    fallback = grpc.StatusCode.INTERNAL if status >= 500 else grpc.StatusCode.UNKNOWN
    return HttpCallError(_BY_HTTP_STATUS.get(status, fallback), status, text.strip()[:200])


def _retry_delay(details: object) -> float | None:
    """The RetryInfo's delay among a JSON status's details (proto3 JSON: {"retryDelay": "2s"}), None without
    one or when it does not parse."""
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, dict) and detail.get("@type") == _RETRY_INFO:
            fields = {key: value for key, value in detail.items() if key != "@type"}
            try:
                info = json_format.ParseDict(fields, error_details_pb2.RetryInfo(), ignore_unknown_fields=True)
            except json_format.ParseError:
                return None
            return info.retry_delay.ToTimedelta().total_seconds() if info.HasField("retry_delay") else None
    return None


def _error_info(details: object) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo among a JSON status's details (each an Any in proto3 JSON: its fields beside "@type"); one
    that does not parse counts as none, as a gRPC client's details that do not decode do (chassis' details_from)."""
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, dict) and detail.get("@type") == _ERROR_INFO:
            fields = {key: value for key, value in detail.items() if key != "@type"}
            try:
                return json_format.ParseDict(fields, error_details_pb2.ErrorInfo(), ignore_unknown_fields=True)
            except json_format.ParseError:
                return None
    return None
