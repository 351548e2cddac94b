"""The gateway over a real socket, in front of real catalog, inventory, payments and orders processes and
in-process stand-ins for users (so that the tests hold the signing key), recommendations and
notifications. The client is a plain gRPC channel, as a shop front-end's would be."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import pytest
import pytest_asyncio

from shopmesh.common.v1 import access_pb2
from shopmesh.gateway.v1 import shop_pb2
from shopmesh.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shopmesh.orders.v1 import orders_pb2
from shopmesh.payments.v1 import payments_pb2
from shopmesh_chassis import errors
from shopmesh_chassis.breaker import BreakerState
from shopmesh_chassis.grpc_errors import ErrorDetails, details_of
from shopmesh_chassis.testing import eventually, free_port
from shopmesh_gateway.clients import CatalogClient
from shopmesh_gateway.guard import access_of
from shopmesh_gateway.settings import GatewaySettings
from shopmesh_gateway.transport import ShopServicer
from shopmesh_platform.stack import Stack

from .gateway_fakes import PASSWORD, Fakes, fakes_serving
from .gateway_keys import SigningKey, tampered
from .gateway_serving import bearer, serving_gateway

if TYPE_CHECKING:
    from shopmesh.gateway.v1.shop_pb2_grpc import ShopServiceAsyncStub as Shop

pytestmark = pytest.mark.asyncio(loop_scope="module")

CORE = ["catalog", "inventory", "payments", "orders"]
GOOD_CARD = "4242424242424242"
DECLINED_CARD = "4000000000000002"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with Stack.for_tests(tmp_path_factory.mktemp("gateway-stack"), services=CORE) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fakes() -> AsyncIterator[Fakes]:
    async with fakes_serving() as serving:
        yield serving


def addresses_of(stack: Stack, fakes: Fakes) -> dict[str, str]:
    return {**{name: stack.address(name) for name in CORE if name != "payments"}, **fakes.addresses}


# A recommendations budget that the stand-in's answer or failure, and then the fallback's listing from the real
# catalog, always come within, on a loaded machine too. With the default 0.3 s (and 0.35 s left for the fallback)
# a slow answer turned the page degraded, and a slow listing left a degraded page without its fallback list. The
# tests about the budget itself set their own.
AMPLE_RECOMMENDATIONS_BUDGET = {"recommendations_timeout_seconds": 2.0}


@contextlib.asynccontextmanager
async def gateway(stack: Stack, fakes: Fakes, **overrides: Any) -> AsyncIterator[Shop]:
    """A gateway in this process, and a plain client channel to it; `overrides`: its settings, over
    AMPLE_RECOMMENDATIONS_BUDGET."""
    async with serving_gateway(addresses_of(stack, fakes), **{**AMPLE_RECOMMENDATIONS_BUDGET, **overrides}) as (
        shop,
        _,
    ):
        yield shop


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shop(stack: Stack, fakes: Fakes) -> AsyncIterator[Shop]:
    async with gateway(stack, fakes) as client:
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def inventory(stack: Stack) -> AsyncIterator[inventory_pb2_grpc.InventoryServiceAsyncStub]:
    async with grpc.aio.insecure_channel(stack.address("inventory")) as channel:
        yield inventory_pb2_grpc.InventoryServiceStub(channel)


@pytest.fixture(autouse=True)
def recommendations_work(fakes: Fakes) -> None:
    fakes.recommendations.mode = "ok"
    fakes.recommendations.cancelled.clear()


def token_for(fakes: Fakes, user_id: str | None = None) -> tuple[tuple[str, str], ...]:
    return bearer(fakes.users.key.token(user_id or f"usr_{uuid.uuid4().hex[:10]}"))


async def failure(call: Any) -> ErrorDetails:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return details_of(caught.value)


def order_request(product_id: str = "prod_chef_knife", card: str = GOOD_CARD, email: str = "") -> Any:
    return shop_pb2.PlaceOrderRequest(
        items=[orders_pb2.CartItem(product_id=product_id, quantity=1)],
        currency="USD",
        shipping_address=orders_pb2.ShippingAddress(
            full_name="Ada Lovelace", street="12 Analytical Row", city="London", postal_code="N1 9GU", country="GB"
        ),
        email=email,
        card=payments_pb2.PaymentCard(number=card, exp_month=12, exp_year=2035, cvv="123"),
    )


async def place(shop: Shop, auth: Sequence[tuple[str, str]], key: str | None = None, **fields: Any) -> Any:
    metadata = (*auth, *((("idempotency-key", key),) if key else ()))
    return shop.PlaceOrder(order_request(**fields), metadata=metadata, timeout=30)


# --- public methods ------------------------------------------------------------------------------


async def test_register_and_login_delegate_to_users(shop: Shop) -> None:
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    registered = await shop.Register(shop_pb2.RegisterRequest(email=email, password=PASSWORD, display_name="Ada"))
    assert registered.user.email == email
    login = await shop.Login(shop_pb2.LoginRequest(email=email, password=PASSWORD))
    assert (login.user_id, login.token_type) == (registered.user.id, "Bearer")
    assert login.access_token.count(".") == 2


async def test_users_errors_reach_the_client_unchanged(shop: Shop) -> None:
    details = await failure(shop.Login(shop_pb2.LoginRequest(email="nobody@example.com", password="wrong-password")))
    assert details.code == grpc.StatusCode.UNAUTHENTICATED
    assert details.error_info is not None
    assert (details.reason, details.error_info.domain) == ("INVALID_CREDENTIALS", "shopmesh.users")


async def test_list_products_pages_through_a_category(shop: Shop) -> None:
    first = await shop.ListProducts(shop_pb2.ListProductsRequest(category="kitchen", page_size=4))
    assert len(first.products) == 4
    assert {p.category for p in first.products} == {"kitchen"}
    second = await shop.ListProducts(
        shop_pb2.ListProductsRequest(category="kitchen", page_size=4, page_token=first.next_page_token)
    )
    assert not {p.id for p in first.products} & {p.id for p in second.products}


async def test_catalog_validation_errors_pass_through_with_their_details(shop: Shop) -> None:
    details = await failure(shop.ListProducts(shop_pb2.ListProductsRequest(page_size=-1)))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.error_info is not None
    assert details.error_info.domain == "shopmesh.catalog"
    assert [v.field for v in details.field_violations] == ["page_size"]
    bad_token = await failure(shop.ListProducts(shop_pb2.ListProductsRequest(page_token="not-a-token")))
    assert bad_token.reason == "INVALID_PAGE_TOKEN"


async def test_search_products_finds_matches(shop: Shop) -> None:
    found = await shop.SearchProducts(shop_pb2.SearchProductsRequest(query="knife"))
    assert "prod_chef_knife" in [p.id for p in found.products]


async def test_search_of_punctuation_only_answers_an_empty_list_and_of_whitespace_only_is_invalid(
    shop: Shop,
) -> None:
    """As the contract says: no seeded product contains "!!!" or "--", so those find nothing (not an error);
    only a query of whitespace has nothing to search for."""
    for query in ("!!!", "--", "% _"):
        found = await shop.SearchProducts(shop_pb2.SearchProductsRequest(query=query))
        assert (list(found.products), found.next_page_token) == ([], ""), query
    details = await failure(shop.SearchProducts(shop_pb2.SearchProductsRequest(query=" \t ")))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED")
    assert [(v.field, v.reason) for v in details.field_violations] == [("query", "REQUIRED")]


async def test_product_page_combines_product_stock_and_recommendations(
    shop: Shop, inventory: inventory_pb2_grpc.InventoryServiceAsyncStub
) -> None:
    await inventory.SetStock(inventory_pb2.SetStockRequest(product_id="prod_pour_over_kettle", on_hand=6))
    page = await shop.GetProductPage(
        shop_pb2.GetProductPageRequest(product_id="prod_pour_over_kettle", max_recommendations=1)
    )
    assert page.product.id == "prod_pour_over_kettle"
    assert (page.availability.in_stock, page.availability.available_quantity) == (True, 6)
    assert [r.product_id for r in page.recommendations] == ["prod_french_press"]
    assert not page.recommendations_degraded


async def test_product_page_of_a_product_out_of_stock_says_so(
    shop: Shop, inventory: inventory_pb2_grpc.InventoryServiceAsyncStub
) -> None:
    await inventory.SetStock(inventory_pb2.SetStockRequest(product_id="prod_ceramic_vase", on_hand=0))
    page = await shop.GetProductPage(shop_pb2.GetProductPageRequest(product_id="prod_ceramic_vase"))
    assert (page.availability.in_stock, page.availability.available_quantity) == (False, 0)


async def test_product_page_falls_back_to_the_category_when_recommendations_fail(shop: Shop, fakes: Fakes) -> None:
    fakes.recommendations.mode = "fail"
    page = await shop.GetProductPage(shop_pb2.GetProductPageRequest(product_id="prod_chef_knife"))
    assert page.recommendations_degraded
    assert len(page.recommendations) == 4
    assert "prod_chef_knife" not in [r.product_id for r in page.recommendations]
    assert {r.score for r in page.recommendations} == {0.0}
    assert all(r.name and r.price.currency == "USD" for r in page.recommendations)


async def test_product_page_does_not_wait_for_hanging_recommendations(shop: Shop, fakes: Fakes) -> None:
    fakes.recommendations.mode = "hang"
    page = await shop.GetProductPage(shop_pb2.GetProductPageRequest(product_id="prod_chef_knife"), timeout=10)
    assert page.recommendations_degraded
    assert page.recommendations
    await asyncio.wait_for(fakes.recommendations.cancelled.wait(), 5)


async def test_hanging_recommendations_never_cost_the_page_a_client_deadline_shorter_than_their_budget(
    stack: Stack, fakes: Fakes
) -> None:
    """shop.proto: recommendations are optional; past their budget the page answers with the fallback. A client
    whose deadline is shorter than that budget must still get the page (product, stock, a degraded list): the
    recommendations call waited for the client's whole deadline, and the page failed DEADLINE_EXCEEDED though
    product and stock had come back long before."""
    fakes.recommendations.mode = "hang"
    # The page gives recommendations half the client's 4 s and answers at about 2 s: the other half is the
    # margin for the fallback and a loaded machine, not 1 s of a 2 s deadline.
    async with gateway(stack, fakes, recommendations_timeout_seconds=10.0) as shop:
        page = await shop.GetProductPage(shop_pb2.GetProductPageRequest(product_id="prod_chef_knife"), timeout=4)
    assert page.product.id == "prod_chef_knife"
    assert page.recommendations_degraded


@contextlib.asynccontextmanager
async def answering_only(
    code: grpc.StatusCode, message: str, trailing_metadata: tuple[tuple[str, str | bytes], ...] = ()
) -> AsyncIterator[str]:
    """A gRPC endpoint that answers every call with `code` and no google.rpc details, as an Envoy sidecar
    does for a fault-injected abort, a mesh's RBAC denial (PERMISSION_DENIED), or a peer that does not
    serve the method (UNIMPLEMENTED); or with the `trailing_metadata` given."""

    class Handler(grpc.GenericRpcHandler):
        def service(self, call_details: Any) -> Any:
            async def fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                await context.abort(code, message, trailing_metadata)
                return b""

            return grpc.unary_unary_rpc_method_handler(fail)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((Handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (grpc.StatusCode.INTERNAL, "fault filter abort"),
        (grpc.StatusCode.PERMISSION_DENIED, "RBAC: access denied"),
        (grpc.StatusCode.UNIMPLEMENTED, "Method not found!"),
    ],
)
async def test_product_page_falls_back_when_recommendations_fail_with_a_status_without_details(
    stack: Stack, fakes: Fakes, code: grpc.StatusCode, message: str
) -> None:
    """shop.proto: recommendations are optional, whatever way they fail; not only with details or a
    transient code."""
    async with answering_only(code, message) as broken, gateway(stack, fakes, recommendations_address=broken) as shop:
        page = await shop.GetProductPage(shop_pb2.GetProductPageRequest(product_id="prod_chef_knife"), timeout=10)
        assert page.product.id == "prod_chef_knife"
        assert page.recommendations_degraded
        assert page.recommendations


# Bytes that are no google.rpc.Status: a peer or proxy that garbles (or truncates) the details trailer.
UNDECODABLE_DETAILS = (("grpc-status-details-bin", b"\xff\xff\xff"),)


async def test_product_page_falls_back_when_recommendations_fail_with_details_that_cannot_be_decoded(
    stack: Stack, fakes: Fakes
) -> None:
    """shop.proto: recommendations are optional, whatever way they fail. Reading their error's details must not
    turn their failure into the page's (it failed with INTERNAL, the decoding error escaping every handler)."""
    async with (
        answering_only(grpc.StatusCode.INTERNAL, "upstream reset", UNDECODABLE_DETAILS) as broken,
        gateway(stack, fakes, recommendations_address=broken) as shop,
    ):
        page = await shop.GetProductPage(shop_pb2.GetProductPageRequest(product_id="prod_chef_knife"), timeout=10)
        assert page.product.id == "prod_chef_knife"
        assert page.recommendations_degraded
        assert page.recommendations


