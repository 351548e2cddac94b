"""What the edge's error answers say, read from their JSON body (a google.rpc.Status, docs/http-api.md "Errors"),
and which of them a shopper takes as the shop's answer rather than a fault.

No Locust here: importing Locust monkey-patches the process for gevent, which the unit tests' asyncio must not get.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
# gRPC's code in the Status' `code`: a checkout the saga carried to an end the shop states (a declined card, too
# little stock, too little money on the card: the order is cancelled) or refused before anything was done (a
# price changed since the shopper read it) is FAILED_PRECONDITION, a 400 like a malformed request, which only
# the code tells apart (INVALID_ARGUMENT would be this generator's own bug).
FAILED_PRECONDITION = 9
ALREADY_EXISTS = 6
PRICE_CHANGED = "PRICE_CHANGED"


@dataclass(frozen=True)
class Refusal:
    """An error answer: the Status' code, its ErrorInfo's reason and metadata, its RetryInfo's delay (seconds)."""

    status: int
    code: int = 0
    reason: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    retry_delay: float | None = None

    @property
    def settles_checkout(self) -> bool:
        """A checkout answer the storefront shows as the outcome (docs/storefront.md: FAILED_PRECONDITION settles
        the request), not a fault to count."""
        return self.code == FAILED_PRECONDITION

    @property
    def already_exists(self) -> bool:
        return self.code == ALREADY_EXISTS

    @property
    def accepted_for_later(self) -> bool:
        """A 503 naming the order: a cancellation accepted, which completes on its own (docs/http-api.md)."""
        return self.status == 503 and bool(self.metadata.get("order_id"))

    @property
    def new_total_minor(self) -> int | None:
        """PRICE_CHANGED's current total, which the shopper agrees to and checks out at; None for any other."""
        total = self.metadata.get("current_total_minor", "")
        return int(total) if self.reason == PRICE_CHANGED and total.isdigit() else None

    def __str__(self) -> str:
        """How Locust's error report groups it: "503 DEPENDENCY_UNAVAILABLE (inventory)", naming the dependency the
        ErrorInfo names, since a 503 for inventory and one for payments are different outages."""
        said = f"{self.status} {self.reason}" if self.reason else str(self.status)
        dependency = self.metadata.get("dependency")
        return f"{said} ({dependency})" if dependency else said


def seconds(duration: str) -> float | None:
    """A google.protobuf.Duration in JSON ("1.500s"); None when it is not one."""
    try:
        return float(duration.removesuffix("s")) if duration.endswith("s") else None
    except ValueError:
        return None


def refusal(status: int, body: Any) -> Refusal:
    """The refusal an error answer's parsed JSON body states; only its HTTP status for a body that is no Status (a
    proxy's HTML page, a cut-off answer)."""
    if not isinstance(body, dict):
        return Refusal(status)
    code = body.get("code")
    reason, metadata, delay = "", {}, None
    details = body.get("details")
    for detail in details if isinstance(details, list) else []:
        if not isinstance(detail, dict):
            continue
        if detail.get("@type") == ERROR_INFO:
            reason = str(detail.get("reason", ""))
            found = detail.get("metadata")
            metadata = {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}
        elif detail.get("@type") == RETRY_INFO:
            delay = seconds(str(detail.get("retryDelay", "")))
    return Refusal(status, code if isinstance(code, int) else 0, reason, metadata, delay)
