"""Which images people launch most: recent launches per image, folded from the phase log.

The same ``ready`` events analytics counts launches from (``kilnbus.servers.server_started``: a
``ready`` with a URL is a launch), folded here by the launcher, which reads the phase log already:
services talk only through Kafka, so the warm pool does not ask analytics over HTTP. Every
launcher replica reads the whole log, so every replica sees the same demand.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable

from kilnbus import PhaseEvent
from kilnbus.servers import server_started


class RecentLaunches:
    """Launches per image within the last ``window_s`` seconds (by the events' own timestamps)."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.time) -> None:
        self._window_s = window_s
        self._clock = clock
        self._launches: deque[tuple[float, str]] = deque()  # (timestamp, image), in log order
        self._per_image: Counter[str] = Counter()
        self._seen: set[str] = set()  # request ids counted and still in the window: a repeated ready counts once
        self._ids: deque[tuple[float, str]] = deque()
        self._repo_urls: dict[str, str] = {}  # image -> the repository it was last launched from

    def apply(self, event: PhaseEvent) -> None:
        """Fold one phase event in (only launches count)."""
        server = server_started(event)
        if server is None or not server.image_name or event.request_id in self._seen:
            return
        at = server.since.timestamp()
        self._seen.add(event.request_id)
        self._ids.append((at, event.request_id))
        self._launches.append((at, server.image_name))
        self._per_image[server.image_name] += 1
        if server.repo_url:
            self._repo_urls[server.image_name] = server.repo_url
        self._expire()

    def _expire(self) -> None:
        horizon = self._clock() - self._window_s
        # The log is in time order per partition, nearly so across them: an entry a little out of
        # order only leaves a little late.
        while self._launches and self._launches[0][0] < horizon:
            _, image = self._launches.popleft()
            self._per_image[image] -= 1
            if self._per_image[image] <= 0:
                del self._per_image[image]
                self._repo_urls.pop(image, None)
        while self._ids and self._ids[0][0] < horizon:
            self._seen.discard(self._ids.popleft()[1])

    def top(self, count: int, at_least: int) -> list[tuple[str, int]]:
        """The ``count`` most launched images with at least ``at_least`` launches, most launched first."""
        self._expire()
        return [(image, n) for image, n in self._per_image.most_common(count) if n >= at_least]

    def launches(self, image: str) -> int:
        """Launches of ``image`` in the window."""
        self._expire()
        return self._per_image.get(image, 0)

    def repo_url(self, image: str) -> str | None:
        """The repository ``image`` was last launched from within the window, if it was."""
        return self._repo_urls.get(image)
