"""Every RPC the services serve documents its errors in a paragraph the contract test can hold it to.

The wire contract test (conventions.py) fails an answer whose code, or whose reason where the paragraph names
reasons for that code, is not in the RPC's own "Errors" paragraph (documented_errors.py). An RPC without one, or
with a code misspelt in it, would be held to nothing, or to less than its clients read.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import MethodDescriptor
from grpc_tools import protoc

from shopmesh.catalog.v1 import catalog_pb2
from shopmesh.gateway.v1 import shop_pb2
from shopmesh.orders.v1 import orders_pb2
from shopmesh.payments.v1 import payments_pb2

from . import documented_errors as documented_errors_module
from .conventions import SERVER_FAULTS, contract_methods
from .documented_errors import (
    CHASSIS_REASONS,
    CODES,
    GATEWAY_REASONS,
    PROTOS,
    TOKEN,
    allowed,
    documented_errors,
    documented_in,
    header_comment,
    parse,
    undocumented,
)

METHODS = [method for _, method in contract_methods()]
CATALOG = catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"].methods_by_name
SHOP = shop_pb2.DESCRIPTOR.services_by_name["ShopService"].methods_by_name
SHOP_PROTO = PROTOS / "gateway" / "v1" / "shop.proto"
CONVENTIONS_PROTO = PROTOS / "common" / "v1" / "money.proto"
PAYMENTS = payments_pb2.DESCRIPTOR.services_by_name["PaymentsService"].methods_by_name


# Contracts of a service and of a gateway whose paragraphs the tests of the reading choose, so that a change to
# the shop's own contracts changes no test of how a paragraph is read.
_READ = """
  // Reads a thing.
  //
  // Errors: UNAVAILABLE.
  //
  // A paragraph after the Errors paragraph: FAILED_PRECONDITION, reason THING_GONE.
  rpc Read(Request) returns (Response) {
    option idempotency_level = NO_SIDE_EFFECTS;
  }
"""
_SERVICE = """
syntax = "proto3";

package shopmesh.%s.v1;

// Things.
service %s {%s}

// A request.
message Request {
  // The thing's id.
  string id = 1;
}

// A response.
message Response {}
"""
_WRITE = """
  // Writes a thing.
  //
  // Errors: INVALID_ARGUMENT (empty id); FAILED_PRECONDITION, reason THING_LOCKED;
  // UNAVAILABLE, reason STORE_DOWN.
  rpc Write(Request) returns (Response);
"""
FIXTURE_PROTOS = {
    "shopmesh/fixture/v1/fixture.proto": _SERVICE % ("fixture", "FixtureService", _READ + _WRITE),
    "shopmesh/gateway/fixture/v1/shop.proto": _SERVICE % ("gateway.fixture", "FixtureShop", _READ),
}


@dataclass
class Fixture:
    """The fixture contracts' RPCs, with their paragraphs the only ones documented."""

    read: MethodDescriptor
    write: MethodDescriptor
    gateway_read: MethodDescriptor


