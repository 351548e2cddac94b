"""No request reaches a handler with U+0000 in a text field: SQLite would store it and PostgreSQL refuse
it, so one rule in the chassis keeps both databases answering the same (INVALID_ARGUMENT, with paths)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import struct_pb2

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh.orders.v1 import orders_pb2
from shopmesh.sample.v1 import sample_pb2, sample_pb2_grpc
from shopmesh_chassis import errors
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_chassis.server import ServiceBinding
from shopmesh_chassis.testing import serve_in_process
from shopmesh_chassis.text_fields import NUL_CHARACTER, check_no_nul, invalid_utf8_fields

from .conftest import sample_settings


def _violated_paths(request: object) -> list[str]:
    with pytest.raises(errors.InvalidArgument) as caught:
        check_no_nul(request)  # type: ignore[arg-type]
    assert caught.value.reason == NUL_CHARACTER
    return [v.field for v in caught.value.violations]


def test_every_string_field_with_nul_is_named_by_its_path_at_any_depth() -> None:
    request = orders_pb2.PlaceOrderRequest(
        user_id="usr_\x00",
        items=[orders_pb2.CartItem(product_id="prod_a", quantity=1), orders_pb2.CartItem(product_id="\x00")],
        shipping_address=orders_pb2.ShippingAddress(full_name="Grace", city="Arl\x00ington"),
    )
    assert _violated_paths(request) == ["user_id", "items[1].product_id", "shipping_address.city"]


def test_map_keys_and_values_with_nul_are_named() -> None:
    request = struct_pb2.Struct()
    request.update({"clean": "value", "bad\x00key": "v", "k": "bad\x00value"})
    assert sorted(_violated_paths(request)) == ["fields['bad\\x00key']", "fields['k']"]


@pytest.mark.parametrize(
    "request_",
    [
        # Zero bytes in the serialized form that are not text: a zero quantity in a repeated item,
        # an explicitly present empty message, a fixed-width double.
        orders_pb2.PlaceOrderRequest(user_id="usr_a", items=[orders_pb2.CartItem(product_id="p", quantity=0)]),
        orders_pb2.PlaceOrderRequest(shipping_address=orders_pb2.ShippingAddress()),
        struct_pb2.Struct(fields={"n": struct_pb2.Value(number_value=256.0)}),
        orders_pb2.PlaceOrderRequest(),
    ],
)
def test_requests_without_nul_in_text_pass_even_when_their_bytes_hold_zeros(request_: object) -> None:
    check_no_nul(request_)  # type: ignore[arg-type]


async def test_a_call_with_nul_in_text_gets_invalid_argument_before_the_handler_runs(
    stub: sample_pb2_grpc.SampleServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Echo(sample_pb2.EchoRequest(message="hello\x00world"))
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == NUL_CHARACTER
    assert [v.field for v in details.field_violations] == ["message"]
    assert (await stub.Echo(sample_pb2.EchoRequest(message="hello world"))).message == "hello world"


async def test_many_strings_with_nul_still_get_invalid_argument_the_client_can_read() -> None:
    """One violation per string: 200 ids with NUL (a client's bug, BatchGetProducts takes lists of ids) made
    trailers past what a gRPC client takes (8 KiB soft, 16 KiB hard), and the client got RESOURCE_EXHAUSTED
    "received metadata size exceeds ..." (transient: "retry later") for a request that can never succeed."""
    catalog = catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"]
    # The handler never runs: the chassis refuses the request first.
    servicer = catalog_pb2_grpc.CatalogServiceServicer()
    bindings = [ServiceBinding(catalog, servicer, catalog_pb2_grpc.add_CatalogServiceServicer_to_server)]
    async with (
        serve_in_process(sample_settings(), bindings) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        for count in (200, 1000):
            request = catalog_pb2.BatchGetProductsRequest(product_ids=[f"prod_{i}\x00" for i in range(count)])
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.BatchGetProducts(request, timeout=5)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
            assert details_of(caught.value).reason == NUL_CHARACTER


def _not_utf8(request: object) -> bytes:
    """`request` serialized with each "¤" (two bytes in UTF-8) turned into two bytes that are no UTF-8."""
    return request.SerializeToString().replace("¤".encode(), b"\xff\xfe")  # type: ignore[attr-defined]


def test_every_string_field_that_is_not_utf8_is_named_by_its_path_at_any_depth() -> None:
    request = orders_pb2.PlaceOrderRequest(
        user_id="usr_¤",
        items=[orders_pb2.CartItem(product_id="prod_a", quantity=1), orders_pb2.CartItem(product_id="¤")],
        shipping_address=orders_pb2.ShippingAddress(full_name="Grace", city="Arl¤ington"),
    )
    descriptor = orders_pb2.PlaceOrderRequest.DESCRIPTOR
    assert invalid_utf8_fields(_not_utf8(request), descriptor) == [
        "user_id",
        "items[1].product_id",
        "shipping_address.city",
    ]
    assert invalid_utf8_fields(request.SerializeToString(), descriptor) == []


@pytest.mark.parametrize("body", [b"\x0a\x05ab", b"\xff\xff\xff", b"\x0b\x0c", b"\x0a"])
def test_a_body_that_is_no_message_in_other_ways_names_no_field(body: bytes) -> None:
    assert invalid_utf8_fields(body, orders_pb2.PlaceOrderRequest.DESCRIPTOR) == []