async def test_a_required_dependency_failing_with_details_that_cannot_be_decoded_is_unavailable() -> None:
    """A transient status whose details cannot be read is still the dependency being away: the gateway's
    UNAVAILABLE with RetryInfo, not INTERNAL."""
    async with (
        answering_only(grpc.StatusCode.UNAVAILABLE, "upstream reset", UNDECODABLE_DETAILS) as broken,
        grpc.aio.insecure_channel(broken) as channel,
    ):
        with pytest.raises(errors.Unavailable) as caught:
            await CatalogClient(channel, timeout=5).get_product("prod_chef_knife")
    assert caught.value.reason == "DEPENDENCY_UNAVAILABLE"


@pytest.mark.parametrize("code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.UNIMPLEMENTED])
async def test_the_fallbacks_catalog_listing_fails_as_a_domain_error_whatever_the_status(code: grpc.StatusCode) -> None:
    """The fallback recommendations are optional too: a status without details from catalog (a proxy's
    reset, an older catalog) must degrade the page like any other failure, not fail it with INTERNAL."""
    async with answering_only(code, "upstream reset") as broken, grpc.aio.insecure_channel(broken) as channel:
        with pytest.raises(errors.DomainError):
            await CatalogClient(channel, timeout=5).products_in_category("kitchen", 5)


async def breaker_after_pages_while_recommendations_hang(
    stack: Stack, fakes: Fakes, *, budget: float, client_deadline: float, pages_must_answer: bool = True
) -> BreakerState:
    """The state of the recommendations breaker after eight product pages (past its threshold of 5 failures)
    while recommendations hang; each page must answer, degraded, unless `pages_must_answer` is False."""
    fakes.recommendations.mode = "hang"
    try:
        async with serving_gateway(addresses_of(stack, fakes), recommendations_timeout_seconds=budget) as (
            shop,
            channels,
        ):
            for _ in range(8):
                request = shop_pb2.GetProductPageRequest(product_id="prod_chef_knife")
                if pages_must_answer:
                    page = await shop.GetProductPage(request, timeout=client_deadline)
                    assert page.recommendations_degraded
                else:
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        await shop.GetProductPage(request, timeout=client_deadline)
            listing = "/shopmesh.recommendations.v1.RecommendationsService/ListRecommendations"
            return channels.recommendations.breakers[listing].state
    finally:
        fakes.recommendations.mode = "ok"


async def test_hanging_recommendations_open_the_breaker_and_pages_stop_waiting_for_them(
    stack: Stack, fakes: Fakes
) -> None:
    """Each call past the budget ends as DEADLINE_EXCEEDED, which the breaker counts (a call the page
    cut short itself would end cancelled, which it does not): after its threshold the page falls back at
    once."""
    state = await breaker_after_pages_while_recommendations_hang(stack, fakes, budget=0.2, client_deadline=10)
    assert state is BreakerState.OPEN


async def test_hanging_recommendations_open_the_breaker_for_clients_whose_deadline_is_under_twice_the_budget(
    stack: Stack, fakes: Fakes
) -> None:
    """The page waits for recommendations at most half the client's remaining time. A client with 1.6 s
    left gives them 0.8 s of a 1 s budget: ample time for a healthy service, so a hung one must still
    open the breaker. Cut short by the page's own timer before gRPC's 1 s deadline, every call ended
    cancelled, which the breaker never counts: it stayed closed and every page waited for the hang."""
    budget = 1.0
    # Margins in proportion to the budget, not fixed tenths of a second a loaded machine eats: the share
    # counts against recommendations while at least half the budget (so while the client's time left on
    # arrival is at least the budget: 0.6 budget for the way in), and the degraded page answers at about
    # half the client's time (0.8 budget for the fallback and the way back).
    state = await breaker_after_pages_while_recommendations_hang(
        stack, fakes, budget=budget, client_deadline=1.6 * budget
    )
    assert state is BreakerState.OPEN


async def test_recommendations_missing_a_tiny_share_of_a_clients_deadline_do_not_open_their_breaker(
    stack: Stack, fakes: Fakes
) -> None:
    """A client sending 0.2 s deadlines leaves recommendations 0.1 s of a 0.5 s budget: missing it says how
    impatient that client is, not how healthy recommendations are, and must not open their breaker for
    every other client (shopmesh_chassis.client: a deadline cut by the caller). The page itself may or may
    not fit in so short a deadline: only the breaker is asserted."""
    state = await breaker_after_pages_while_recommendations_hang(
        stack, fakes, budget=0.5, client_deadline=0.2, pages_must_answer=False
    )
    assert state is BreakerState.CLOSED


async def test_product_page_of_an_unknown_product_is_the_catalogs_not_found(shop: Shop) -> None:
    details = await failure(shop.GetProductPage(shop_pb2.GetProductPageRequest(product_id="prod_nope")))
    assert (details.code, details.reason) == (grpc.StatusCode.NOT_FOUND, "PRODUCT_NOT_FOUND")
    assert details.error_info is not None
    assert details.error_info.domain == "shopmesh.catalog"


async def test_product_page_validates_its_request(shop: Shop) -> None:
    details = await failure(shop.GetProductPage(shop_pb2.GetProductPageRequest(max_recommendations=-1)))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.error_info is not None
    assert details.error_info.domain == "shopmesh.gateway"
    assert [v.field for v in details.field_violations] == ["product_id", "max_recommendations"]
    # An empty id's wording in every service (contract_limits.id_violations); the gateway answered "required".
    assert details.field_violations[0].description == "must not be empty"


# --- authentication ------------------------------------------------------------------------------

PROTECTED = {
    "PlaceOrder": order_request(),
    "GetOrder": shop_pb2.GetOrderRequest(order_id="ord_x"),
    "ListOrders": shop_pb2.ListOrdersRequest(),
    "CancelOrder": shop_pb2.CancelOrderRequest(order_id="ord_x"),
    "ListNotifications": shop_pb2.ListNotificationsRequest(),
    "SignOut": shop_pb2.SignOutRequest(),
}


async def test_every_handler_is_guarded_as_the_contract_states_its_access() -> None:
    """The contract states each method's access (shopmesh.common.v1.access; the OpenAPI document and the
    HTTP API's fuzz test read it too), and each handler's guard decorator records the access it enforces:
    they must agree. Calls alone cannot show a public method wrongly `@protected` (the tests below call
    public methods without a token only where they test something else)."""
    service = shop_pb2.DESCRIPTOR.services_by_name["ShopService"]
    decorators = {
        access_pb2.ACCESS_PUBLIC: "@public (or @hashes_password)",
        access_pb2.ACCESS_AUTHENTICATED: "@protected",
    }
    wrong = []
    for method in service.methods:
        stated = method.GetOptions().Extensions[access_pb2.access]
        enforced = access_of(getattr(ShopServicer, method.name))
        if stated != enforced:
            wrong.append(
                f"ShopService.{method.name}: the contract states {access_pb2.Access.Name(stated)} but its handler "
                f"enforces {access_pb2.Access.Name(enforced)}; decorate ShopServicer.{method.name} in "
                f"shopmesh_gateway/transport.py with {decorators.get(stated, 'the guard its access needs')}"
                + ("" if stated in decorators else " and state its access in protos/shopmesh/gateway/v1/shop.proto")
            )
    assert wrong == [], "\n".join(wrong)


async def test_the_protected_requests_below_cover_every_method_that_needs_a_token() -> None:
    service = shop_pb2.DESCRIPTOR.services_by_name["ShopService"]
    authenticated = {
        m.name
        for m in service.methods
        if m.GetOptions().Extensions[access_pb2.access] == access_pb2.ACCESS_AUTHENTICATED
    }
    assert authenticated == set(PROTECTED), "add a request for each ACCESS_AUTHENTICATED method to PROTECTED"


@pytest.mark.parametrize("method", sorted(PROTECTED))
async def test_every_protected_method_without_a_token_is_token_missing(shop: Shop, method: str) -> None:
    details = await failure(getattr(shop, method)(PROTECTED[method]))
    assert details.code == grpc.StatusCode.UNAUTHENTICATED
    assert details.error_info is not None
    assert (details.reason, details.error_info.domain) == ("TOKEN_MISSING", "shopmesh.gateway")


async def test_an_expired_token_is_token_expired(shop: Shop, fakes: Fakes) -> None:
    expired = fakes.users.key.token("usr_alice", expires_in=-120)
    details = await failure(shop.ListOrders(shop_pb2.ListOrdersRequest(), metadata=bearer(expired)))
    assert (details.code, details.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED")


async def test_a_tampered_token_is_token_invalid(shop: Shop, fakes: Fakes) -> None:
    genuine = fakes.users.key.token("usr_alice")
    forged = tampered(genuine, iss="shopmesh-users", aud="shopmesh", sub="usr_bob", exp=9_999_999_999)
    details = await failure(shop.ListOrders(shop_pb2.ListOrdersRequest(), metadata=bearer(forged)))
    assert (details.code, details.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")


async def test_a_token_signed_by_another_key_is_token_invalid(shop: Shop, fakes: Fakes) -> None:
    impostor = SigningKey(kid=fakes.users.key.kid).token("usr_alice")
    details = await failure(shop.ListOrders(shop_pb2.ListOrdersRequest(), metadata=bearer(impostor)))
    assert (details.code, details.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")


async def test_a_token_of_an_unpublished_key_is_token_invalid(shop: Shop) -> None:
    stranger = SigningKey().token("usr_alice")
    details = await failure(shop.ListOrders(shop_pb2.ListOrdersRequest(), metadata=bearer(stranger)))
    assert (details.code, details.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")


# --- orders --------------------------------------------------------------------------------------


async def test_place_order_acts_for_the_token_subject_and_returns_the_clients_key(shop: Shop, fakes: Fakes) -> None:
    call = await place(shop, token_for(fakes, "usr_ada"), key="checkout-ada-1", email="usr_ada@users.example")
    response = await call
    assert response.order.state == orders_pb2.ORDER_STATE_CONFIRMED
    assert (response.order.user_id, response.order.email) == ("usr_ada", "usr_ada@users.example")
    assert ("idempotency-key", "checkout-ada-1") in list(await call.trailing_metadata())


async def test_place_order_without_a_key_gets_a_generated_one_in_the_trailers(shop: Shop, fakes: Fakes) -> None:
    call = await place(shop, token_for(fakes))
    await call
    keys = [value for key, value in await call.trailing_metadata() if key == "idempotency-key"]
    assert len(keys) == 1
    assert uuid.UUID(str(keys[0])).version == 4


async def test_place_order_replayed_with_the_same_key_returns_the_same_order(shop: Shop, fakes: Fakes) -> None:
    auth = token_for(fakes)
    first = await await_call(place(shop, auth, key="replay-me"))
    again = await await_call(place(shop, auth, key="replay-me"))
    assert again.order.id == first.order.id


async def await_call(call: Any) -> Any:
    return await (await call)


async def test_place_order_without_an_email_uses_the_accounts_address(shop: Shop, fakes: Fakes) -> None:
    response = await await_call(place(shop, token_for(fakes, "usr_grace")))
    assert response.order.email == "usr_grace@users.example"


@pytest.mark.parametrize(
    ("user_id", "email"),
    [
        ("usr_mallory", "victim@other-company.example"),
        # U+212A KELVIN SIGN, which Unicode lower-cases to "k": the contract's EMAIL_NOT_ACCOUNTS, not an order
        # that orders refuses for its address's format.
        ("usr_kate", "usr_\u212aate@users.example"),
    ],
    ids=["another address", "a non-ASCII look-alike"],
)
async def test_place_order_to_another_address_than_the_accounts_is_refused_and_places_nothing(
    shop: Shop, fakes: Fakes, user_id: str, email: str
) -> None:
    # The order's e-mails go to it: any address let a signed-in user have the shop mail anyone.
    auth = token_for(fakes, user_id)
    details = await failure(await place(shop, auth, key="elsewhere-1", email=email))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "EMAIL_NOT_ACCOUNTS")
    assert [(v.field, v.reason) for v in details.field_violations] == [("email", "EMAIL_NOT_ACCOUNTS")]
    assert not (await shop.ListOrders(shop_pb2.ListOrdersRequest(), metadata=auth, timeout=30)).orders


async def test_place_order_to_the_accounts_address_in_other_letter_case_is_placed_with_the_address_as_typed(
    shop: Shop, fakes: Fakes
) -> None:
    # As typed, as gateways before EMAIL_NOT_ACCOUNTS sent it: a retry across a rolling upgrade is then the
    # same request to orders (test_gateway_composition.py); it is the same mailbox (`is_accounts_address`).
    response = await await_call(place(shop, token_for(fakes, "usr_ada"), email="USR_Ada@Users.Example"))
    assert response.order.email == "USR_Ada@Users.Example"


async def test_a_declined_card_reaches_the_client_as_orders_said_it_with_the_key(shop: Shop, fakes: Fakes) -> None:
    call = await place(shop, token_for(fakes), key="declined-1", card=DECLINED_CARD)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CARD_DECLINED")
    assert details.error_info is not None
    assert details.error_info.domain == "shopmesh.orders"
    assert details.error_info.metadata["order_id"].startswith("ord_")
    assert ("idempotency-key", "declined-1") in list(caught.value.trailing_metadata() or ())


async def test_orders_validation_errors_keep_the_clients_field_paths(shop: Shop, fakes: Fakes) -> None:
    request = order_request()
    request.items[0].quantity = 0
    call = shop.PlaceOrder(request, metadata=token_for(fakes), timeout=30)
    details = await failure(call)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "items[0].quantity" in [v.field for v in details.field_violations]


async def test_the_total_the_customer_confirmed_reaches_orders(shop: Shop, fakes: Fakes) -> None:
    """expected_total is the customer's consent to a price: a gateway that dropped it would have orders charge
    whatever the price is now. A total of one cent, not the real one, is refused PRICE_CHANGED, as orders said it,
    with the real total; that total, sent back, places the order."""
    auth = token_for(fakes)
    stale = order_request()
    stale.expected_total.amount_minor, stale.expected_total.currency = 1, "USD"
    details = await failure(shop.PlaceOrder(stale, metadata=(*auth, ("idempotency-key", "confirm-1")), timeout=30))
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PRICE_CHANGED")
    assert details.error_info is not None
    current = int(details.error_info.metadata["current_total_minor"])
    assert details.error_info.metadata["currency"] == "USD"

    confirmed = order_request()
    confirmed.expected_total.amount_minor, confirmed.expected_total.currency = current, "USD"
    response = await shop.PlaceOrder(confirmed, metadata=(*auth, ("idempotency-key", "confirm-1")), timeout=30)
    assert response.order.state == orders_pb2.ORDER_STATE_CONFIRMED
    assert response.order.total.amount_minor == current


async def test_an_unusable_idempotency_key_is_invalid_argument(shop: Shop, fakes: Fakes) -> None:
    details = await failure(await place(shop, token_for(fakes), key="k" * 256))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "IDEMPOTENCY_KEY_INVALID")


async def test_two_different_idempotency_keys_are_invalid_argument_and_place_no_order(shop: Shop, fakes: Fakes) -> None:
    """Taking the first of the two, a retry with the headers in the other order would be a second order."""
    auth = token_for(fakes)
    keys = (("idempotency-key", "two-keys-a"), ("idempotency-key", "two-keys-b"))
    details = await failure(shop.PlaceOrder(order_request(), metadata=(*auth, *keys), timeout=30))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "IDEMPOTENCY_KEY_INVALID")
    assert [(v.field, v.reason) for v in details.field_violations] == [("idempotency-key", "DUPLICATE")]
    assert not (await shop.ListOrders(shop_pb2.ListOrdersRequest(), metadata=auth, timeout=30)).orders


async def test_an_empty_idempotency_key_is_invalid_argument_and_places_no_order(shop: Shop, fakes: Fakes) -> None:
    """Taken as absent, each retry of a client whose key went blank would get a new generated key: a new order."""
    auth = token_for(fakes)
    details = await failure(shop.PlaceOrder(order_request(), metadata=(*auth, ("idempotency-key", "")), timeout=30))
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "IDEMPOTENCY_KEY_INVALID")
    assert [(v.field, v.reason) for v in details.field_violations] == [("idempotency-key", "INVALID_FORMAT")]
    assert not (await shop.ListOrders(shop_pb2.ListOrdersRequest(), metadata=auth, timeout=30)).orders


async def test_the_same_idempotency_key_sent_twice_is_one_key(shop: Shop, fakes: Fakes) -> None:
    auth = token_for(fakes)
    twice = (("idempotency-key", "same-key-twice"), ("idempotency-key", "same-key-twice"))
    first = await shop.PlaceOrder(order_request(), metadata=(*auth, *twice), timeout=30)
    again = await await_call(place(shop, auth, key="same-key-twice"))
    assert again.order.id == first.order.id


async def test_get_list_and_cancel_see_only_the_callers_orders(shop: Shop, fakes: Fakes) -> None:
    alice, bob = token_for(fakes, "usr_alice_o"), token_for(fakes, "usr_bob_o")
    order = (await await_call(place(shop, alice))).order
    assert (await shop.GetOrder(shop_pb2.GetOrderRequest(order_id=order.id), metadata=alice)).order.id == order.id
    listed = await shop.ListOrders(shop_pb2.ListOrdersRequest(), metadata=alice)
    assert [o.id for o in listed.orders] == [order.id]
    assert list((await shop.ListOrders(shop_pb2.ListOrdersRequest(), metadata=bob)).orders) == []
    not_bobs = await failure(shop.GetOrder(shop_pb2.GetOrderRequest(order_id=order.id), metadata=bob))
    assert (not_bobs.code, not_bobs.reason) == (grpc.StatusCode.NOT_FOUND, "ORDER_NOT_FOUND")
    bob_cancels = await failure(shop.CancelOrder(shop_pb2.CancelOrderRequest(order_id=order.id), metadata=bob))
    assert bob_cancels.code == grpc.StatusCode.NOT_FOUND

    call = shop.CancelOrder(
        shop_pb2.CancelOrderRequest(order_id=order.id, reason="changed my mind"),
        metadata=(*alice, ("idempotency-key", "cancel-1")),
    )
    cancelled = await call
    assert cancelled.order.state == orders_pb2.ORDER_STATE_CANCELLED
    assert ("idempotency-key", "cancel-1") in list(await call.trailing_metadata())
    again = await failure(
        shop.CancelOrder(shop_pb2.CancelOrderRequest(order_id=order.id), metadata=(*alice, ("idempotency-key", "c2")))
    )
    assert (again.code, again.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ORDER_NOT_CANCELLABLE")


async def test_a_cancellation_accepted_while_inventory_is_down_shows_as_pending_in_get_and_list_orders(
    stack: Stack, shop: Shop, fakes: Fakes
) -> None:
    """CancelOrder answered that the cancellation is accepted and completes on its own (UNAVAILABLE naming the
    order): the customer's GetOrder and ListOrders say so (pending_cancellation, the reason given) while the
    order is still CONFIRMED, and no longer once it is CANCELLED."""
    auth = token_for(fakes)
    order = (await await_call(place(shop, auth))).order
    cancel = shop_pb2.CancelOrderRequest(order_id=order.id, reason="changed my mind")
    keyed = (*auth, ("idempotency-key", "cancel-pending-1"))
    expected = orders_pb2.CancelReason(code=orders_pb2.CANCEL_REASON_CODE_CUSTOMER_REQUESTED, message="changed my mind")
    await stack.stop_service("inventory")
    try:
        accepted = await failure(shop.CancelOrder(cancel, metadata=keyed, timeout=30))
        assert (accepted.code, accepted.reason) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
        assert accepted.error_info is not None
        assert accepted.error_info.metadata["order_id"] == order.id
        got = (await shop.GetOrder(shop_pb2.GetOrderRequest(order_id=order.id), metadata=auth)).order
        [listed] = (await shop.ListOrders(shop_pb2.ListOrdersRequest(), metadata=auth)).orders
        for shown in (got, listed):
            assert shown.state == orders_pb2.ORDER_STATE_CONFIRMED
            assert shown.pending_cancellation == expected
    finally:
        await stack.start_service("inventory")

    async def cancelled() -> Any:
        # The customer's retry with the same key, once inventory answers, returns the cancelled order.
        with contextlib.suppress(grpc.aio.AioRpcError):
            return (await shop.CancelOrder(cancel, metadata=keyed, timeout=30)).order
        return None

    done = await eventually(cancelled, f"the cancellation of {order.id} completed")
    assert (done.state, done.cancel_reason) == (orders_pb2.ORDER_STATE_CANCELLED, expected)
    got = (await shop.GetOrder(shop_pb2.GetOrderRequest(order_id=order.id), metadata=auth)).order
    assert not got.HasField("pending_cancellation")


async def test_a_client_sent_user_id_never_reaches_the_internal_services(shop: Shop, fakes: Fakes) -> None:
    victim, attacker = token_for(fakes, "usr_victim"), token_for(fakes, "usr_attacker")
    victims_order = (await await_call(place(shop, victim))).order
    spoofed = (*attacker, ("x-user-id", "usr_victim"))

    missing = await failure(shop.GetOrder(shop_pb2.GetOrderRequest(order_id=victims_order.id), metadata=spoofed))
    assert missing.reason == "ORDER_NOT_FOUND"
    assert list((await shop.ListOrders(shop_pb2.ListOrdersRequest(), metadata=spoofed)).orders) == []
    placed = (await await_call(place(shop, spoofed))).order
    assert placed.user_id == "usr_attacker"

    fakes.notifications.seen_user_ids.clear()
    listed = await shop.ListNotifications(shop_pb2.ListNotificationsRequest(), metadata=spoofed)
    assert [n.user_id for n in listed.notifications] == ["usr_attacker"]
    await shop.ListProducts(shop_pb2.ListProductsRequest(), metadata=(("x-user-id", "usr_victim"),))
    assert fakes.notifications.seen_user_ids == ["usr_attacker"]


async def test_list_notifications_lists_the_callers(shop: Shop, fakes: Fakes) -> None:
    listed = await shop.ListNotifications(shop_pb2.ListNotificationsRequest(), metadata=token_for(fakes, "usr_n"))
    assert [(n.id, n.user_id) for n in listed.notifications] == [("ntf_1", "usr_n")]


# --- limits and failures -------------------------------------------------------------------------


async def test_a_burst_over_the_limit_is_resource_exhausted_with_retry_info(stack: Stack, fakes: Fakes) -> None:
    async with gateway(stack, fakes, rate_limit_burst=3, rate_limit_per_second=0.01) as limited:
        alice, bob = token_for(fakes), token_for(fakes)
        for _ in range(3):
            await limited.ListNotifications(shop_pb2.ListNotificationsRequest(), metadata=alice)
        details = await failure(limited.ListNotifications(shop_pb2.ListNotificationsRequest(), metadata=alice))
        assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
        assert details.error_info is not None
        assert details.error_info.domain == "shopmesh.gateway"
        assert details.retry_delay_seconds is not None
        assert details.retry_delay_seconds > 0
        await limited.ListNotifications(shop_pb2.ListNotificationsRequest(), metadata=bob)


async def test_anonymous_callers_within_the_limit_are_never_refused(stack: Stack, fakes: Fakes) -> None:
    async with gateway(stack, fakes, rate_limit_burst=5, rate_limit_per_second=0.01) as limited:
        for _ in range(5):
            await limited.ListProducts(shop_pb2.ListProductsRequest(page_size=1))
        details = await failure(limited.ListProducts(shop_pb2.ListProductsRequest(page_size=1)))
        assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_stopped_catalog_fails_the_page_at_once_without_waiting_for_recommendations(
    stack: Stack, fakes: Fakes
) -> None:
    fakes.recommendations.mode = "hang"
    dead = f"127.0.0.1:{free_port()}"
    # Recommendations get far more time than the client gives the call: a page that waited for them
    # would end in the client's DEADLINE_EXCEEDED, not in the catalog's UNAVAILABLE.
    async with gateway(stack, fakes, catalog_address=dead, recommendations_timeout_seconds=600) as shop:
        for _ in range(7):  # through the breaker opening after 5 failures
            details = await failure(
                shop.GetProductPage(shop_pb2.GetProductPageRequest(product_id="prod_chef_knife"), timeout=5)
            )
            assert details.code == grpc.StatusCode.UNAVAILABLE
            assert details.error_info is not None
            assert (details.reason, details.error_info.domain) == ("DEPENDENCY_UNAVAILABLE", "shopmesh.gateway")
            assert details.error_info.metadata["dependency"] == "catalog"
            assert details.retry_delay_seconds is not None


async def test_protected_methods_are_unavailable_while_no_key_set_can_be_fetched(stack: Stack, fakes: Fakes) -> None:
    async with gateway(stack, fakes, users_address=f"127.0.0.1:{free_port()}") as shop:
        details = await failure(shop.ListOrders(shop_pb2.ListOrdersRequest(), metadata=token_for(fakes)))
        assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")


@pytest.mark.parametrize("below_the_limit_by", [10, 1000])
async def test_the_largest_order_the_gateway_takes_is_refused_by_orders_for_its_field_not_as_orders_being_away(
    shop: Shop, fakes: Fakes, below_the_limit_by: int
) -> None:
    """A request the gateway takes grows by the user id and the account's e-mail on its way to orders. At
    gRPC's 4 MiB on both, orders' server refused such an order as too large (RESOURCE_EXHAUSTED, no
    details), which the gateway relayed as UNAVAILABLE DEPENDENCY_UNAVAILABLE with RetryInfo: the client
    was told to retry a request that could never succeed. The gateway takes at most 1 MiB."""
    limit = GatewaySettings().grpc_max_receive_message_bytes
    request = order_request()
    request.items[0].product_id = "p" * (limit - 400)
    request.items[0].product_id += "p" * (limit - below_the_limit_by - request.ByteSize())
    assert limit - below_the_limit_by - 2 <= request.ByteSize() <= limit  # the gateway's server takes it
    details = await failure(shop.PlaceOrder(request, metadata=token_for(fakes), timeout=30))
    assert details.retry_delay_seconds is None, f"told to retry: {details.code.name} {details.reason}"
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.reason) for v in details.field_violations] == [("items[0].product_id", "TOO_LONG")]


async def test_an_order_larger_than_the_gateway_takes_is_refused_as_too_large_without_a_retry_hint(
    shop: Shop, fakes: Fakes
) -> None:
    request = order_request()
    request.items[0].product_id = "p" * GatewaySettings().grpc_max_receive_message_bytes
    details = await failure(shop.PlaceOrder(request, metadata=token_for(fakes), timeout=30))
    assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.retry_delay_seconds is None