@pytest.fixture(scope="module")
def fixture_pool(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pool.DescriptorPool:
    root = tmp_path_factory.mktemp("protos")
    for name, text in FIXTURE_PROTOS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    out = root / "fixture.binpb"
    assert protoc.main(["protoc", f"--proto_path={root}", f"--descriptor_set_out={out}", *FIXTURE_PROTOS]) == 0
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        pool.Add(file)
    return pool


@pytest.fixture
def fixture(fixture_pool: descriptor_pool.DescriptorPool, monkeypatch: pytest.MonkeyPatch) -> Fixture:
    # allowed() reads every paragraph through documented_errors(): these become the only ones.
    monkeypatch.setattr(documented_errors_module, "documented_errors", lambda: documented_in(*FIXTURE_PROTOS.values()))
    return Fixture(
        fixture_pool.FindMethodByName("shopmesh.fixture.v1.FixtureService.Read"),
        fixture_pool.FindMethodByName("shopmesh.fixture.v1.FixtureService.Write"),
        fixture_pool.FindMethodByName("shopmesh.gateway.fixture.v1.FixtureShop.Read"),
    )


def said_of(proto: Path, code: grpc.StatusCode) -> list[str]:
    """What each mention of `code` in the comment atop `proto` says, up to the next code it names."""
    comment = " ".join(line.removeprefix("//").strip() for line in header_comment(proto.read_text()))
    said = re.split(rf"\b({'|'.join(CODES)})\b", comment)
    return [clause for named, clause in zip(said[1::2], said[2::2], strict=True) if named == code.name]


def test_every_rpc_served_has_an_errors_paragraph() -> None:
    documented = documented_errors()
    missing = sorted(m.full_name for m in METHODS if m.full_name not in documented)
    assert missing == [], f"RPCs whose comment has no paragraph starting 'Errors': {missing}"


@pytest.mark.parametrize("method", METHODS, ids=[m.full_name for m in METHODS])
def test_the_errors_paragraph_names_real_codes_and_no_server_fault(method: MethodDescriptor) -> None:
    documented = documented_errors()[method.full_name]
    assert documented.reasons, f"names no gRPC code: {documented.paragraph!r}"
    faults = sorted(code.name for code in documented.reasons if code in SERVER_FAULTS)
    assert faults == [], f"documents server faults as answers (a word of prose read as a code?): {faults}"
    words = {token.group() for token in TOKEN.finditer(documented.paragraph)} - CODES.keys()
    misspelt = sorted(w for w in words if difflib.get_close_matches(w, CODES, n=1, cutoff=0.8))
    assert misspelt == [], f"words that look like a gRPC code but are none: {misspelt}"


def test_a_code_takes_the_reasons_named_after_it_and_a_code_in_parentheses_is_none() -> None:
    assert parse(
        "Errors: INVALID_ARGUMENT (empty id, violation reason OUT_OF_RANGE), NOT_FOUND (reason PRODUCT_NOT_FOUND), "
        "UNAVAILABLE; UNAVAILABLE, reason NO_SIGNING_KEY."
    ) == {
        grpc.StatusCode.INVALID_ARGUMENT: {"OUT_OF_RANGE"},
        grpc.StatusCode.NOT_FOUND: {"PRODUCT_NOT_FOUND"},
        grpc.StatusCode.UNAVAILABLE: set(),  # named bare once: any reason
    }


def test_a_code_named_in_passing_opens_no_part_and_only_a_reason_word_introduces_reasons() -> None:
    """A code opens a part where a list opens one; elsewhere it is prose, and an upper-case word is a reason only
    after "reason": a metadata value, a setting or a state named in the part is none."""
    assert parse(
        "Errors: - ABORTED, reason IDEMPOTENCY_KEY_IN_USE: retry. - UNAVAILABLE, reason DEPENDENCY_UNAVAILABLE; "
        "the same answer, instead of ABORTED, as long as RESERVATION_RETENTION_SECONDS. - FAILED_PRECONDITION, "
        'reason ORDER_NOT_CANCELLABLE (already cancelled), metadata {"state": "ORDER_STATE_CANCELLED"}.'
    ) == {
        grpc.StatusCode.ABORTED: {"IDEMPOTENCY_KEY_IN_USE"},
        grpc.StatusCode.UNAVAILABLE: {"DEPENDENCY_UNAVAILABLE"},
        grpc.StatusCode.FAILED_PRECONDITION: {"ORDER_NOT_CANCELLABLE"},
    }


def test_a_reason_list_skips_the_parenthesis_after_a_reason() -> None:
    assert parse(
        "Errors: FAILED_PRECONDITION, ErrorInfo reason RESERVATION_EXPIRED (PENDING past expires_at, or EXPIRED) "
        "or RESERVATION_RELEASED; INVALID_ARGUMENT, reason IDEMPOTENCY_KEY_MISSING / IDEMPOTENCY_KEY_REUSED, "
        "UNAVAILABLE."
    ) == {
        grpc.StatusCode.FAILED_PRECONDITION: {"RESERVATION_EXPIRED", "RESERVATION_RELEASED"},
        grpc.StatusCode.INVALID_ARGUMENT: {"IDEMPOTENCY_KEY_MISSING", "IDEMPOTENCY_KEY_REUSED"},
        grpc.StatusCode.UNAVAILABLE: set(),
    }


def test_orders_place_order_documents_aborted_only_for_a_key_in_use() -> None:
    """orders.proto's "The same answer, instead of ABORTED, ..." mentions ABORTED in prose: it documents no
    ABORTED of any reason beside IDEMPOTENCY_KEY_IN_USE (and the CONCURRENT_UPDATE every writer may answer)."""
    place_order = orders_pb2.DESCRIPTOR.services_by_name["OrdersService"].methods_by_name["PlaceOrder"]
    assert documented_errors()[place_order.full_name].reasons[grpc.StatusCode.ABORTED] == {"IDEMPOTENCY_KEY_IN_USE"}
    assert undocumented(place_order, grpc.StatusCode.ABORTED, "CONCURRENT_MODIFICATION") is not None
    # A metadata value in the paragraph ("recorded as ORDER_STATE_CANCELLED") is no reason.
    assert undocumented(place_order, grpc.StatusCode.FAILED_PRECONDITION, "ORDER_STATE_CANCELLED") is not None
    assert undocumented(place_order, grpc.StatusCode.FAILED_PRECONDITION, "CARD_DECLINED") is None


def test_catalog_documents_not_found_for_an_unknown_product_and_nothing_else() -> None:
    get_product = CATALOG["GetProduct"]
    assert undocumented(get_product, grpc.StatusCode.NOT_FOUND, "PRODUCT_NOT_FOUND") is None
    assert undocumented(get_product, grpc.StatusCode.FAILED_PRECONDITION, "PRODUCT_NOT_FOUND") is not None
    assert undocumented(get_product, grpc.StatusCode.NOT_FOUND, "ORDER_NOT_FOUND") is not None


def test_the_conventions_let_every_rpc_answer_what_they_imply() -> None:
    """money.proto, Errors: DATABASE_UNAVAILABLE for any RPC, CONCURRENT_UPDATE for one that writes;
    VALIDATION_FAILED with any INVALID_ARGUMENT, NUL_CHARACTER for a NUL in any field."""
    charge, get_product = PAYMENTS["Charge"], CATALOG["GetProduct"]
    for method in (charge, get_product):
        assert undocumented(method, grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE") is None
        assert undocumented(method, grpc.StatusCode.INVALID_ARGUMENT, "NUL_CHARACTER") is None
        assert undocumented(method, grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED") is None
    assert undocumented(charge, grpc.StatusCode.ABORTED, "CONCURRENT_UPDATE") is None
    assert grpc.StatusCode.ABORTED not in allowed(get_product)  # a read loses no race
    # Charge names its UNAVAILABLE's reason: another, beside the chassis' own, is not documented.
    assert undocumented(charge, grpc.StatusCode.UNAVAILABLE, "PAYMENT_PROVIDER_DOWN") is not None


def test_every_rpc_may_answer_what_the_chassis_answers_for_every_service(fixture: Fixture) -> None:
    """money.proto, Errors: SERVER_OVERLOADED, DEPENDENCY_UNAVAILABLE, INTERRUPTED, MALFORMED_REQUEST and NOT_UTF8
    may come from any RPC, a read, a writer or the gateway's, though its own paragraph lists none of them (Read's
    is "Errors: UNAVAILABLE."); they widen only the codes and reasons the chassis answers."""
    for method in (fixture.read, fixture.write, fixture.gateway_read):
        for code, reasons in CHASSIS_REASONS.items():
            for reason in reasons:
                assert undocumented(method, code, reason) is None, (method.full_name, code, reason)
    assert undocumented(fixture.read, grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED") is not None
    assert undocumented(fixture.read, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN") is not None


@pytest.mark.parametrize(("code", "reason"), [(c, r) for c, named in CHASSIS_REASONS.items() for r in sorted(named)])
def test_each_chassis_wide_error_is_one_the_conventions_document(code: grpc.StatusCode, reason: str) -> None:
    """The table of the chassis' answers holds only what the conventions' header says, as "<CODE>, ErrorInfo
    reason <REASON>" (or "or reason <REASON>") before another code is named."""
    assert any(re.search(rf"\breason {reason}\b", clause) for clause in said_of(CONVENTIONS_PROTO, code)), code.name


def test_validation_failed_is_implied_only_where_the_rpc_documents_invalid_argument(fixture: Fixture) -> None:
    """money.proto makes VALIDATION_FAILED the reason of an INVALID_ARGUMENT an RPC answers, not a licence for
    every RPC to answer one; only NUL_CHARACTER applies to any RPC."""
    assert undocumented(fixture.read, grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED") is not None
    assert undocumented(fixture.read, grpc.StatusCode.INVALID_ARGUMENT, "NUL_CHARACTER") is None
    assert undocumented(fixture.write, grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED") is None


def test_a_gateway_rpc_may_answer_the_gateways_service_wide_errors_and_only_a_gateway_rpc(fixture: Fixture) -> None:
    """shop.proto's service comment: any gateway call may be rate limited (RATE_LIMITED), among others; an RPC of
    another package with the same paragraph (as catalog's ListProducts, which the gateway's delegates to) documents
    no such answer."""
    gateway, internal = fixture.gateway_read, fixture.read
    assert undocumented(gateway, grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED") is None
    assert undocumented(gateway, grpc.StatusCode.INVALID_ARGUMENT, "DEADLINE_TOO_SHORT") is None
    assert undocumented(gateway, grpc.StatusCode.RESOURCE_EXHAUSTED, "PASSWORD_HASHING_BUSY") is not None
    assert undocumented(internal, grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED") is not None
    assert undocumented(internal, grpc.StatusCode.INVALID_ARGUMENT, "DEADLINE_TOO_SHORT") is not None


@pytest.mark.parametrize(("code", "reason"), [(c, r) for c, named in GATEWAY_REASONS.items() for r in sorted(named)])
def test_each_gateway_service_wide_error_is_one_shop_proto_documents(code: grpc.StatusCode, reason: str) -> None:
    """The table of the gateway's service-wide errors holds only what shop.proto's service comment says: the code,
    then "reason <REASON>" before another code is named."""
    assert any(re.search(rf"\breason {reason}\b", clause) for clause in said_of(SHOP_PROTO, code)), code.name


def test_the_paragraph_is_the_comments_own() -> None:
    """The parse reads the Errors paragraph of the RPC's comment, to its end, not of its neighbour's."""
    documented = documented_in(*FIXTURE_PROTOS.values())
    assert documented["shopmesh.fixture.v1.FixtureService.Read"].paragraph == "Errors: UNAVAILABLE."
    assert documented["shopmesh.fixture.v1.FixtureService.Write"].paragraph == (
        "Errors: INVALID_ARGUMENT (empty id); FAILED_PRECONDITION, reason THING_LOCKED; UNAVAILABLE, reason STORE_DOWN."
    )
