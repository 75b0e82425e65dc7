"""Per-key rate limits on the student-facing check endpoints (the ``limits`` library).

Counters live in ``TENSORGRADE_RATE_LIMIT_STORAGE``: ``memory://`` (the default) keeps them
in the process, so with several workers or replicas each counts on its own and a key gets the
limit once per process; ``redis://host:6379/0`` (``pip install 'tensorgrade[redis]'``) shares
them between every process that points at the same Redis.
"""

from __future__ import annotations

import math
import time
from typing import Any

from fastapi import Depends, Request
from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.strategies import MovingWindowRateLimiter

from service.auth import CallerDep
from service.limitstore import open_storage
from service.problems import Problem, problem_responses
from service.settings import Settings

NAMESPACE = "tensorgrade-check"


class CheckLimiter:
    """The limits of one app, over a moving window (no burst at a window's edge)."""

    def __init__(self, limits: str, storage_uri: str) -> None:
        self.items: list[RateLimitItem] = parse_many(limits) if limits else []
        self._limiter = MovingWindowRateLimiter(open_storage(storage_uri))
        # A store over the network (Redis) is called off the event loop; memory in place.
        self.remote = not storage_uri.startswith("memory://")

    @classmethod
    def from_settings(cls, settings: Settings) -> CheckLimiter:
        return cls(settings.check_rate_limit, settings.rate_limit_storage.get_secret_value())

    def hit(self, identity: str) -> int | None:
        """Count one check by ``identity``: ``None`` when allowed, else the seconds to wait.

        A check refused by one limit is not counted by that limit, nor by those after it.
        """
        for item in self.items:
            if not self._limiter.hit(item, NAMESPACE, identity):
                reset = self._limiter.get_window_stats(item, NAMESPACE, identity).reset_time
                return max(1, math.ceil(reset - time.time()))
        return None

    def describe(self) -> str:
        return "; ".join(str(item) for item in self.items) or "none"


CHARGED = "tensorgrade_rate_limit_charged"
"""Set in the request's state by the edge once it has counted the check (``charge``), so that
the route's dependency does not count it twice."""


def charge(limiter: CheckLimiter, identity: str) -> Problem | None:
    """Count one check by ``identity``: ``None`` when allowed, else the 429 to answer (or the
    503 of a store that cannot be reached)."""
    try:
        wait = limiter.hit(identity)
    except StorageError as error:
        return Problem(
            503,
            f"the rate-limit store cannot be reached ({type(error.storage_error).__name__}); "
            "retry shortly",
            headers={"Retry-After": "5"},
        )
    if wait is None:
        return None
    return Problem(
        429,
        f"too many checks with this key (the limits are {limiter.describe()}); retry in {wait} s",
        kind="rate-limited",
        title="Too many requests",
        headers={"Retry-After": str(wait)},
    )


def rate_limited(route: Any) -> bool:
    """Whether a route counts its requests against the check rate limit (its dependencies
    hold ``check_rate_limit``): the edge counts them before it reads the body."""
    dependant = getattr(route, "dependant", None)
    return any(d.call is check_rate_limit for d in getattr(dependant, "dependencies", ()))


def check_rate_limit(request: Request, who: CallerDep) -> None:
    """429 with ``Retry-After`` once the caller is over a limit. Instructor keys are not
    limited; student keys are limited per key, callers of an open service per address.

    The edge counts the request first where it can (``middleware.EdgeMiddleware``): then an
    answer that is refused (over the limit, a body that is no JSON) is counted and refused
    before its body is read or parsed, and this dependency only checks the caller again."""
    if who.role == "instructor" and who.keyed:
        return
    if getattr(request.state, CHARGED, False):
        return
    problem = charge(request.app.state.check_limiter, who.identity)
    if problem is not None:
        raise problem


RATE_LIMITED: dict[str, Any] = {
    "dependencies": [Depends(check_rate_limit)],
    "responses": problem_responses(429, 503),
}
"""Route rule of the check endpoints: ``@router.post(path, **RATE_LIMITED)``."""
