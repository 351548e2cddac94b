"""The composition root of the gateway: settings, one resilient channel per internal service, the token
verifier, the rate limiter, the servicer, serve(). No database: the gateway keeps nothing."""

from __future__ import annotations

from dataclasses import replace

from google.protobuf.descriptor import FileDescriptor
from opentelemetry.sdk.trace import TracerProvider

from shopmesh.catalog.v1 import catalog_pb2
from shopmesh.gateway.v1 import shop_pb2_grpc
from shopmesh.inventory.v1 import inventory_pb2
from shopmesh.notifications.v1 import notifications_pb2
from shopmesh.orders.v1 import orders_pb2
from shopmesh.recommendations.v1 import recommendations_pb2
from shopmesh.users.v1 import users_pb2
from shopmesh_chassis import app
from shopmesh_chassis.client import NO_RETRIES, ClientOptions, ResilientChannel
from shopmesh_chassis.config import load_settings
from shopmesh_chassis.logs import limit_repeats
from shopmesh_chassis.metrics import ServerMetrics
from shopmesh_chassis.server import ServiceBinding
from shopmesh_chassis.token_buckets import TokenBuckets
from shopmesh_gateway.application import DEGRADED_PAGE_LOGGER, Checkout, ProductPages
from shopmesh_gateway.clients import (
    CatalogClient,
    InventoryClient,
    NotificationsClient,
    OrdersClient,
    RecommendationsClient,
    UsersClient,
)
from shopmesh_gateway.guard import Guard
from shopmesh_gateway.metrics import GatewayMetrics
from shopmesh_gateway.settings import GatewaySettings
from shopmesh_gateway.sign_outs import LOGGER as SIGN_OUTS_LOGGER
from shopmesh_gateway.sign_outs import TokenCutoffs
from shopmesh_gateway.tokens import JwksCache, TokenRules, TokenVerifier
from shopmesh_gateway.transport import DESCRIPTOR, ShopServicer


class Channels:
    """One ResilientChannel (deadlines, retries of idempotent methods, circuit breaker) per service."""

    def __init__(self, settings: GatewaySettings, tracer_provider: TracerProvider | None = None) -> None:
        options = ClientOptions(default_timeout_seconds=settings.client_default_timeout_seconds, caller="gateway")

        def channel(
            address: str, contract: FileDescriptor, service: str, options: ClientOptions = options
        ) -> ResilientChannel:
            return ResilientChannel(
                address, [contract.services_by_name[service]], options, tracer_provider=tracer_provider
            )

        self.users = channel(settings.users_address, users_pb2.DESCRIPTOR, "UsersService")
        self.catalog = channel(settings.catalog_address, catalog_pb2.DESCRIPTOR, "CatalogService")
        self.inventory = channel(settings.inventory_address, inventory_pb2.DESCRIPTOR, "InventoryService")
        self.orders = channel(settings.orders_address, orders_pb2.DESCRIPTOR, "OrdersService")
        self.notifications = channel(
            settings.notifications_address, notifications_pb2.DESCRIPTOR, "NotificationsService"
        )
        # One attempt: recommendations are optional and have a budget of a few hundred ms, which the channel's
        # retries of a fast UNAVAILABLE spent (three calls per page, each page waiting out the budget and
        # failing DEADLINE_EXCEEDED instead of the status answered); the page's fallback is their retry.
        self.recommendations = channel(
            settings.recommendations_address,
            recommendations_pb2.DESCRIPTOR,
            "RecommendationsService",
            replace(options, retry=NO_RETRIES),
        )

    def by_dependency(self) -> dict[str, ResilientChannel]:
        return {
            "users": self.users,
            "catalog": self.catalog,
            "inventory": self.inventory,
            "orders": self.orders,
            "notifications": self.notifications,
            "recommendations": self.recommendations,
        }

    async def close(self) -> None:
        for channel in self.by_dependency().values():
            await channel.close()


def build_servicer(settings: GatewaySettings, channels: Channels, metrics: ServerMetrics) -> ShopServicer:
    """The servicer; `metrics`: the server's, which the gateway's own metrics join."""
    gateway_metrics = GatewayMetrics(metrics.registry)
    users = UsersClient(channels.users.channel, settings.users_timeout_seconds)
    catalog = CatalogClient(channels.catalog.channel, settings.catalog_timeout_seconds)
    inventory = InventoryClient(channels.inventory.channel, settings.inventory_timeout_seconds)
    recommendations = RecommendationsClient(channels.recommendations.channel)
    orders = OrdersClient(
        channels.orders.channel,
        place_timeout=settings.orders_timeout_seconds,
        read_timeout=settings.orders_read_timeout_seconds,
        cancel_timeout=settings.orders_cancel_timeout_seconds,
    )
    notifications = NotificationsClient(channels.notifications.channel, settings.notifications_timeout_seconds)
    verifier = TokenVerifier(
        JwksCache(
            users.jwks,
            max_age_seconds=settings.jwks_max_age_seconds,
            min_refetch_interval_seconds=settings.jwks_min_refetch_interval_seconds,
            hard_max_age_seconds=settings.jwks_hard_max_age_seconds,
        ),
        TokenRules(settings.jwt_issuer, settings.jwt_audience, settings.jwt_leeway_seconds),
    )
    buckets: TokenBuckets[str] = TokenBuckets(
        settings.rate_limit_per_second, settings.rate_limit_burst, settings.rate_limit_max_clients
    )
    password_buckets: TokenBuckets[str] = TokenBuckets(
        settings.password_rate_limit_per_second, settings.password_rate_limit_burst, settings.rate_limit_max_clients
    )
    password_site_buckets: TokenBuckets[str] = TokenBuckets(
        settings.password_site_rate_limit_per_second,
        settings.password_site_rate_limit_burst,
        settings.rate_limit_max_clients,
    )
    cutoffs = TokenCutoffs(
        users.token_cutoff,
        ttl_seconds=settings.token_cutoff_cache_seconds,
        max_users=settings.token_cutoff_cache_max_users,
        fail_closed=settings.token_cutoff_fail_closed,
    )
    limit_repeats(DEGRADED_PAGE_LOGGER)
    limit_repeats(SIGN_OUTS_LOGGER)
    return ShopServicer(
        Guard(
            verifier,
            buckets,
            settings.trusted_proxy_networks,
            password_buckets=password_buckets,
            password_site_buckets=password_site_buckets,
            latency_threshold_seconds=settings.min_client_deadline_seconds,
            cutoffs=cutoffs,
        ),
        users=users,
        catalog=catalog,
        orders=orders,
        notifications=notifications,
        product_pages=ProductPages(
            catalog,
            inventory,
            recommendations,
            settings.recommendations_timeout_seconds,
            on_degraded=gateway_metrics.degraded_page,
        ),
        checkout=Checkout(users, orders),
    )


def binding(servicer: ShopServicer) -> ServiceBinding:
    return ServiceBinding(DESCRIPTOR, servicer, shop_pb2_grpc.add_ShopServiceServicer_to_server)


async def _main() -> None:
    settings = load_settings(GatewaySettings)
    tracer_provider = app.setup_observability(settings)
    channels = Channels(settings, tracer_provider)
    metrics = ServerMetrics()
    for dependency, channel in channels.by_dependency().items():
        metrics.watch_breakers(dependency, channel.breakers)
    await app.serve(
        settings,
        [binding(build_servicer(settings, channels, metrics))],
        tracer_provider=tracer_provider,
        on_shutdown=[channels.close],
        metrics=metrics,
    )


def main() -> None:
    app.run(_main)
