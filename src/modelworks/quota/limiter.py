"""The limiter interface: all-or-nothing admission over several sliding windows, and later corrections.

Windows are made of 1-second buckets: a check admits `amount` when the trailing `window` buckets (this second's
included) hold at most `limit - amount`. So any run of `window` consecutive seconds never holds more than
`limit`, whichever replica admitted what, as long as they share the limiter.
"""

from __future__ import annotations

import time
from typing import NamedTuple, Protocol


class Check(NamedTuple):  # a tuple: made for every request, and a frozen dataclass is slow to make
    key: str      # what is limited, e.g. "dep:gpt-4o:tok"
    window: int   # seconds
    limit: int
    amount: int


class Decision(NamedTuple):
    admitted: bool
    second: int                      # the bucket charged (for corrections)
    remaining: tuple[int, ...]       # per check, after this request (when admitted)
    refused: int | None = None       # index of the first check that refused
    retry_after_s: float = 0.0


class Limiter(Protocol):
    async def acquire(self, checks: list[Check]) -> Decision:
        """Charge every check, or none of them."""

    async def adjust(self, key: str, window: int, second: int, delta: int) -> None:
        """Correct a charge made in `second` (the actual tokens were known only at the end)."""

    async def close(self) -> None:
        ...


def now_second() -> int:
    return int(time.time())


class InProcessLimiter:
    """For one process. Replicas each keep their own: use RedisLimiter for limits that hold across them."""

    def __init__(self) -> None:
        self.buckets: dict[str, dict[int, int]] = {}

    async def acquire(self, checks: list[Check]) -> Decision:
        second = now_second()
        totals = []
        for i, check in enumerate(checks):
            buckets = self.buckets.setdefault(check.key, {})
            oldest = second - check.window
            for b in [b for b in buckets if b <= oldest]:
                del buckets[b]
            total = sum(buckets.values())
            if total + check.amount > check.limit:
                return Decision(False, second, (), i, _retry_after(buckets, total, check, second))
            totals.append(total)
        for check in checks:
            buckets = self.buckets[check.key]
            buckets[second] = buckets.get(second, 0) + check.amount
        return Decision(True, second, tuple(c.limit - t - c.amount for c, t in zip(checks, totals)))

    async def adjust(self, key: str, window: int, second: int, delta: int) -> None:
        if second <= now_second() - window:
            return  # that bucket has left every window already
        buckets = self.buckets.setdefault(key, {})
        buckets[second] = buckets.get(second, 0) + delta

    async def close(self) -> None:
        return None


def _retry_after(buckets: dict[int, int], total: int, check: Check, second: int) -> float:
    """Seconds until enough of the window's buckets expire for `check.amount` to fit."""
    if check.amount > check.limit:
        return float(check.window)
    freed = 0
    for b in sorted(buckets):
        freed += buckets[b]
        if total - freed + check.amount <= check.limit:
            return float(b + check.window - second + 1)
    return float(check.window)


def build_limiter(settings) -> Limiter:
    """From `quota` settings: `memory` (this process) or `redis` (shared by every replica)."""
    if settings.limiter == "redis":
        from modelworks.quota.redis_limiter import RedisLimiter

        return RedisLimiter(settings.redis_url, wait_replicas=settings.redis_wait_replicas,
                            wait_timeout_ms=settings.redis_wait_timeout_ms)
    return InProcessLimiter()
