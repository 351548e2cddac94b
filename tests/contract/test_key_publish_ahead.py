"""users publishes a new signing key KEY_PUBLISH_AHEAD_SECONDS before it signs with it, so that verifiers
have it before they meet a token it signed (docs/auth.md, "Rotation"). The gateway learns it by the refetch
its key set's age makes due (JWKS_MAX_AGE_SECONDS); if that refetch fails (a users replica restarting), by
a later one, at most JWKS_MIN_REFETCH_INTERVAL_SECONDS after. With the publish-ahead equal to the max age
there was no margin: one failed refetch and fresh logins were refused TOKEN_INVALID for up to 30 s."""

from __future__ import annotations

from shopmesh_gateway.settings import GatewaySettings
from shopmesh_users.settings import UsersSettings

# Beyond the two gateway periods: for a second failed refetch, and for the clocks of users and the gateway
# (their replicas' starts, their check intervals) not being in step.
MARGIN_SECONDS = 60.0


def test_users_publishes_a_new_key_longer_ahead_than_a_gateway_needs_to_learn_it_after_a_failed_refetch() -> None:
    users, gateway = UsersSettings(), GatewaySettings()
    needed = gateway.jwks_max_age_seconds + gateway.jwks_min_refetch_interval_seconds + MARGIN_SECONDS
    assert users.key_publish_ahead_seconds >= needed
