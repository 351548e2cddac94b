"""Fixtures the end-to-end modules share; each module starts its own `stack`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest_asyncio

from shopmesh_platform.stack import Stack

from .shop import Shop, shop_client


@pytest_asyncio.fixture(loop_scope="module")
async def shop(stack: Stack) -> AsyncIterator[Shop]:
    """A client of the checkout services of the module's stack (modules that talk to the gateway
    define their own `shop`)."""
    async with shop_client(stack) as client:
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the module's stack's HTTP/JSON edge (modules whose stack runs it: `http=True`)."""
    assert stack.http_url is not None, "the module's stack runs no HTTP/JSON edge"
    async with httpx.AsyncClient(base_url=stack.http_url, timeout=30) as client:
        yield client
