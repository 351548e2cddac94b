"""In-process stand-ins for users, recommendations and notifications, served over real gRPC by the
chassis. They let the service tests mint tokens with their own key (expired ones included), make
recommendations fail or hang on demand, and see the metadata the gateway sends."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import timestamp_pb2

from shopmesh.common.v1 import money_pb2
from shopmesh.notifications.v1 import notifications_pb2, notifications_pb2_grpc
from shopmesh.orders.v1 import orders_pb2, orders_pb2_grpc
from shopmesh.recommendations.v1 import recommendations_pb2, recommendations_pb2_grpc
from shopmesh.users.v1 import users_pb2, users_pb2_grpc
from shopmesh_chassis import errors
from shopmesh_chassis.config import ServiceSettings
from shopmesh_chassis.server import ServiceBinding
from shopmesh_chassis.testing import serve_in_process
from shopmesh_gateway.wiring import Channels

from .gateway_keys import SigningKey
from .gateway_serving import serving_gateway

if TYPE_CHECKING:
    from shopmesh.gateway.v1.shop_pb2_grpc import ShopServiceAsyncStub as Shop

PASSWORD = "correct horse battery"


def user_id_header(context: Any) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "x-user-id":
            return str(value)
    return None


@dataclass
class FakeUsers(users_pb2_grpc.UsersServiceServicer):
    key: SigningKey = field(default_factory=SigningKey)
    accounts: dict[str, str] = field(default_factory=dict)  # e-mail → user id
    # Sign-outs: user id → cutoff (seconds); GetTokenCutoff's calls, and what it does: answer, fail or hang.
    cutoffs: dict[str, float] = field(default_factory=dict)
    cutoff_calls: list[str] = field(default_factory=list)
    cutoff_mode: str = "ok"  # ok | fail | hang

    async def Register(self, request: users_pb2.RegisterRequest, context: Any) -> users_pb2.RegisterResponse:
        if request.email in self.accounts:
            raise errors.AlreadyExists("taken", reason="EMAIL_ALREADY_REGISTERED")
        user_id = f"usr_{len(self.accounts) + 1}"
        self.accounts[request.email] = user_id
        return users_pb2.RegisterResponse(
            user=users_pb2.User(id=user_id, email=request.email, display_name=request.display_name)
        )

    async def Login(self, request: users_pb2.LoginRequest, context: Any) -> users_pb2.LoginResponse:
        user_id = self.accounts.get(request.email)
        if user_id is None or request.password != PASSWORD:
            raise errors.Unauthenticated("wrong e-mail or password", reason="INVALID_CREDENTIALS")
        return users_pb2.LoginResponse(
            access_token=self.key.token(user_id),
            token_type="Bearer",
            expires_at=timestamp_pb2.Timestamp(seconds=4_000_000_000),
            user_id=user_id,
        )

    async def GetUser(self, request: users_pb2.GetUserRequest, context: Any) -> users_pb2.GetUserResponse:
        return users_pb2.GetUserResponse(
            user=users_pb2.User(id=request.user_id, email=f"{request.user_id}@users.example")
        )

    async def SignOut(self, request: users_pb2.SignOutRequest, context: Any) -> users_pb2.SignOutResponse:
        if user_id_header(context) != request.user_id:
            raise errors.PermissionDenied("not yours", reason="USER_MISMATCH")
        self.cutoffs[request.user_id] = time.time()
        response = users_pb2.SignOutResponse()
        response.tokens_valid_after.FromNanoseconds(round(self.cutoffs[request.user_id] * 1e9))
        return response

    async def GetTokenCutoff(
        self, request: users_pb2.GetTokenCutoffRequest, context: Any
    ) -> users_pb2.GetTokenCutoffResponse:
        self.cutoff_calls.append(request.user_id)
        if self.cutoff_mode == "fail":
            raise errors.Unavailable("injected", reason="FAULT_INJECTED")
        if self.cutoff_mode == "hang":
            await asyncio.Event().wait()
        response = users_pb2.GetTokenCutoffResponse()
        if request.user_id in self.cutoffs:
            response.tokens_valid_after.FromNanoseconds(round(self.cutoffs[request.user_id] * 1e9))
        return response

    async def GetJwks(self, request: users_pb2.GetJwksRequest, context: Any) -> users_pb2.GetJwksResponse:
        return users_pb2.GetJwksResponse(keys=[users_pb2.Jwk(**self.key.jwk)])


@dataclass
class FakeRecommendations(recommendations_pb2_grpc.RecommendationsServiceServicer):
    mode: str = "ok"  # ok | fail | hang
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    calls: int = 0

    async def ListRecommendations(
        self, request: recommendations_pb2.ListRecommendationsRequest, context: Any
    ) -> recommendations_pb2.ListRecommendationsResponse:
        self.calls += 1
        if self.mode == "fail":
            raise errors.Unavailable("injected", reason="FAULT_INJECTED")
        if self.mode == "hang":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        return recommendations_pb2.ListRecommendationsResponse(
            recommendations=[
                recommendations_pb2.RecommendedProduct(
                    product_id=product_id,
                    score=score,
                    name=product_id,
                    price=money_pb2.Money(amount_minor=1000, currency="USD"),
                )
                for product_id, score in (("prod_french_press", 0.9), ("prod_burr_grinder", 0.7))
            ][: request.max_results]
        )


@dataclass
class FakeNotifications(notifications_pb2_grpc.NotificationsServiceServicer):
    seen_user_ids: list[str | None] = field(default_factory=list)
    seen_traceparents: list[str | None] = field(default_factory=list)

    async def ListNotifications(
        self, request: notifications_pb2.ListNotificationsRequest, context: Any
    ) -> notifications_pb2.ListNotificationsResponse:
        header = user_id_header(context)
        self.seen_user_ids.append(header)
        self.seen_traceparents.append(dict(context.invocation_metadata() or ()).get("traceparent"))
        if header is not None and header != request.user_id:
            raise errors.PermissionDenied("not yours", reason="USER_MISMATCH")
        return notifications_pb2.ListNotificationsResponse(
            notifications=[notifications_pb2.Notification(id="ntf_1", user_id=request.user_id, subject="Hello")]
        )


@dataclass
class Fakes:
    users: FakeUsers
    recommendations: FakeRecommendations
    notifications: FakeNotifications
    addresses: dict[str, str]


# The methods of users' releases before users_0004 (git show fa571d5e^:protos/shopmesh/users/v1/users.proto):
# no SignOut, no GetTokenCutoff.
USERS_METHODS_BEFORE_SIGN_OUT = ("Register", "Login", "GetUser", "GetJwks")


def registering_only(methods: Collection[str]) -> Callable[[Any, grpc.aio.Server], None]:
    """Registers a users servicer's `methods` only, as an older users release serves its own proto's: a call of
    any other is answered by gRPC itself, UNIMPLEMENTED "Method not found!", without details."""

    def register(servicer: Any, server: grpc.aio.Server) -> None:
        service = users_pb2.DESCRIPTOR.services_by_name["UsersService"]
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                getattr(servicer, name),
                request_deserializer=getattr(users_pb2, method.input_type.name).FromString,
                response_serializer=getattr(users_pb2, method.output_type.name).SerializeToString,
            )
            for name in methods
            for method in (service.methods_by_name[name],)
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))

    return register


@contextlib.asynccontextmanager
async def fakes_serving(users_methods: Collection[str] | None = None) -> AsyncIterator[Fakes]:
    """The stand-ins served; `users_methods`: the only methods users serves (an older release), else all."""
    fakes = Fakes(FakeUsers(), FakeRecommendations(), FakeNotifications(), {})
    register_users = (
        users_pb2_grpc.add_UsersServiceServicer_to_server if users_methods is None else registering_only(users_methods)
    )
    servers = [
        ("users", fakes.users, users_pb2, "UsersService", register_users),
        (
            "recommendations",
            fakes.recommendations,
            recommendations_pb2,
            "RecommendationsService",
            recommendations_pb2_grpc.add_RecommendationsServiceServicer_to_server,
        ),
        (
            "notifications",
            fakes.notifications,
            notifications_pb2,
            "NotificationsService",
            notifications_pb2_grpc.add_NotificationsServiceServicer_to_server,
        ),
    ]
    async with contextlib.AsyncExitStack() as stack:
        for name, servicer, module, service, register in servers:
            settings = ServiceSettings(service_name=name, grpc_port=0, metrics_port=-1)
            binding = ServiceBinding(module.DESCRIPTOR.services_by_name[service], servicer, register)
            server = await stack.enter_async_context(serve_in_process(settings, [binding]))
            fakes.addresses[name] = server.address
        yield fakes


# Nothing listens there: a dependency a test does not reach.
NOWHERE = "127.0.0.1:9"


@contextlib.asynccontextmanager
async def gateway_in_front_of(
    name: str,
    servicer: Any,
    module: Any,
    service: str,
    register: Callable[[Any, grpc.aio.Server], None],
    *,
    client_options: Sequence[tuple[str, Any]] = (),
    **overrides: Any,
) -> AsyncIterator[tuple[Shop, Channels, Fakes]]:
    """The gateway in front of a test's own `servicer` for dependency `name` (`module`'s `service`) and the
    stand-ins, the other dependencies unreachable; its stub, its channels and the stand-ins. `overrides`: the
    gateway's settings."""
    settings = ServiceSettings(service_name=name, grpc_port=0, metrics_port=-1)
    binding = ServiceBinding(module.DESCRIPTOR.services_by_name[service], servicer, register)
    async with fakes_serving() as fakes, serve_in_process(settings, [binding]) as server:
        unreachable = dict.fromkeys(("catalog", "inventory", "orders"), NOWHERE)
        addresses = {**unreachable, **fakes.addresses, name: server.address}
        async with serving_gateway(addresses, client_options=client_options, **overrides) as (shop, channels):
            yield shop, channels, fakes


@contextlib.asynccontextmanager
async def shop_with_orders(
    orders: orders_pb2_grpc.OrdersServiceServicer, client_options: Sequence[tuple[str, Any]] = ()
) -> AsyncIterator[tuple[Shop, Channels, str]]:
    """`gateway_in_front_of` a test's own orders: its stub, its channels, and a token of usr_ada's."""
    register = orders_pb2_grpc.add_OrdersServiceServicer_to_server
    async with gateway_in_front_of(
        "orders", orders, orders_pb2, "OrdersService", register, client_options=client_options
    ) as (shop, channels, fakes):
        yield shop, channels, fakes.users.key.token("usr_ada")
