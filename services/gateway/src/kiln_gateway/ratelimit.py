"""Per-client-IP launch limit: a fixed window per address, in process memory (as BinderHub's)."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class Verdict:
    allowed: bool
    remaining: int
    reset_at: int  # epoch seconds
    limit: int


class RateLimiter:
    def __init__(self, limit: int, period_s: int) -> None:
        self.limit = limit
        self.period_s = period_s
        self._windows: dict[str, tuple[int, int]] = {}  # ip -> (window end, count)
        self._next_clean = 0.0

    def hit(self, key: str, now: float | None = None) -> Verdict:
        now = time.time() if now is None else now
        if now >= self._next_clean:
            self._windows = {k: v for k, v in self._windows.items() if v[0] > now}
            self._next_clean = now + min(self.period_s, 600)
        end, count = self._windows.get(key, (0, 0))
        if end <= now:
            end, count = int(now) + self.period_s, 0
        count += 1
        self._windows[key] = (end, count)
        return Verdict(count <= self.limit, max(0, self.limit - count), end, self.limit)
