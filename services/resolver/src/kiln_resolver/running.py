"""The resolver's projection of running servers, for per-repository quotas.

What counts as a running server is ``kilnbus.servers``' fold; this module only feeds it the phase
log from its first record at start-up and live from then on (``kilnbus.LogFollower`` on the
service's bus, Kafka or memory), so quotas need no shared database. The resolver must not answer
launch requests before ``wait_caught_up``: a count made from half the log under-counts, and a
restarted resolver would let a repository past its quota.
"""

from __future__ import annotations

import asyncio
import logging

from kilnbus import Bus, PhaseEvent
from kilnbus.follow import LogFollower
from kilnbus.servers import RunningServers as ServersFold
from kilnbus.servers import repo_key

log = logging.getLogger(__name__)

__all__ = ["RunningServers", "repo_key"]


class RunningServers:
    """Servers running now per repository, kept current by following ``bus``'s phase-event topic."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self.fold = ServersFold()
        self._follower: LogFollower | None = None

    def apply(self, event: PhaseEvent) -> None:
        """Fold one phase event in (the follower calls this for every record, oldest first)."""
        self.fold.apply(event)

    def count(self, image_name: str) -> int:
        """Servers running any commit of ``image_name``'s repository."""
        return self.fold.count_for_repo(image_name)

    @property
    def total(self) -> int:
        return self.fold.total

    async def start(self) -> None:
        """Start replaying the log; see ``wait_caught_up`` before serving."""
        self._follower = LogFollower(self._bus, self._bus.topics.phase_events, self.apply)  # type: ignore[arg-type]
        await self._follower.start()

    async def wait_caught_up(self, stop: asyncio.Event) -> bool:
        """Wait until every record the log held at ``start`` is folded in; False if ``stop`` came first."""
        assert self._follower is not None, "start() first"
        if not await self._follower.wait_caught_up(stop):
            return False
        log.info("running servers replayed from the log: %d running", self.total)
        return True

    async def stop(self) -> None:
        if self._follower is not None:
            await self._follower.stop()
