"""The inventory service's settings (environment variables; see docs/chassis.md for the common ones)."""

from __future__ import annotations

from pydantic import Field, field_validator

from shopmesh_chassis.config import (
    DAY_SECONDS,
    RETENTION_MAX_SECONDS,
    DatabaseSettings,
    GrpcPort,
    Interval,
    MetricsPort,
    ServiceName,
)

# The longest orders leaves an unfinished order alone between two tries (RECOVERY_BACKOFF_MAX_SECONDS, an
# interval: at most a day) plus the longest saga deadline (RESERVATION_TTL_SECONDS, at most an hour, which is
# also the longest a reservation stays PENDING): a saga that waits through one full backoff, with no outage
# at all, may still replay a call about a reservation that ended that long ago. No retention may be shorter.
MIN_RESERVATION_RETENTION_SECONDS = DAY_SECONDS + 3600.0


class InventorySettings(DatabaseSettings):
    service_name: ServiceName = "inventory"
    grpc_port: GrpcPort = 50053
    metrics_port: MetricsPort = 9463

    # How often PENDING reservations past expires_at are recorded as EXPIRED and their units freed.
    # Reads and Reserve already treat them as expired in between; the sweep keeps `reserved` exact.
    reservation_sweep_interval_seconds: Interval = 1.0
    # Reservations expired per batch; each one in its own short transaction.
    reservation_sweep_batch_size: int = Field(default=100, ge=1, le=10_000)

    # A finished reservation (COMMITTED, RELEASED, EXPIRED) is deleted with its items this long after it ended
    # (0 = kept for ever); its order, id and final state stay (purged_reservations), so that a replayed Reserve
    # is refused (RESERVATION_PURGED) rather than reserve for the order again. Orders replays Reserve, Commit
    # and Release for as long as an order's saga is unfinished, with no give-up: a saga stuck past this (orders
    # down, or cut off from inventory or payments, that long) cancels and refunds instead of confirming, and a
    # customer's cancellation of an order confirmed longer ago is refunded without its units going back to
    # stock. 30 days: several times the longest outage the rest of the system survives (a week: events older
    # than NATS_STREAM_MAX_AGE_SECONDS are dropped), plus orders' longest backoff and saga deadline.
    reservation_retention_seconds: float = Field(
        default=30 * DAY_SECONDS, ge=0, le=RETENTION_MAX_SECONDS, allow_inf_nan=False
    )
    # How often reservations past the retention are deleted, 500 per transaction.
    reservation_purge_interval_seconds: Interval = 3600.0

    # At startup, create stock records for the demo shop's products that have none (never overwrites).
    seed_stock: bool = True

    @field_validator("reservation_retention_seconds")
    @classmethod
    def _outlives_orders_retries(cls, value: float) -> float:
        if value and value < MIN_RESERVATION_RETENTION_SECONDS:
            raise ValueError(
                f"must be 0 (for ever) or at least {MIN_RESERVATION_RETENTION_SECONDS:g}: orders may replay a call "
                "about a reservation a day and an hour after it ended with no outage at all (its longest "
                "recovery backoff and saga deadline); docs/operations.md, 'Retention'"
            )
        return value
