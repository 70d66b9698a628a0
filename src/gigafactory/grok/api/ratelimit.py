"""Per-key token buckets for rate limiting."""

from __future__ import annotations

import threading
import time


class TokenBucket:
    """A bucket of ``capacity`` tokens refilled at ``rate`` tokens/s (the classic token
    bucket of network traffic shaping: tokens = min(capacity, tokens + rate * elapsed))."""

    def __init__(self, rate: float, capacity: float, now: float | None = None):
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = time.monotonic() if now is None else now

    def take(self, n: float, now: float | None = None) -> float:
        """Take ``n`` tokens if there are enough and return 0; otherwise take nothing and
        return the seconds to wait until there would be (inf if ``n`` exceeds capacity)."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.capacity, self.tokens + self.rate * (now - self.stamp))
        self.stamp = now
        if n <= self.tokens:
            self.tokens -= n
            return 0.0
        if n > self.capacity:
            return float("inf")
        return (n - self.tokens) / self.rate


class RateLimiter:
    """One ``TokenBucket`` per key, created on first use."""

    def __init__(self, rate: float, capacity: float):
        self.rate = rate
        self.capacity = capacity
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def take(self, key: str, n: float = 1.0) -> float:
        """``TokenBucket.take`` on ``key``'s bucket."""
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(self.rate, self.capacity)
            return bucket.take(n)
