"""Users' own metrics, beside the chassis' gRPC ones on the same endpoint: whether Register's password-strength
estimate works.

The estimate runs in a process of its own (`password_strength`), warmed at startup; a warm-up that fails is one
warning in the log, and the service reports SERVING whatever it does. An estimating process that cannot start, or
dies under every estimate, fails every Register while logins, JWKS and health look fine: the failures by cause
are what shows it.
"""

from __future__ import annotations

from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter

# broken: the process died under the estimate, and its replacement under the retry (or neither could start);
# error: the estimate raised in the process (zxcvbn, its import); timeout: the startup warm-up outlasted
# WARM_UP_SECONDS; stopped: asked while the service stops (answered UNAVAILABLE PASSWORD_STRENGTH_STOPPED).
EstimateFailure = Literal["broken", "error", "timeout", "stopped"]
ESTIMATE_FAILURES: tuple[EstimateFailure, ...] = get_args(EstimateFailure)


class UsersMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._estimates_failed = Counter(
            "shopmesh_users_password_strength_failures",
            "Password-strength estimates (Register's guessability check, in a process of its own) that failed, by "
            "cause: broken (the estimating process died under it, and its replacement under the retry, or neither "
            "could start); error (the estimate raised in the process); timeout (the warm-up at startup outlasted "
            "WARM_UP_SECONDS: the first Register waits for it); stopped (asked while the service stops, answered "
            "UNAVAILABLE PASSWORD_STRENGTH_STOPPED). Each broken or error estimate failed a Register, or the warm-up.",
            ("cause",),
            registry=registry,
        )
        # Each cause's series from the start, at 0: created by its first failure, a series starts at 1 and increase()
        # over it reads 0, so a pod whose estimates fail from its start would never raise the alert.
        for cause in ESTIMATE_FAILURES:
            self._estimates_failed.labels(cause)

    def estimate_failed(self, cause: EstimateFailure) -> None:
        self._estimates_failed.labels(cause).inc()
