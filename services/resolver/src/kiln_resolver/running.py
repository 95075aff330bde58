"""Which servers are running, per repository: a projection of the phase-event log.

Rebuilt from the beginning of the log at start-up and kept current from then on, so quotas need no
shared database: a ``ready`` event with a URL counts a server, its ``stopped`` event uncounts it.
Repositories are keyed by image name without tag, so all refs of a repository count together.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from kilnbus import BusSettings, Phase, PhaseEvent, Topic
from kilnbus.follow import LogFollower

log = logging.getLogger(__name__)


def repo_key(image_name: str) -> str:
    return image_name.rsplit(":", 1)[0] if ":" in image_name.rsplit("/", 1)[-1] else image_name


class RunningServers:
    def __init__(self, settings: BusSettings, topic: Topic) -> None:
        self._settings = settings
        self._topic = topic
        self._servers: dict[str, str] = {}  # request id -> repo key
        self._counts: Counter[str] = Counter()
        self.caught_up = asyncio.Event()
        self._follower: LogFollower | None = None

    def apply(self, event: PhaseEvent) -> None:
        """Count a started server, uncount a stopped one."""
        if event.phase is Phase.READY and event.url and event.image_name and event.request_id not in self._servers:
            key = repo_key(event.image_name)
            self._servers[event.request_id] = key
            self._counts[key] += 1
        elif event.phase is Phase.STOPPED and event.request_id in self._servers:
            key = self._servers.pop(event.request_id)
            self._counts[key] -= 1
            if self._counts[key] <= 0:
                del self._counts[key]

    def count(self, image_name: str) -> int:
        return self._counts.get(repo_key(image_name), 0)

    @property
    def total(self) -> int:
        return len(self._servers)

    async def start(self) -> None:
        self._follower = LogFollower(self._settings, self._topic, self.apply)  # type: ignore[arg-type]
        await self._follower.start()
        self.caught_up = self._follower.caught_up

    async def stop(self) -> None:
        if self._follower is not None:
            await self._follower.stop()
