"""The gateway's own metrics, beside the chassis' gRPC ones on the same endpoint: how product pages degrade.

A degraded page still answers OK, so the server's status counts never show it. The cause says which side to
look at (recommendations answering an error: their own alerts and logs; missing their budget: their latency,
or catalog's behind them), the fallback whether shoppers still saw other products (shown) or none (empty: the
fallback's catalog listing failed too, the budget was spent before it could answer, or the product's category
holds no other product).
"""

from __future__ import annotations

from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter

Cause = Literal["recommendations_failed", "recommendations_timed_out"]
Fallback = Literal["shown", "empty"]
CAUSES: tuple[Cause, ...] = get_args(Cause)
FALLBACKS: tuple[Fallback, ...] = get_args(Fallback)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._degraded = Counter(
            "shopmesh_gateway_degraded_product_pages",
            "Product pages answered with recommendations_degraded, by cause (recommendations failed or missed "
            "their budget) and whether the same-category fallback was shown or the page had none.",
            ("cause", "fallback"),
            registry=registry,
        )
        # Every series from the start, at 0: created by its first page, a series starts at 1 and increase()
        # over it reads 0, so a pod's first degraded page would count for nothing.
        for cause in CAUSES:
            for fallback in FALLBACKS:
                self._degraded.labels(cause, fallback)

    def degraded_page(self, cause: Cause, fallback: Fallback) -> None:
        self._degraded.labels(cause, fallback).inc()
