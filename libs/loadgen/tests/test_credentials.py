"""When a shopper renews its token (docs/auth.md "Tokens"), on a clock the tests move: before it expires, at a
point drawn from its lifetime so that shoppers who logged in together do not renew together."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shopmesh_loadgen.credentials import MIN_RENEWAL_SECONDS, Credentials, timestamp

LOGIN_AT = 1_900_000_000.0
HOUR = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = LOGIN_AT

    def __call__(self) -> float:
        return self.now


def login(token: str, expires_at: float) -> dict[str, str]:
    """The edge's login answer: protobuf's JSON for a Timestamp is RFC 3339 in UTC."""
    moment = datetime.fromtimestamp(expires_at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"accessToken": token, "tokenType": "Bearer", "expiresAt": moment, "userId": "usr_1"}


def renewal_time(clock: Clock, credentials: Credentials, until: float) -> float | None:
    """The first second at which the renewal is due, walking the clock from now to `until`."""
    while clock.now < until:
        if credentials.due():
            return clock.now - LOGIN_AT
        clock.now += 1
    return None


def test_a_shopper_without_a_token_is_due_to_log_in() -> None:
    assert Credentials(Clock()).due()


@pytest.mark.parametrize(("draw", "after"), [(0.0, 0.6 * HOUR), (0.5, 0.75 * HOUR), (0.999, 0.9 * HOUR)])
def test_a_token_is_renewed_between_60_and_90_percent_of_its_lifetime_as_drawn(draw: float, after: float) -> None:
    clock = Clock()
    credentials = Credentials(clock, lambda: draw)
    credentials.logged_in(login("a", LOGIN_AT + HOUR))
    assert credentials.token == "a"
    renewed = renewal_time(clock, credentials, LOGIN_AT + HOUR)
    assert renewed is not None
    assert after - 1 <= renewed <= after + 1


def test_shoppers_who_logged_in_together_renew_at_different_times_all_before_expiry() -> None:
    """All of a run's shoppers log in in its first seconds: kept until refused, their tokens expired together."""
    draws = iter(i / 20 for i in range(20))
    renewals = []
    for _ in range(20):
        clock = Clock()
        credentials = Credentials(clock, lambda: next(draws))
        credentials.logged_in(login("a", LOGIN_AT + HOUR))
        renewals.append(renewal_time(clock, credentials, LOGIN_AT + HOUR))
    assert None not in renewals
    assert len(set(renewals)) == 20
    assert max(r for r in renewals if r is not None) - min(r for r in renewals if r is not None) >= 0.25 * HOUR


def test_a_renewed_token_replaces_the_old_one_and_is_renewed_in_its_own_time() -> None:
    clock = Clock()
    credentials = Credentials(clock, lambda: 0.5)
    credentials.logged_in(login("a", LOGIN_AT + HOUR))
    clock.now += 0.75 * HOUR
    assert credentials.due()
    credentials.logged_in(login("b", clock.now + HOUR))
    assert (credentials.token, credentials.due()) == ("b", False)
    assert renewal_time(clock, credentials, clock.now + HOUR) == pytest.approx(1.5 * HOUR, abs=1)


def test_a_failed_renewal_keeps_the_token_while_it_is_good_and_drops_it_once_expired() -> None:
    """users refusing a renewal (its hashing queue full) must not sign the shopper out of a token still good."""
    clock = Clock()
    credentials = Credentials(clock, lambda: 0.0)
    credentials.logged_in(login("a", LOGIN_AT + HOUR))
    clock.now += 0.7 * HOUR
    credentials.logged_in(None)
    assert (credentials.token, credentials.due()) == ("a", True)
    clock.now = LOGIN_AT + HOUR
    credentials.logged_in(None)
    assert (credentials.token, credentials.due()) == ("", True)


def test_a_refused_token_is_dropped_and_due_for_a_login() -> None:
    clock = Clock()
    credentials = Credentials(clock, lambda: 0.0)
    credentials.logged_in(login("a", LOGIN_AT + HOUR))
    credentials.refused()
    assert (credentials.token, credentials.due()) == ("", True)


def test_a_token_without_a_stated_expiry_is_kept_until_refused() -> None:
    clock = Clock()
    credentials = Credentials(clock, lambda: 0.0)
    credentials.logged_in({"accessToken": "a"})
    assert renewal_time(clock, credentials, LOGIN_AT + 2 * HOUR) is None


def test_a_clock_ahead_of_the_expiry_renews_at_most_every_min_renewal_seconds_not_at_every_step() -> None:
    """A shopper's clock ahead of users' by more than the lifetime sees every token expired on arrival."""
    clock = Clock()
    credentials = Credentials(clock, lambda: 0.5)
    credentials.logged_in(login("a", LOGIN_AT - 5))
    assert renewal_time(clock, credentials, LOGIN_AT + HOUR) == MIN_RENEWAL_SECONDS


def test_a_clock_ahead_of_the_expiry_keeps_the_token_through_a_failed_renewal() -> None:
    """The gateway still takes a token whose `expiresAt` this clock reads as past: a renewal refused (a 429) keeps
    it until the next renewal, not drops it at once."""
    clock = Clock()
    credentials = Credentials(clock, lambda: 0.5)
    credentials.logged_in(login("a", LOGIN_AT - 5))
    clock.now += MIN_RENEWAL_SECONDS
    credentials.logged_in(None)
    assert credentials.token == "a"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2030-03-17T17:46:40Z", 1_900_000_000.0),
        ("2030-03-17T17:46:40.250Z", 1_900_000_000.25),
        ("2030-03-17T17:46:40.123456789Z", 1_900_000_000.123456),
        ("2030-03-17T18:46:40+01:00", 1_900_000_000.0),
        ("2030-03-17T17:46:40", None),
        ("tomorrow", None),
        (1_900_000_000, None),
    ],
)
def test_timestamps_read_from_json(value: object, seconds: float | None) -> None:
    assert timestamp(value) == (pytest.approx(seconds) if seconds is not None else None)
