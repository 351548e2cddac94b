"""A gRPC request header the edge refuses unless it is of its form (GrpcHeaderForm): its route, never forwarded,
and its answer, INVALID_ARGUMENT with the details of the services' validation errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.rpc import code_pb2 as grpc_code
from google.rpc import error_details_pb2

from .local_replies import answered_over_grpc, route_named, validation_failed_details
from .matching import grpc_header_refused


@dataclass(frozen=True)
class GrpcHeaderForm:
    """`header`, refused unless it matches `form` (an RE2 regex) by the route `route` (its direct response a 400
    with `message`), answered to a gRPC or gRPC-Web client as INVALID_ARGUMENT, `message`, an ErrorInfo
    VALIDATION_FAILED and a field violation of `header` (`description`, `reason`); `runtime_key`: Envoy requires
    one per local reply's filter."""

    header: str
    form: str
    description: str
    reason: str
    message: str
    route: str
    runtime_key: str

    def refused(self) -> dict[str, Any]:
        return grpc_header_refused(self.route, self.header, {"safe_regex": {"regex": self.form}}, 400, self.message)

    def answer(self) -> dict[str, Any]:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=self.header, description=self.description, reason=self.reason
        )
        return answered_over_grpc(
            400,
            self.runtime_key,
            grpc_code.INVALID_ARGUMENT,
            self.message,
            validation_failed_details(violation),
            only=[route_named(self.route)],
        )
