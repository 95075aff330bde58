"""One build per image: requests for an image already building attach to it; the rest queue.

Every request of a build gets every event of it: one that attaches late is first sent the log so
far. Builds beyond ``concurrent_builds`` wait, and their requests are told their place in the queue
whenever it changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from kilnbus import BuildRequested, Phase

from kiln_builder.executor import BuildFailed

log = logging.getLogger(__name__)
Emit = Callable[[BuildRequested, Phase, dict[str, Any]], Awaitable[None]]

REPLAYED_PHASES = (Phase.FETCHING, Phase.BUILDING, Phase.WAITING)
HISTORY_LIMIT = 2000


@dataclass
class Job:
    """A build of one image and the requests waiting for it."""

    image: str
    first: BuildRequested
    subscribers: dict[str, BuildRequested] = field(default_factory=dict)
    history: list[tuple[Phase, dict[str, Any]]] = field(default_factory=list)
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    lines: list[str] = field(default_factory=list)
    env_image_to_push: str | None = None


class Builds:
    def __init__(self, limit: int, run: Callable[[Job, "Builds"], Awaitable[None]], emit: Emit) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._run = run
        self._emit_one = emit
        self._jobs: dict[str, Job] = {}
        self._queue: list[Job] = []

    @property
    def active(self) -> int:
        return len(self._jobs) - len(self._queue)

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def emit(self, job: Job, phase: Phase, **fields: Any) -> None:
        """Send an event to every request of ``job``, and keep it for requests that attach later."""
        if phase in REPLAYED_PHASES and len(job.history) < HISTORY_LIMIT:
            job.history.append((phase, fields))
        if phase in (Phase.FETCHING, Phase.BUILDING) and "message" in fields:
            job.lines.append(fields["message"])
            del job.lines[:-500]
        await asyncio.gather(*(self._emit_one(req, phase, fields) for req in list(job.subscribers.values())))

    async def submit(self, request: BuildRequested) -> Job:
        """The job building ``request.image_name``: an existing one (attached to) or a new one."""
        job = self._jobs.get(request.image_name)
        if job is not None:
            job.subscribers[request.request_id] = request
            await self._emit_one(request, Phase.WAITING, {"message": "Another launch is already building this image; "
                                                                     "following its build.\n"})
            for phase, fields in list(job.history):
                await self._emit_one(request, phase, fields)
            return job
        job = Job(request.image_name, request, {request.request_id: request})
        self._jobs[job.image] = job
        self._queue.append(job)
        await self._tell_positions()
        asyncio.create_task(self._execute(job), name=f"build {job.image}")
        return job

    async def _tell_positions(self) -> None:
        for position, job in enumerate(self._queue):
            if position == 0 and not self._slots.locked():
                message = "Waiting for build to start...\n"
            else:
                message = f"Waiting for a build slot: {position + (1 if self._slots.locked() else 0)} build(s) ahead of yours.\n"
            await self.emit(job, Phase.WAITING, message=message, queue_position=position)

    async def _execute(self, job: Job) -> None:
        try:
            async with self._slots:
                self._queue.remove(job)
                await self._tell_positions()
                await self._run(job, self)
            job.done.set_result(None)
        except Exception as exc:
            if not isinstance(exc, BuildFailed):  # BuildFailed was already reported to every request
                log.exception("build of %s failed unexpectedly", job.image)
            job.done.set_exception(exc)
        finally:
            self._jobs.pop(job.image, None)
            if job in self._queue:
                self._queue.remove(job)
