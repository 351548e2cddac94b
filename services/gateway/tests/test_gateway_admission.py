"""The guard's pieces (bearer header, client address, acting for a user, rate limit) and the translation
of internal services' failures, without a server."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
import pytest
from grpc.aio import Metadata

from shopmesh_chassis import call_context, errors
from shopmesh_chassis.grpc_errors import to_rpc_status
from shopmesh_gateway.domain.rate_limit import TokenBuckets
from shopmesh_gateway.downstream import calling, translate
from shopmesh_gateway.guard import Guard, acting_for, bearer_token, client_address
from shopmesh_gateway.tokens import JwksCache, TokenRules, TokenVerifier

from .gateway_keys import AUDIENCE, ISSUER, SigningKey


@dataclass
class FakeContext:
    metadata: list[tuple[str, str]] = field(default_factory=list)
    peer_address: str = "ipv4:10.1.2.3:40000"

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self.metadata

    def peer(self) -> str:
        return self.peer_address

    def time_remaining(self) -> float | None:
        return 5.0


def test_the_bearer_token_is_read_from_the_authorization_header() -> None:
    assert bearer_token(FakeContext([("authorization", "Bearer abc.def.ghi")])) == "abc.def.ghi"
    assert bearer_token(FakeContext([("authorization", "bearer  abc ")])) == "abc"


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ([], "TOKEN_MISSING"),
        ([("authorization", "  ")], "TOKEN_MISSING"),
        ([("authorization", "Basic dXNlcjpwYXNz")], "TOKEN_INVALID"),
        ([("authorization", "Bearer")], "TOKEN_INVALID"),
        ([("authorization", "Bearer a"), ("authorization", "Bearer b")], "TOKEN_INVALID"),
    ],
    ids=["absent", "blank", "other-scheme", "no-token", "two-headers"],
)
def test_a_missing_or_malformed_authorization_header_is_unauthenticated(
    metadata: list[tuple[str, str]], reason: str
) -> None:
    with pytest.raises(errors.Unauthenticated) as caught:
        bearer_token(FakeContext(metadata))
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.1:54321", "127.0.0.1"),
        ("ipv6:[::1]:54321", "::1"),
        ("ipv6:%5B2001:db8::7%5D:443", "2001:db8::7"),
        ("unix:/tmp/sock", "unix:/tmp/sock"),
    ],
)
def test_the_client_address_is_the_peer_ip_without_the_port(peer: str, address: str) -> None:
    assert client_address(peer) == address


def test_acting_for_replaces_a_client_sent_user_id_and_caller() -> None:
    spoofing = FakeContext([("x-user-id", "usr_victim"), ("x-caller", "orders"), ("traceparent", "00-ab-cd-01")])
    with acting_for(spoofing, "usr_alice"):
        current = call_context.current()
        assert current is not None
        assert (current.user_id, current.caller) == ("usr_alice", None)
    with acting_for(spoofing, None):
        current = call_context.current()
        assert current is not None
        assert current.user_id is None
    assert call_context.current() is None


class StaticKeys:
    def __init__(self, key: SigningKey) -> None:
        self._key = key

    async def jwks(self) -> Sequence[Mapping[str, str]]:
        return [self._key.jwk]


def guard_with(key: SigningKey, burst: int) -> Guard:
    verifier = TokenVerifier(JwksCache(StaticKeys(key).jwks), TokenRules(ISSUER, AUDIENCE))
    return Guard(verifier, TokenBuckets(rate=0.001, burst=burst, max_keys=100))


async def test_users_are_limited_by_their_id_and_anonymous_callers_by_their_address() -> None:
    key = SigningKey()
    guard = guard_with(key, burst=1)
    alice = FakeContext([("authorization", f"Bearer {key.token('usr_alice')}")])
    assert await guard.admit_user(alice) == "usr_alice"
    with pytest.raises(errors.ResourceExhausted) as caught:
        await guard.admit_user(FakeContext(alice.metadata, peer_address="ipv4:10.9.9.9:1"))
    assert caught.value.reason == "RATE_LIMITED"
    assert caught.value.retry_after_seconds == pytest.approx(1000.0)
    guard.admit_anonymous(FakeContext())
    with pytest.raises(errors.ResourceExhausted):
        guard.admit_anonymous(FakeContext(peer_address="ipv4:10.1.2.3:40001"))


async def test_failed_authentications_count_against_the_address() -> None:
    guard = guard_with(SigningKey(), burst=2)
    with pytest.raises(errors.Unauthenticated):
        await guard.admit_user(FakeContext([("authorization", "Bearer forged")]))
    with pytest.raises(errors.Unauthenticated):
        await guard.admit_user(FakeContext())
    with pytest.raises(errors.ResourceExhausted):
        await guard.admit_user(FakeContext([("authorization", "Bearer forged")]))


def rpc_error(code: grpc.StatusCode, error: errors.DomainError | None, domain: str) -> grpc.aio.AioRpcError:
    trailing = Metadata()
    if error is not None:
        status = to_rpc_status(error, domain)
        status.code = code.value[0]
        trailing.add("grpc-status-details-bin", status.SerializeToString())
    return grpc.aio.AioRpcError(code, Metadata(), trailing, details="failed")


def test_an_internal_services_error_is_replayed_unchanged() -> None:
    declined = rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        errors.FailedPrecondition("declined", reason="CARD_DECLINED", metadata={"order_id": "ord_1"}),
        "shopmesh.orders",
    )
    replayed = translate("orders", declined)
    assert isinstance(replayed, errors.ReplayedError)
    assert replayed.status == dict(declined.trailing_metadata())["grpc-status-details-bin"]


def test_a_dependency_that_reported_unavailable_itself_is_passed_through() -> None:
    busy = rpc_error(
        grpc.StatusCode.UNAVAILABLE,
        errors.Unavailable("payments down", reason="DEPENDENCY_UNAVAILABLE", retry_after_seconds=2),
        "shopmesh.orders",
    )
    assert isinstance(translate("orders", busy), errors.ReplayedError)


@pytest.mark.parametrize(
    "code",
    [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED],
)
def test_a_failure_no_service_reported_is_the_gateways_dependency_unavailable(code: grpc.StatusCode) -> None:
    translated = translate("catalog", rpc_error(code, None, ""))
    assert isinstance(translated, errors.Unavailable)
    assert (translated.reason, translated.metadata, translated.domain) == (
        "DEPENDENCY_UNAVAILABLE",
        {"dependency": "catalog"},
        None,
    )
    assert translated.retry_after_seconds == 1.0


def test_an_open_circuit_of_the_gateways_own_channel_is_its_dependency_unavailable() -> None:
    circuit_open = rpc_error(
        grpc.StatusCode.UNAVAILABLE,
        errors.Unavailable("circuit open", reason="CIRCUIT_OPEN", retry_after_seconds=3.5),
        "shopmesh.chassis",
    )
    translated = translate("catalog", circuit_open)
    assert isinstance(translated, errors.Unavailable)
    assert (translated.reason, translated.retry_after_seconds) == ("DEPENDENCY_UNAVAILABLE", 3.5)


def test_an_undocumented_status_without_details_is_left_to_the_chassis() -> None:
    broken = rpc_error(grpc.StatusCode.INTERNAL, None, "")
    with pytest.raises(grpc.aio.AioRpcError) as caught, calling("catalog"):
        raise broken
    assert caught.value is broken
