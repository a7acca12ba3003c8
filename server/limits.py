"""Per-user rate limits (token buckets), for HTTP commands and socket commands alike.

Limits are per server instance: behind a load balancer of N instances a user gets at most N
times the rate. That bounds abuse without a shared counter on the hot path.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from server.errors import RateLimited


class RateLimiter:
    def __init__(self, rate_per_second: float, burst: int, *, max_keys: int = 100_000) -> None:
        self.rate = rate_per_second
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def check(self, key: str, *, now: float | None = None) -> None:
        """Take one token for `key`, or raise RateLimited saying when to retry."""
        if self.rate <= 0:
            return
        t = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (float(self.burst), t))
        tokens = min(float(self.burst), tokens + (t - last) * self.rate)
        if tokens < 1.0:
            retry = (1.0 - tokens) / self.rate
            self._buckets[key] = (tokens, t)
            raise RateLimited(
                f"too many requests: at most {self.rate:g}/s (bursts of {self.burst}); "
                f"retry in {retry:.2f} s",
                retry_after=round(retry, 2),
            )
        self._buckets[key] = (tokens - 1.0, t)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
