"""One build per image: requests for an image already building attach to it; the rest queue.

Every request of a build gets every event of it: one that attaches late is first sent the log so
far. Builds beyond ``concurrent_builds`` wait, and their requests are told their place in the queue
whenever it changes.

A build's output is the repository's to choose, so what the builder keeps of it is bounded: each
log line is cut at ``max_line_chars`` (with a marker saying so), and the log kept for requests that
attach later holds at most ``history_bytes``, dropping its oldest lines first (a late request is
told how many it missed).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from kiln_builder.errors import BuildFailed
from kilnbus import BuildRequested, Phase, begin_attempt
from kilnbus.tasks import Tasks

log = logging.getLogger(__name__)
Emit = Callable[[BuildRequested, Phase, dict[str, Any]], Awaitable[None]]

REPLAYED_PHASES = (Phase.FETCHING, Phase.BUILDING, Phase.WAITING)
LOG_PHASES = (Phase.FETCHING, Phase.BUILDING)
DEFAULT_HISTORY_BYTES = 4 << 20
DEFAULT_LINE_CHARS = 4096
DIAGNOSE_LINES = 500  # what diagnose() may look at
_EVENT_OVERHEAD = 200  # bytes a kept event costs beyond its message (the dict, the tuple)


def limit_lines(message: str, max_chars: int) -> str:
    """``message`` with every line longer than ``max_chars`` cut there, and a marker saying how long it was."""
    if not max_chars or len(message) <= max_chars:
        return message
    out = []
    for line in message.splitlines(keepends=True):
        body = line.rstrip("\n")
        if len(body) > max_chars:
            line = f"{body[:max_chars]} [Kiln: line truncated, {len(body)} characters]\n"
        out.append(line)
    return "".join(out)


@dataclass
class Job:
    """A build of one image and the requests waiting for it."""

    image: str
    first: BuildRequested
    subscribers: dict[str, BuildRequested] = field(default_factory=dict)
    history: deque[tuple[Phase, dict[str, Any]]] = field(default_factory=deque)
    history_bytes: int = 0
    history_dropped: int = 0  # events dropped from the front of history to stay within its bound
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    lines: list[str] = field(default_factory=list)
    env_image_to_push: str | None = None
    task: asyncio.Task[None] | None = None  # the build, once submitted (owned by Builds)
    # Held while an event goes out and while a late request joins and is sent the log so far, so the
    # joiner gets the old lines first and nothing the build says meanwhile comes before them.
    sending: asyncio.Lock = field(default_factory=asyncio.Lock)


class Builds:
    """The builds of one builder: one per image, at most ``limit`` at once, the rest queued."""

    def __init__(self, limit: int, run: Callable[[Job, Builds], Awaitable[None]], emit: Emit,
                 history_bytes: int = DEFAULT_HISTORY_BYTES, max_line_chars: int = DEFAULT_LINE_CHARS) -> None:
        self._history_bytes = history_bytes
        self._max_line_chars = max_line_chars
        self._slots = asyncio.Semaphore(limit)
        self._run = run
        self._emit_one = emit
        self._jobs: dict[str, Job] = {}
        self._queue: list[Job] = []
        self._tasks = Tasks("builds")

    @property
    def active(self) -> int:
        return len(self._jobs) - len(self._queue)

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def emit(self, job: Job, phase: Phase, **fields: Any) -> None:
        """Send an event to every request of ``job``, and keep it for requests that attach later."""
        if phase in LOG_PHASES and "message" in fields:
            fields = {**fields, "message": limit_lines(fields["message"], self._max_line_chars)}
            job.lines.append(fields["message"])
            del job.lines[:-DIAGNOSE_LINES]
        async with job.sending:
            if phase in REPLAYED_PHASES:
                self._keep(job, phase, fields)
            await asyncio.gather(*(self._emit_one(req, phase, fields) for req in list(job.subscribers.values())))

    def _keep(self, job: Job, phase: Phase, fields: dict[str, Any]) -> None:
        """Add an event to ``job``'s history, dropping the oldest ones past the byte bound."""
        job.history.append((phase, fields))
        job.history_bytes += len(fields.get("message") or "") + _EVENT_OVERHEAD
        while job.history_bytes > self._history_bytes and len(job.history) > 1:
            _, old = job.history.popleft()
            job.history_bytes -= len(old.get("message") or "") + _EVENT_OVERHEAD
            job.history_dropped += 1

    async def submit(self, request: BuildRequested) -> Job:
        """The job building ``request.image_name``: an existing one (attached to) or a new one."""
        job = self._jobs.get(request.image_name)
        if job is not None:
            async with job.sending:
                job.subscribers[request.request_id] = request
                await self._emit_one(request, Phase.WAITING, {"message": "Another launch is already building this "
                                                                         "image; following its build.\n"})
                if job.history_dropped:
                    await self._emit_one(request, Phase.BUILDING, {"message": f"[Kiln: the first {job.history_dropped} "
                                                                              "lines of this build's log are not kept]\n"})
                for phase, fields in list(job.history):
                    await self._emit_one(request, phase, fields)
            return job
        job = Job(request.image_name, request, {request.request_id: request})
        self._jobs[job.image] = job
        self._queue.append(job)
        await self._tell_positions()
        job.task = self._tasks.start(self._execute(job), name=f"build {job.image}")
        return job

    async def abandon(self, job: Job, request_id: str) -> None:
        """``request_id`` no longer waits for ``job`` (its handler was cancelled: the consumer is stopping
        or lost the partition, and the record will be delivered again). A build that no request waits for
        any more is cancelled, and awaited, now: while the producer it reports through is still open."""
        job.subscribers.pop(request_id, None)
        if not job.subscribers and job.task is not None:
            job.task.cancel()
            await asyncio.gather(job.task, return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel every build still running or queued, and wait for each to end."""
        await self._tasks.aclose()

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
                # Only now is this record's build running: a crash from here on counts against it; the
                # requests that merely waited in the queue beside it do not (kilnbus.begin_attempt).
                await begin_attempt()
                self._queue.remove(job)
                await self._tell_positions()
                await self._run(job, self)
            job.done.set_result(None)
        except asyncio.CancelledError:
            job.done.cancel()  # whoever still waits for it is told, rather than left waiting
            raise
        except Exception as exc:
            if not isinstance(exc, BuildFailed):  # an outcome: each waiting handler reports it to its request
                log.exception("build of %s failed unexpectedly", job.image)
            job.done.set_exception(exc)
        finally:
            self._jobs.pop(job.image, None)
            if job in self._queue:
                self._queue.remove(job)
