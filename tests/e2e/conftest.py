"""Fixtures the end-to-end modules share; each module starts its own `stack`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import httpx
import pytest_asyncio

from shopmesh.gateway.v1 import shop_pb2_grpc
from shopmesh_platform.stack import Stack

from .shop import Shop, shop_client


@pytest_asyncio.fixture(loop_scope="module")
async def shop(stack: Stack) -> AsyncIterator[Shop]:
    """A client of the checkout services of the module's stack."""
    async with shop_client(stack) as client:
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(stack: Stack) -> AsyncIterator[shop_pb2_grpc.ShopServiceStub]:
    """A client of the module's stack's gateway over a plain channel: what a front-end has, nothing of the
    chassis (no retries, no breaker, no deadline of its own)."""
    async with grpc.aio.insecure_channel(stack.address("gateway")) as channel:
        yield shop_pb2_grpc.ShopServiceStub(channel)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the module's stack's HTTP/JSON edge (modules whose stack runs it: `http=True`)."""
    assert stack.http_url is not None, "the module's stack runs no HTTP/JSON edge"
    async with httpx.AsyncClient(base_url=stack.http_url, timeout=30) as client:
        yield client
