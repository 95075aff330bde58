"""An owner for background tasks: whoever starts one keeps it here, and stopping cancels and awaits it.

``asyncio.create_task`` alone leaves a task nobody stops: it may outlive the service's shutdown
(still writing to a producer that is closed), its exception is only logged when it is garbage
collected, and the event loop keeps only a weak reference to it. ``Tasks`` holds a strong
reference to each task until it ends, logs a failure when it happens, and ``aclose`` cancels what is
left and waits for it to finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class Tasks:
    """Background tasks of one owner (a service's component); ``aclose`` ends them all."""

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Run ``coro`` in the background as a task of this owner."""
        if self._closed:
            coro.close()  # never awaited otherwise, which Python would warn about
            raise RuntimeError(f"{self._owner} is stopping; {name!r} was not started")
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Said now, not when the task is collected (and not at all if something still holds it).
            log.error("%s: background task %s failed", self._owner, task.get_name(), exc_info=exc)

    async def aclose(self) -> None:
        """Cancel every task still running and wait until each has finished; start no more."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["Tasks"]
