"""The wire conventions of docs/contracts.md as a checker: what a failed call must look like on the wire, and
that it is among the errors its RPC's contract documents (documented_errors.py).

Used by the contract test against the running stack, and tested itself against a server that breaks
each convention on purpose (test_conventions_checker.py), so that a green contract run means something.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import typing
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from grpc_status import rpc_status

import shopmesh
from shopmesh_chassis import contract_limits
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_platform.topology import SERVICES

from .documented_errors import undocumented

# Codes that always mean the server failed, whatever the request: never an answer to a client's input.
SERVER_FAULTS = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}
# Answers the contract tells a client to retry (money.proto's Errors section), so they carry a RetryInfo saying
# how soon: every ABORTED ("safe to retry"), whatever its reason, and UNAVAILABLE DATABASE_UNAVAILABLE.
RETRY_CODES = {grpc.StatusCode.ABORTED}
RETRY_REASONS = {"DATABASE_UNAVAILABLE", "IDEMPOTENCY_KEY_IN_USE", "CONCURRENT_UPDATE"}
# Request metadata a field violation may name instead of a field of the message.
METADATA_KEYS = {"authorization", "idempotency-key", "x-user-id"}
REASON = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")
# What must never reach a client: Python internals, the database's words.
LEAKS = re.compile(r"Traceback|File \"|sqlalchemy|sqlite|asyncpg|Exception|Error\(", re.IGNORECASE)

# A missing field's one wording, the chassis' (contract_limits.required_violation), which every service answers.
REQUIRED_DESCRIPTION = contract_limits.REQUIRED_DESCRIPTION
BLANK_DESCRIPTION = "must not be blank"


def contract_methods() -> list[tuple[str, MethodDescriptor]]:
    """(service, RPC) for every RPC that the topology's services serve, from the generated contracts."""
    for module in pkgutil.walk_packages(shopmesh.__path__, "shopmesh."):
        if module.name.endswith("_pb2"):
            importlib.import_module(module.name)
    pool = descriptor_pool.Default()
    return [
        (name, method)
        for name, service in SERVICES.items()
        for full_name in service.grpc_services
        for method in pool.FindServiceByName(full_name).methods
    ]


def _field_at(descriptor: Descriptor, path: str) -> FieldDescriptor | None:
    """The field a violation's path (`items[0].quantity`, `shipping_address.country`) names, or None."""
    current: Descriptor | None = descriptor
    field: FieldDescriptor | None = None
    for name in (re.sub(r"\[\d+\]$", "", part) for part in path.split(".")):
        field = current.fields_by_name.get(name) if current is not None else None
        if field is None:
            return None
        current = field.message_type
    return field


def names_one_value(descriptor: Descriptor, path: str) -> bool:
    """Whether a violation's field path names one value (a metadata key, a singular field, one element of a list:
    `product_ids[1]`), not a whole repeated field or a oneof."""
    if path in METADATA_KEYS:
        return True
    field = _field_at(descriptor, path)
    return field is not None and (re.search(r"\[\d+\]$", path) is not None or not field.is_repeated)


def resolves(descriptor: Descriptor, path: str) -> bool:
    """Whether a field path of a violation (`items[0].quantity`, `shipping_address.country`) names a field."""
    parent, _, last = path.rpartition(".")
    owner: Descriptor | None = descriptor
    if parent:
        field = _field_at(descriptor, parent)
        owner = field.message_type if field is not None else None
    if owner is None:
        return False
    name = re.sub(r"\[\d+\]$", "", last)
    # "exactly one of" names the oneof (`subject`), not one of its members
    return name in owner.oneofs_by_name or name in owner.fields_by_name


