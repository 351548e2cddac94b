"""Fault injection: make ListRecommendations slow or failing on purpose (FAULT_MODE), for demos and for
testing that callers degrade gracefully — the gateway renders a product page without recommendations.

    FAULT_MODE=slow FAULT_DELAY_SECONDS=3 python -m shopmesh_recommendations   # every answer 3 s late
    FAULT_MODE=fail python -m shopmesh_recommendations                         # UNAVAILABLE, FAULT_INJECTED

The faults are real to the caller: "slow" holds the call open (a caller's deadline cancels it and the
caller sees DEADLINE_EXCEEDED), "fail" is a trailers-only UNAVAILABLE like an overloaded replica's. Health
stays SERVING, so load balancers keep sending traffic — it is the answers that are degraded.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from shopmesh.recommendations.v1 import recommendations_pb2, recommendations_pb2_grpc
from shopmesh_chassis import errors
from shopmesh_recommendations.settings import FaultMode
from shopmesh_recommendations.transport import RecommendationsServicer

log = logging.getLogger("shopmesh.recommendations.faults")

FAULT_INJECTED = "FAULT_INJECTED"


class FaultInjectingServicer(recommendations_pb2_grpc.RecommendationsServiceServicer):
    """Wraps the real servicer and misbehaves as `mode` says before (or instead of) delegating to it."""

    def __init__(self, inner: RecommendationsServicer, mode: FaultMode, delay_seconds: float) -> None:
        self._inner = inner
        self._mode = mode
        self._delay = delay_seconds

    async def ListRecommendations(
        self, request: recommendations_pb2.ListRecommendationsRequest, context: Any
    ) -> recommendations_pb2.ListRecommendationsResponse:
        if self._mode == "fail":
            raise errors.Unavailable(
                "recommendations are failing on purpose (FAULT_MODE=fail)",
                reason=FAULT_INJECTED,
                metadata={"fault_mode": "fail"},
            )
        if self._mode == "slow":
            # Cancelled with the call when the caller's deadline passes or it goes away.
            await asyncio.sleep(self._delay)
        return await self._inner.ListRecommendations(request, context)


def with_fault_injection(
    servicer: RecommendationsServicer, mode: FaultMode, delay_seconds: float
) -> recommendations_pb2_grpc.RecommendationsServiceServicer:
    """`servicer` as is when mode is "none"; otherwise wrapped, with a warning in the log."""
    if mode == "none":
        return servicer
    log.warning(
        "fault injection is on: FAULT_MODE=%s%s",
        mode,
        f", FAULT_DELAY_SECONDS={delay_seconds}" if mode == "slow" else "",
        extra={"fault_mode": mode},
    )
    return FaultInjectingServicer(servicer, mode, delay_seconds)
