"""The total quota's count of running servers, without asking the hub at every launch request.

Listing every active user costs the hub more the busier it is, and at a few launch requests a
second the listings alone kept it from answering the servers it was starting (found by the load
test: spawns timed out). The count is asked at most every ``max_age_s`` by one request that
concurrent callers share, and launches this launcher started since then are added to it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class RunningCount:
    """Servers running (or starting) now, as the hub last said plus the launches started since."""

    def __init__(self, ask: Callable[[], Awaitable[int]], max_age_s: float) -> None:
        self._ask = ask
        self._max_age_s = max_age_s
        self._value = 0
        self._started_since = 0
        self._asked_at: float | None = None
        self._asking: asyncio.Future[None] | None = None

    async def count(self) -> int:
        if self._asked_at is None or time.monotonic() - self._asked_at >= self._max_age_s:
            if self._asking is None or self._asking.done():
                self._asking = asyncio.ensure_future(self._refresh())
            await asyncio.shield(self._asking)  # a caller that gives up does not cancel the others' answer
        return self._value + self._started_since

    async def _refresh(self) -> None:
        value = await self._ask()
        self._value, self._started_since, self._asked_at = value, 0, time.monotonic()

    def started(self) -> None:
        """A launch passed the quota check: count it until the hub's next answer includes it."""
        self._started_since += 1
