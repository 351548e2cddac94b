"""A dependency's "do not retry" for the gateway's own short call is not relayed to a shopper as final; a
dependency's transient answer the gateway's channel has retried already is relayed as "do not retry".

The chassis sends gRFC A6's pushback -1 both for an answer final for the call and for a RetryInfo wait ending
past that call's deadline. The gateway gives catalog 2 s: catalog asking for 5 s is -1 for that call, and says
nothing about a shopper's 30 s; only the chassis' final marker (orders' accepted cancellation) is relayed final.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from shopmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from shopmesh.gateway.v1 import shop_pb2
from shopmesh_chassis import errors
from shopmesh_chassis.client import RetryPolicy
from shopmesh_chassis.grpc_errors import answered_final, details_of
from shopmesh_chassis.testing import told_not_to_retry

from .gateway_fakes import gateway_in_front_of
from .gateway_serving import RETRYING_CLIENT

if TYPE_CHECKING:
    from shopmesh.gateway.v1.shop_pb2_grpc import ShopServiceAsyncStub as Shop

# Longer than the gateway's catalog_timeout_seconds (2 s), shorter than the shopper's deadline.
CATALOG_WAIT = 5.0


@dataclass
class CatalogAskingToWait(catalog_pb2_grpc.CatalogServiceServicer):
    """ListProducts answers as a catalog whose database is away: UNAVAILABLE asking for `wait`."""

    wait: float = CATALOG_WAIT
    calls: int = 0

    async def ListProducts(
        self, request: catalog_pb2.ListProductsRequest, context: Any
    ) -> catalog_pb2.ListProductsResponse:
        self.calls += 1
        raise errors.Unavailable("the database is away", reason="DATABASE_UNAVAILABLE", retry_after_seconds=self.wait)


@contextlib.asynccontextmanager
async def shop_in_front_of(catalog: CatalogAskingToWait) -> AsyncIterator[Shop]:
    register = catalog_pb2_grpc.add_CatalogServiceServicer_to_server
    async with gateway_in_front_of(
        "catalog",
        catalog,
        catalog_pb2,
        "CatalogService",
        register,
        client_options=RETRYING_CLIENT,
        catalog_timeout_seconds=2.0,
    ) as (shop, _, _):
        yield shop


@pytest.mark.parametrize(
    ("shopper_timeout", "do_not_retry", "catalog_calls"),
    [(30, False, RetryPolicy().max_attempts), (4, True, 1)],
    ids=["wait-fits-the-shoppers-deadline", "wait-past-the-shoppers-deadline"],
)
async def test_a_dependencys_wait_past_the_gateways_own_deadline_is_weighed_against_the_shoppers(
    shopper_timeout: float, do_not_retry: bool, catalog_calls: int
) -> None:
    """catalog's 5 s did not fit the gateway's 2 s call, so catalog's chassis sent -1 for it; the gateway read
    that as final and told a shopper with 30 s "do not retry". Relayed with its RetryInfo, the wait is weighed
    against the shopper's deadline: retried by the shopper's channel under 30 s, -1 under 4 s; final never."""
    catalog = CatalogAskingToWait()
    async with shop_in_front_of(catalog) as shop:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await shop.ListProducts(shop_pb2.ListProductsRequest(), timeout=shopper_timeout)
    details = details_of(caught.value)
    assert (details.code, details.reason, details.retry_delay_seconds) == (
        grpc.StatusCode.UNAVAILABLE,
        "DATABASE_UNAVAILABLE",
        CATALOG_WAIT,
    )
    assert (told_not_to_retry(caught.value), answered_final(caught.value), catalog.calls) == (
        do_not_retry,
        False,
        catalog_calls,
    )


async def test_a_dependencys_answer_the_gateways_channel_retried_is_not_retried_by_the_shoppers() -> None:
    """catalog's database is away and its wait fits the gateway's 2 s: the gateway's channel tries catalog
    RetryPolicy().max_attempts times and relays the last answer. Retried by the shopper's channel too, each of its
    attempts tried catalog as often again: 16 calls for one ListProducts. The gateway's channel spent catalog's
    retries, so the relay goes out "do not retry" (not final, catalog's status and RetryInfo unchanged)."""
    catalog = CatalogAskingToWait(wait=0.5)
    async with shop_in_front_of(catalog) as shop:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await shop.ListProducts(shop_pb2.ListProductsRequest(), timeout=30)
    details = details_of(caught.value)
    assert (details.code, details.reason, details.retry_delay_seconds) == (
        grpc.StatusCode.UNAVAILABLE,
        "DATABASE_UNAVAILABLE",
        0.5,
    )
    assert (told_not_to_retry(caught.value), answered_final(caught.value), catalog.calls) == (
        True,
        False,
        RetryPolicy().max_attempts,
    )
