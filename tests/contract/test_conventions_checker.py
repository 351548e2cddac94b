"""The contract test's checker catches each way an answer can break the wire conventions: a plain
grpc.aio server (no chassis) breaks one convention per request, over a real socket, and the checker must
name it; a conforming answer must pass. Also: every RPC of the contracts has a parseable exemplar."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from typing import NoReturn

import grpc
import pytest
import pytest_asyncio
from google.protobuf import any_pb2, duration_pb2, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from shopmesh.catalog.v1 import catalog_pb2
from shopmesh.inventory.v1 import inventory_pb2

from .conventions import call, contract_methods
from .exemplars import TEMPLATES, MissingExemplar, exemplar

GET_PRODUCT = catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"].methods_by_name["GetProduct"]
# A read documents no ABORTED: the answers about ABORTED's RetryInfo come from a writer that documents it.
SET_STOCK = inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"].methods_by_name["SetStock"]


def _status(
    code: int,
    message: str,
    reason: str = "PRODUCT_NOT_FOUND",
    domain: str = "shopmesh.catalog",
    field: str | None = None,
    retry_seconds: int | None = None,
    violation: tuple[str, str] = ("", "required"),
) -> grpc.Status:
    details = []
    if reason:
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=domain))
        details.append(info)
    if field is not None:
        bad = any_pb2.Any()
        reason_of_field, description = violation
        bad.Pack(
            error_details_pb2.BadRequest(
                field_violations=[{"field": field, "description": description, "reason": reason_of_field}]
            )
        )
        details.append(bad)
    if retry_seconds is not None:
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=retry_seconds)))
        details.append(retry)
    return rpc_status.to_status(status_pb2.Status(code=code, message=message, details=details))


INVENTORY = "shopmesh.inventory"
# Behaviours answered by SetStock, a writer (inventory's), rather than GetProduct.
ON_A_WRITER = {"conforming-abort", "abort-no-retry", "abort-zero-retry"}

# product_id → (what the server answers, what the checker must say; "" = nothing).
BEHAVIOURS: dict[str, tuple[grpc.Status | None, str]] = {
    "conforming": (_status(code_pb2.NOT_FOUND, "product p not found"), ""),
    "conforming-field": (
        _status(code_pb2.INVALID_ARGUMENT, "bad", reason="INVALID_PRODUCT_ID", field="product_id"),
        "",
    ),
    "internal": (_status(code_pb2.INTERNAL, "internal error", reason="INTERNAL"), "INTERNAL: a server fault"),
    "headers-first": (_status(code_pb2.NOT_FOUND, "product p not found"), "not trailers-only"),
    "bare": (None, "without google.rpc.Status details"),
    "no-info": (_status(code_pb2.NOT_FOUND, "product p not found", reason=""), "without ErrorInfo"),
    "camel-reason": (_status(code_pb2.NOT_FOUND, "gone", reason="productNotFound"), "is not UPPER_SNAKE_CASE"),
    "foreign-domain": (_status(code_pb2.NOT_FOUND, "gone", domain="shopmesh.orders"), "expected 'shopmesh.catalog'"),
    "leak": (_status(code_pb2.NOT_FOUND, 'Traceback (most recent call last): File "x.py"'), "shows internals"),
    "unknown-field": (
        _status(code_pb2.INVALID_ARGUMENT, "bad", reason="INVALID", field="colour"),
        "not a field of GetProductRequest",
    ),
    "no-violations": (_status(code_pb2.INVALID_ARGUMENT, "bad", reason="INVALID"), "without field violations"),
    "required-worded-otherwise": (
        _status(
            code_pb2.INVALID_ARGUMENT,
            "bad",
            reason="VALIDATION_FAILED",
            field="product_id",
            violation=("REQUIRED", "is required"),
        ),
        "REQUIRED 'product_id' says 'is required', not 'must not be empty'",
    ),
    "required-blank": (
        _status(
            code_pb2.INVALID_ARGUMENT,
            "bad",
            reason="VALIDATION_FAILED",
            field="product_id",
            violation=("REQUIRED", "must not be blank: it needs a visible character"),
        ),
        "",
    ),
    "conforming-abort": (
        _status(code_pb2.ABORTED, "busy", reason="IDEMPOTENCY_KEY_IN_USE", domain=INVENTORY, retry_seconds=1),
        "",
    ),
    "abort-no-retry": (
        _status(code_pb2.ABORTED, "busy", reason="IDEMPOTENCY_KEY_IN_USE", domain=INVENTORY),
        "ABORTED IDEMPOTENCY_KEY_IN_USE without RetryInfo",
    ),
    "abort-zero-retry": (
        _status(code_pb2.ABORTED, "busy", reason="CONCURRENT_UPDATE", domain=INVENTORY, retry_seconds=0),
        "no delay to wait",
    ),
    # The RPC's own Errors paragraph: GetProduct documents NOT_FOUND PRODUCT_NOT_FOUND for an unknown product.
    "undocumented-code": (
        _status(code_pb2.FAILED_PRECONDITION, "product p not found"),
        "FAILED_PRECONDITION: not among GetProduct's documented errors",
    ),
    "undocumented-reason": (
        _status(code_pb2.NOT_FOUND, "gone", reason="ORDER_NOT_FOUND"),
        "NOT_FOUND ORDER_NOT_FOUND: not a reason GetProduct documents",
    ),
    "read-aborted": (
        _status(code_pb2.ABORTED, "busy", reason="CONCURRENT_UPDATE", retry_seconds=1),
        "ABORTED: not among GetProduct's documented errors",
    ),
    "conforming-database": (
        _status(code_pb2.UNAVAILABLE, "database down", reason="DATABASE_UNAVAILABLE", retry_seconds=1),
        "",
    ),
    "database-no-retry": (
        _status(code_pb2.UNAVAILABLE, "database down", reason="DATABASE_UNAVAILABLE"),
        "UNAVAILABLE DATABASE_UNAVAILABLE without RetryInfo",
    ),
}


async def _answer(
    request: catalog_pb2.GetProductRequest | inventory_pb2.SetStockRequest, context: grpc.aio.ServicerContext
) -> NoReturn:
    status, _ = BEHAVIOURS[request.product_id]
    if request.product_id == "headers-first":
        await context.send_initial_metadata((("x-served-by", "checker"),))
    if status is None:
        await context.abort(grpc.StatusCode.NOT_FOUND, "product p not found")
    assert status is not None
    await context.abort_with_status(status)
    raise AssertionError("unreachable")


def _handler(method: MethodDescriptor) -> grpc.GenericRpcHandler:
    """`method` answered by _answer, with its own request and response types."""
    request, response = (message_factory.GetMessageClass(t) for t in (method.input_type, method.output_type))
    answer = grpc.unary_unary_rpc_method_handler(
        _answer, request_deserializer=request.FromString, response_serializer=response.SerializeToString
    )
    return grpc.method_handlers_generic_handler(method.containing_service.full_name, {method.name: answer})


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def address() -> AsyncIterator[str]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handler(GET_PRODUCT), _handler(SET_STOCK)))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


@pytest.fixture(scope="module")
def channel(address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(address) as opened:
        yield opened


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("behaviour", list(BEHAVIOURS))
async def test_the_checker_names_the_convention_an_answer_breaks(behaviour: str, channel: grpc.Channel) -> None:
    service, method = ("inventory", SET_STOCK) if behaviour in ON_A_WRITER else ("catalog", GET_PRODUCT)
    request = message_factory.GetMessageClass(method.input_type)(product_id=behaviour)
    # Blocking call on a worker thread, as in the contract test; the server runs on this test's loop.
    problems = await asyncio.to_thread(call, channel, service, method, request, ())
    expected = BEHAVIOURS[behaviour][1]
    if not expected:
        assert problems == []
    else:
        assert any(expected in problem for problem in problems), problems


def test_every_rpc_of_the_contracts_has_an_exemplar_that_parses() -> None:
    methods = [method for _, method in contract_methods()]
    rpcs = {m.full_name for m in methods}
    missing, stale = sorted(rpcs - TEMPLATES.keys()), sorted(TEMPLATES.keys() - rpcs)
    assert missing == [], f"no exemplar for {missing}: add it to tests/contract/exemplars.py TEMPLATES"
    assert stale == [], f"exemplars for RPCs no service serves: drop {stale} from tests/contract/exemplars.py TEMPLATES"
    values = {"run": "r", "password": "p", "email": "e", "user": "u", "product": "p1", "other_product": "p2"}
    values |= {"product_price": "1299"}
    values |= {"category": "c", "page_token": "t", "order": "o", "payment": "pay", "reservation": "res"}
    values |= {"charged_order": "o2"}
    for method in methods:
        request = exemplar(method, values)
        assert not re.search(r"\{[a-z_]+\}", str(request)), f"{method.full_name}: a placeholder left: {request}"
        # A checkout is placed at the total its client showed, as every client we ship does (the storefront,
        # the shoppers, README's walk-through): the valid request that mutations start from carries one too.
        if "expected_total" in method.input_type.fields_by_name:
            assert request.HasField("expected_total"), f"{method.full_name}: no expected_total confirmed"


def test_an_rpc_without_an_exemplar_fails_saying_where_to_add_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new RPC's servicer checked (-k) before its exemplar is written fails with what to do, not a KeyError."""
    monkeypatch.delitem(TEMPLATES, GET_PRODUCT.full_name)
    expected = f"add an exemplar for {GET_PRODUCT.full_name} to tests/contract/exemplars.py TEMPLATES"
    with pytest.raises(MissingExemplar, match=re.escape(expected)):
        exemplar(GET_PRODUCT, {"product": "p1"})
