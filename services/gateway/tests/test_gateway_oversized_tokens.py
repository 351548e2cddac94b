"""A bearer token as large as gRPC metadata allows is refused before it is read: parsed, each such call held
the gateway's event loop ~40 ms, and every other client of the gateway with it, the calls the address's rate
limit refused included (it is charged once the token has failed)."""

from __future__ import annotations

import base64
import json

import grpc
import jwt
import pytest

from shopmesh.gateway.v1 import shop_pb2
from shopmesh_chassis.grpc_errors import details_of

from .gateway_fakes import fakes_serving
from .gateway_serving import bearer, serving_gateway

# Nothing listens here: the core services are never called by this test.
NOWHERE = "127.0.0.1:9"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forged_token(kid: str, padding: int) -> str:
    """A token naming a published key, its header padded, its signature zeros."""
    header = _b64(json.dumps({"alg": "EdDSA", "kid": kid, "pad": "x" * padding}).encode())
    return f"{header}.{_b64(b'{}')}.{_b64(bytes(64))}"


async def test_a_huge_forged_token_is_refused_unread_and_still_charged_to_the_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parsed: list[int] = []
    read_header = jwt.get_unverified_header

    def counting(token: str) -> dict[str, object]:
        parsed.append(len(token))
        return read_header(token)

    monkeypatch.setattr(jwt, "get_unverified_header", counting)
    async with fakes_serving() as fakes:
        addresses = {**dict.fromkeys(("catalog", "inventory", "orders"), NOWHERE), **fakes.addresses}
        # One call per address and (practically) no refill: the second failed token is over the limit.
        async with serving_gateway(addresses, rate_limit_burst=1, rate_limit_per_second=0.001) as (shop, _):
            # A shopper's token is read (and takes the user's bucket, not the address's).
            await shop.ListNotifications(
                shop_pb2.ListNotificationsRequest(), metadata=bearer(fakes.users.key.token("usr_ann")), timeout=30
            )
            assert parsed, "the gateway reads tokens with jwt.get_unverified_header"
            parsed.clear()
            huge = bearer(forged_token(fakes.users.key.kid, 180_000))
            outcomes = []
            for _ in range(2):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await shop.ListNotifications(shop_pb2.ListNotificationsRequest(), metadata=huge, timeout=30)
                details = details_of(caught.value)
                outcomes.append((details.code, details.reason))
    assert outcomes == [
        (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED"),
    ]
    assert parsed == [], "a token over MAX_TOKEN_CHARS was parsed"
