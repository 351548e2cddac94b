"""The users service's settings: its database, token lifetime, signing-key rotation, argon2 costs."""

from __future__ import annotations

from pydantic import Field, model_validator

from shopmesh_chassis.config import DAY_SECONDS, DatabaseSettings, GrpcPort, Interval, MetricsPort, ServiceName
from shopmesh_users.domain.keys import LONGEST_TOKEN_LIFETIME

_DAY_SECONDS = int(DAY_SECONDS)  # its fields are whole seconds
PASSWORD_HASH_MAX_TIME_COST = 64
PASSWORD_HASH_MAX_MEMORY_KIB = 4 * 1024 * 1024
# argon2 takes up to 2^24 - 1 lanes; no pod has more than 64 cores to run them on.
PASSWORD_HASH_MAX_PARALLELISM = 64


class UsersSettings(DatabaseSettings):
    service_name: ServiceName = "users"
    grpc_port: GrpcPort = 50051
    metrics_port: MetricsPort = 9461

    # Lifetime of an access token (its "exp" - "iat"); the contract's default is one hour. At most a day:
    # these are access tokens, with no way to revoke one, and a typo's 10^12 s would put "exp" past year
    # 9999 (every Login INTERNAL). Changing it later is safe: each signing key records the longest lifetime
    # it signed with and stays published until such tokens expire (docs/auth.md).
    token_lifetime_seconds: int = Field(default=3600, ge=60, le=int(LONGEST_TOKEN_LIFETIME.total_seconds()))
    # How long a new signing key is published before it signs: at least a verifier's cache period plus its
    # refetch interval, with a margin (the gateway: JWKS_MAX_AGE_SECONDS 300 + JWKS_MIN_REFETCH_INTERVAL_SECONDS
    # 30 + 270). At just the cache period, a gateway whose refetch at the period's end failed (a users replica
    # restarting) met the key's first tokens before it could refetch, and refused them. Less only for tests.
    key_publish_ahead_seconds: int = Field(default=600, ge=0, le=30 * _DAY_SECONDS)
    # Periodic rotation: a new key when the newest one is this old; 0 turns it off.
    key_rotation_interval_seconds: int = Field(default=7 * _DAY_SECONDS, ge=0, le=3650 * _DAY_SECONDS)
    # How often the background task checks whether rotation is due.
    key_rotation_check_seconds: Interval = 60.0

    # argon2id costs; the defaults are argon2-cffi's (RFC 9106's low-memory profile). Raising them later
    # is safe: stored hashes are upgraded at each user's next successful login. Until then a wrong password
    # for such an account is checked at the old cost, an unknown e-mail at the new one, so timing can tell
    # the two apart (as Register's EMAIL_ALREADY_REGISTERED tells anyone anyway).
    # The bounds are argon2's own (a larger parallelism or memory fails every hash, or overflows its C types)
    # and what a pod could give: memory at most 4 GiB per hash; 64 passes at the default memory take ~10 s, twice
    # the gateway's users timeout, so every Login past them would time out.
    password_hash_time_cost: int = Field(default=3, ge=1, le=PASSWORD_HASH_MAX_TIME_COST)
    password_hash_memory_kib: int = Field(default=65536, ge=8, le=PASSWORD_HASH_MAX_MEMORY_KIB)
    password_hash_parallelism: int = Field(default=4, ge=1, le=PASSWORD_HASH_MAX_PARALLELISM)
    # Hashes at once (each holds PASSWORD_HASH_MEMORY_KIB while it runs: 2 x 64 MiB fits the pod's 384 MiB
    # beside the service's ~170 MB), and how many more may wait for a turn before a caller is told to
    # retry (RESOURCE_EXHAUSTED, reason PASSWORD_HASHING_BUSY). The queue is the hard cap: a call with a
    # deadline is told so sooner, when those ahead of it and its own hash, at the hash time measured here,
    # would not be done by then (docs/auth.md, "Password hashing admission"); at the defaults ~20 fit the
    # gateway's 5 s, not 34 (~8.5 s).
    password_hash_concurrency: int = Field(default=2, ge=1)
    password_hash_queue: int = Field(default=32, ge=0)

    # Login attempts per e-mail address (docs/auth.md, "Login throttling"), taken when a login is admitted
    # and kept by wrong passwords: this many at once, then one more every LOGIN_FAILURE_REFILL_SECONDS; past
    # that a login for the address is refused (RESOURCE_EXHAUSTED, reason TOO_MANY_LOGIN_ATTEMPTS) before its
    # password is checked. Stored in the database, shared by every replica; every LOGIN_FAILURE_PRUNE_SECONDS
    # the addresses whose attempts have all refilled are deleted.
    login_failure_burst: int = Field(default=10, ge=1)
    login_failure_refill_seconds: float = Field(default=30.0, ge=0.001, le=_DAY_SECONDS)
    login_failure_prune_seconds: Interval = 300.0

    @model_validator(mode="after")
    def _consistent(self) -> UsersSettings:
        if self.password_hash_memory_kib < 8 * self.password_hash_parallelism:
            raise ValueError("PASSWORD_HASH_MEMORY_KIB must be at least 8 x PASSWORD_HASH_PARALLELISM (argon2)")
        if 0 < self.key_rotation_interval_seconds <= self.key_publish_ahead_seconds:
            # Otherwise every rotation would replace a key that has not signed anything yet.
            raise ValueError("KEY_ROTATION_INTERVAL_SECONDS must exceed KEY_PUBLISH_AHEAD_SECONDS (or be 0)")
        return self
