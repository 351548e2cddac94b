"""No request reaches a handler with U+0000 in a text field: SQLite would store it and PostgreSQL refuse
it, so one rule in the chassis keeps both databases answering the same (INVALID_ARGUMENT, with paths)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import struct_pb2

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh.gateway.v1 import shop_pb2, shop_pb2_grpc
from shopmesh.orders.v1 import orders_pb2
from shopmesh.sample.v1 import sample_pb2, sample_pb2_grpc
from shopmesh_chassis import errors
from shopmesh_chassis.grpc_errors import details_of
from shopmesh_chassis.server import ServiceBinding
from shopmesh_chassis.testing import serve_in_process
from shopmesh_chassis.text_fields import (
    MAX_FIELDS_VISITED,
    MAX_NAMED_FIELDS,
    NOT_UTF8,
    NUL_CHARACTER,
    BadTextFields,
    check_no_nul,
    invalid_utf8_fields,
)

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
    assert invalid_utf8_fields(_not_utf8(request), descriptor) == BadTextFields(
        ("user_id", "items[1].product_id", "shipping_address.city"), cut_short=False
    )
    assert invalid_utf8_fields(request.SerializeToString(), descriptor) == BadTextFields((), cut_short=False)


@pytest.mark.parametrize("body", [b"\x0a\x05ab", b"\xff\xff\xff", b"\x0b\x0c", b"\x0a"])
def test_a_body_that_is_no_message_in_other_ways_names_no_field(body: bytes) -> None:
    assert invalid_utf8_fields(body, orders_pb2.PlaceOrderRequest.DESCRIPTOR) == BadTextFields((), cut_short=False)


# A gateway PlaceOrderRequest body of `count` items, each only a product_id of the given bytes: a client's own
# bytes, as big as the gateway takes (1 MiB: ~200,000 items of one-byte ids). Each walk once named every
# one, in Python on the event loop's thread, before authentication: seconds of a stalled server.
GATEWAY_LIMIT = 1024 * 1024


def _items(*product_ids: bytes) -> bytes:
    return b"".join(b"\x0a" + bytes([len(p) + 2]) + b"\x0a" + bytes([len(p)]) + p for p in product_ids)


def _as_big_as_the_gateway_takes(product_id: bytes) -> bytes:
    one = _items(product_id)
    return one * ((GATEWAY_LIMIT - 64) // len(one))


def _first_items(count: int) -> tuple[str, ...]:
    return tuple(f"items[{i}].product_id" for i in range(count))


def test_a_body_of_countless_strings_not_utf8_names_only_the_first_few() -> None:
    found = invalid_utf8_fields(_as_big_as_the_gateway_takes(b"\xff"), shop_pb2.PlaceOrderRequest.DESCRIPTOR)
    assert found == BadTextFields(_first_items(MAX_NAMED_FIELDS), cut_short=True)


def test_a_string_not_utf8_past_the_fields_looked_at_is_not_looked_for() -> None:
    """Only the last of MAX_FIELDS_VISITED + 1 ids is bad: the walk stops at its bound of fields, naming none."""
    body = _items(*[b"a"] * MAX_FIELDS_VISITED) + _items(b"\xff")
    assert invalid_utf8_fields(body, shop_pb2.PlaceOrderRequest.DESCRIPTOR) == BadTextFields((), cut_short=True)
    # Within the bound it is named.
    body = _items(*[b"a"] * (MAX_FIELDS_VISITED // 2 - 1)) + _items(b"\xff")
    assert invalid_utf8_fields(body, shop_pb2.PlaceOrderRequest.DESCRIPTOR) == BadTextFields(
        (f"items[{MAX_FIELDS_VISITED // 2 - 1}].product_id",), cut_short=False
    )


def test_a_body_nested_deeper_than_protobuf_parses_is_no_message_not_a_crash() -> None:
    """Struct holds Value holds Struct...: 400 levels, a string not UTF-8 at the bottom. The walk recursed
    into each, until Python's recursion limit failed the call as INTERNAL."""
    body = b"\x1a\x02\xff\xfe"  # Value.string_value
    for _ in range(400):
        entry = b"\x0a\x01k\x12" + bytes(_varint(len(body))) + body  # Struct.fields' entry: key, value
        struct = b"\x0a" + bytes(_varint(len(entry))) + entry
        body = b"\x2a" + bytes(_varint(len(struct))) + struct  # Value.struct_value
    assert invalid_utf8_fields(body, struct_pb2.Value.DESCRIPTOR) == BadTextFields((), cut_short=False)


def _varint(value: int) -> list[int]:
    out = []
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return [*out, value]


def test_a_request_of_countless_strings_with_nul_names_only_the_first_few() -> None:
    request = shop_pb2.PlaceOrderRequest.FromString(_as_big_as_the_gateway_takes(b"\x00"))
    with pytest.raises(errors.InvalidArgument) as caught:
        check_no_nul(request)
    assert caught.value.reason == NUL_CHARACTER
    assert tuple(v.field for v in caught.value.violations) == _first_items(MAX_NAMED_FIELDS)


def test_a_nul_past_the_fields_looked_at_refuses_the_request_without_naming_the_field() -> None:
    """Only the last of MAX_FIELDS_VISITED + 1 ids holds U+0000: the walk stops at its bound, and the request,
    which holds a zero byte and far more fields than any shopmesh request, is refused all the same."""
    body = _items(*[b"a"] * MAX_FIELDS_VISITED) + _items(b"\x00")
    with pytest.raises(errors.InvalidArgument) as caught:
        check_no_nul(shop_pb2.PlaceOrderRequest.FromString(body))
    assert caught.value.reason == NUL_CHARACTER
    assert not caught.value.violations


async def test_a_gateway_sized_body_of_bad_text_is_refused_naming_its_first_fields_only() -> None:
    """Over a real socket, as the public edge passes it on: the answer's reason and its first fields; the
    message names no more fields than the violations do."""
    shop = shop_pb2.DESCRIPTOR.services_by_name["ShopService"]
    bindings = [
        ServiceBinding(shop, shop_pb2_grpc.ShopServiceServicer(), shop_pb2_grpc.add_ShopServiceServicer_to_server)
    ]
    cases = [
        (b"\xff", NOT_UTF8, _first_items(MAX_NAMED_FIELDS)),
        (b"\x00", NUL_CHARACTER, _first_items(MAX_NAMED_FIELDS)),
    ]
    async with (
        serve_in_process(sample_settings(grpc_max_receive_message_bytes=GATEWAY_LIMIT), bindings) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        place_order = channel.unary_unary("/shopmesh.gateway.v1.ShopService/PlaceOrder")
        for product_id, reason, fields in cases:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await place_order(_as_big_as_the_gateway_takes(product_id), timeout=60)
            details = details_of(caught.value)
            assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
            assert tuple(v.field for v in details.field_violations) == fields
            assert details.message.count("items[") <= MAX_NAMED_FIELDS, details.message
        # Not UTF-8 only past the fields looked at: what is wrong is not known, so no field is named.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await place_order(_items(*[b"a"] * MAX_FIELDS_VISITED) + _items(b"\xff"), timeout=60)
        details = details_of(caught.value)
        assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")
