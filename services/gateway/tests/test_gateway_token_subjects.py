"""A token's subject is what the gateway forwards as `x-user-id` metadata: a subject that cannot be sent as
gRPC metadata must be refused as the contract says (UNAUTHENTICATED, TOKEN_INVALID), not leave the call
hanging until the client's deadline.

gRPC metadata values are printable ASCII; the gateway checks only that a subject is a non-empty string of at
most 64 characters, then puts it in the internal call's metadata, where grpc.aio fails the call inside the
gateway ("Illegal header value") and the client's call is never answered.
"""

from __future__ import annotations

import grpc
import pytest

from shopmesh.gateway.v1 import shop_pb2
from shopmesh_chassis.grpc_errors import details_of

from .gateway_fakes import fakes_serving
from .gateway_serving import bearer, serving_gateway

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("subject", ["usr_\u00e9", "usr_a\nb"], ids=["non-ascii", "newline"])
async def test_a_token_whose_subject_cannot_be_sent_as_metadata_is_token_invalid_not_a_hang(subject: str) -> None:
    async with fakes_serving() as fakes, serving_gateway(fakes.addresses) as (shop, _):
        token = fakes.users.key.token(subject)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await shop.ListNotifications(shop_pb2.ListNotificationsRequest(), metadata=bearer(token), timeout=5)
        details = details_of(caught.value)
        assert (details.code, details.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID"), (
            f"{details.code.name}: {details.message}"
        )
