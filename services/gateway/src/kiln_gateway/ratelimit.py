"""Per-client launch limit: a fixed window per client key, in process memory (as BinderHub's).

A launch is charged once, at whichever door it comes through: the /v2 loading page charges the
client that loads it (the page is what hands out a build token), and the build token's first
launch is then free, because the page paid for it. A launch on /build without a token, and every
further launch with a token already spent, is charged on /build. So fetching tokens does not
launch faster than the limit, while a browser (one page load, then one stream) is charged once.
Resumes launch nothing and are not charged. Each gateway process keeps its own windows and its
own spent tokens, so behind N gateways a client gets up to N times the limit (as with BinderHub).
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class Verdict:
    allowed: bool
    remaining: int
    reset_at: int  # epoch seconds
    limit: int

    def headers(self) -> dict[str, str]:
        """BinderHub's rate-limit headers for this verdict."""
        return {"x-ratelimit-limit": str(self.limit), "x-ratelimit-remaining": str(self.remaining),
                "x-ratelimit-reset": str(self.reset_at)}

    def retry_after(self, now: float | None = None) -> int:
        """Whole seconds until the window resets (at least 1)."""
        return max(1, self.reset_at - int(time.time() if now is None else now))


class RateLimiter:
    def __init__(self, limit: int, period_s: int) -> None:
        self.limit = limit
        self.period_s = period_s
        self._windows: dict[str, tuple[int, int]] = {}  # client key -> (window end, count)
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


class SpentTokens:
    """Build-token ids whose one prepaid launch has been used, each kept until its token expires.

    Memory is bounded by the tokens spent within one token lifetime (minutes), each of which
    published a launch; past ``max_entries`` a token counts as spent, so a flood makes launches
    charged, never refused outright.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._max = max_entries
        self._spent: dict[str, float] = {}  # token id -> when its token expires (epoch seconds)
        self._next_clean = 0.0

    def spend(self, token_id: str, expires_at: float, now: float | None = None) -> bool:
        """True the first time ``token_id`` is spent (its launch is prepaid); False every time after."""
        now = time.time() if now is None else now
        if now >= self._next_clean:  # on a schedule, not per call: a full ledger must stay cheap
            self._spent = {k: exp for k, exp in self._spent.items() if exp >= now}
            self._next_clean = now + 60
        if token_id in self._spent or len(self._spent) >= self._max:
            return False
        self._spent[token_id] = expires_at
        return True

    def __len__(self) -> int:
        return len(self._spent)