def error_contract_violations(service: str, method: MethodDescriptor, error: grpc.Call) -> list[str]:
    """Every way a failed call breaks the conventions (empty: it keeps them)."""
    code = error.code()
    problems = []
    if code in SERVER_FAULTS:
        problems.append(f"{code.name}: a server fault as the answer to a request ({error.details()!r})")
    if initial := error.initial_metadata():
        problems.append(f"not trailers-only: initial metadata {list(initial)}")
    try:
        status = rpc_status.from_call(error)
    except ValueError as mismatch:  # the details' code is not the call's
        return [*problems, str(mismatch)]
    if status is None:
        return [*problems, f"{code.name} without google.rpc.Status details ({error.details()!r})"]
    if LEAKS.search(status.message or "") or LEAKS.search(error.details() or ""):
        problems.append(f"message shows internals: {status.message!r}")
    # The chassis' own client-side decoding of the details (ErrorInfo, BadRequest).
    decoded = details_of(typing.cast(grpc.aio.AioRpcError, error))
    info, violations = decoded.error_info, decoded.field_violations
    if info is None:
        problems.append(f"{code.name} without ErrorInfo ({status.message!r})")
    else:
        if not REASON.match(info.reason):
            problems.append(f"reason {info.reason!r} is not UPPER_SNAKE_CASE")
        own = f"shopmesh.{service}"
        # The gateway passes a downstream service's error through (a declined card is orders' answer).
        if not (info.domain == own or (service == "gateway" and info.domain.startswith("shopmesh."))):
            problems.append(f"domain {info.domain!r}, expected {own!r}")
    reason = info.reason if info is not None else None
    # The RPC's own contract: a code (and, where it names them, a reason) its Errors paragraph lists.
    if code not in SERVER_FAULTS and (breach := undocumented(method, code, reason)) is not None:
        problems.append(breach)
    if code in RETRY_CODES or reason in RETRY_REASONS:
        delay = decoded.retry_delay_seconds
        if delay is None:
            problems.append(f"{code.name} {reason} without RetryInfo, though the contract says to retry it")
        elif delay <= 0:
            problems.append(f"{code.name} {reason} with a RetryInfo of {delay}s: no delay to wait")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        if not violations and reason != "IDEMPOTENCY_KEY_REUSED":
            problems.append(f"INVALID_ARGUMENT {reason} without field violations ({status.message!r})")
        for violation in violations:
            if violation.field not in METADATA_KEYS and not resolves(method.input_type, violation.field):
                problems.append(f"violation names {violation.field!r}, not a field of {method.input_type.name}")
            if not violation.description:
                problems.append(f"violation of {violation.field!r} has no description")
            # One wording for a missing field in every service: a client shows it alike whoever refused it. A
            # list ("at least one item") and a oneof ("set product_id or user_id") say what they need, and so
            # does a value sent with nothing visible in it (users' password: "must not be blank: it needs ...").
            if (
                violation.reason == contract_limits.REQUIRED
                and violation.description != REQUIRED_DESCRIPTION
                and not violation.description.startswith(BLANK_DESCRIPTION)
                and names_one_value(method.input_type, violation.field)
            ):
                said = violation.description
                problems.append(f"REQUIRED {violation.field!r} says {said!r}, not {REQUIRED_DESCRIPTION!r}")
    return problems


def unary(channel: grpc.Channel | grpc.aio.Channel, method: MethodDescriptor) -> Any:
    """A callable for `method` on a blocking or an asyncio channel, (de)serializing its own messages."""
    response_type = message_factory.GetMessageClass(method.output_type)
    return channel.unary_unary(
        f"/{method.containing_service.full_name}/{method.name}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_type.FromString,
    )


def call(
    channel: grpc.Channel, service: str, method: MethodDescriptor, request: Any, meta: Sequence[tuple[str, str]]
) -> list[str]:
    """Send `request` to `method`; how the answer breaks the conventions (empty: OK, or a conforming error)."""
    try:
        unary(channel, method).with_call(request, metadata=tuple(meta), timeout=30)
    except grpc.RpcError as error:
        # The blocking API's errors are also the call's outcome (code, details, metadata).
        return error_contract_violations(service, method, typing.cast(grpc.Call, error))
    return []
