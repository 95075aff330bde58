"""One build per image: requests for an image already building attach to it; the rest queue.

Every request of a build gets every event of it: one that attaches late is first sent the log so
far, then what the build said meanwhile (held for it while the old lines go out, so the build does
not wait for the replay), then the live events. Builds beyond ``concurrent_builds`` wait, and their
requests are told their place in the queue whenever it changes.

A request whose events cannot be sent (a lost send) is dropped from its build and its own handler
fails; the build and its other requests carry on.

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


class RequestDropped(Exception):
    """A request's events could not be sent, so it was dropped from its build (which goes on)."""


@dataclass(eq=False)
class Subscriber:
    """A request following a build: the build's outcome for it, and the events held back for it."""

    request: BuildRequested
    job: Job
    # The build's outcome for this request; RequestDropped when its events could not be sent.
    outcome: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    # While a late request is sent the log so far, the build's new events wait here (None: live).
    backlog: deque[tuple[Phase, dict[str, Any]]] | None = None
    backlog_bytes: int = 0
    dropped: bool = False

    def drop(self, exc: BaseException) -> None:
        """Take this request off its build, failing its handler with ``exc``."""
        self.dropped = True
        if self.job.subscribers.get(self.request.request_id) is self:
            del self.job.subscribers[self.request.request_id]
        if not self.outcome.done():
            error = RequestDropped(f"events for request {self.request.request_id} could not be sent: {exc!r}")
            error.__cause__ = exc
            self.outcome.set_exception(error)


@dataclass
class Job:
    """A build of one image and the requests waiting for it."""

    image: str
    first: BuildRequested
    subscribers: dict[str, Subscriber] = field(default_factory=dict)
    history: deque[tuple[Phase, dict[str, Any]]] = field(default_factory=deque)
    history_bytes: int = 0
    history_dropped: int = 0  # events dropped from the front of history to stay within its bound
    lines: list[str] = field(default_factory=list)
    env_image_to_push: str | None = None
    task: asyncio.Task[None] | None = None  # the build, once submitted (owned by Builds)
    # Held while an event goes out to the live requests, so two events cannot overtake each other. Not
    # held while a late request is sent the log so far: that request's new events wait in its backlog.
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
            # No await from here until the sends: a request joining now either finds this event in the
            # history it is sent or gets it in its backlog, never both nor neither.
            if phase in REPLAYED_PHASES:
                self._keep(job, phase, fields)
            live = []
            for sub in list(job.subscribers.values()):
                if sub.backlog is None:
                    live.append(sub)
                    continue
                sub.backlog.append((phase, fields))
                sub.backlog_bytes += len(fields.get("message") or "") + _EVENT_OVERHEAD
                if sub.backlog_bytes > self._history_bytes:  # its replay stalled: it must not hold the log twice over
                    log.warning("request %s dropped from the build of %s: its replay fell behind",
                                sub.request.request_id, job.image)
                    sub.drop(RuntimeError("the request fell behind its build's log"))
            results = await asyncio.gather(*(self._emit_one(sub.request, phase, fields) for sub in live),
                                           return_exceptions=True)
        for sub, result in zip(live, results, strict=True):
            if isinstance(result, Exception):
                # One request's lost send is its own failure, not its build's nor the other requests'.
                log.warning("request %s dropped from the build of %s: %r", sub.request.request_id, job.image, result)
                sub.drop(result)
            elif isinstance(result, BaseException):
                raise result

    def _keep(self, job: Job, phase: Phase, fields: dict[str, Any]) -> None:
        """Add an event to ``job``'s history, dropping the oldest ones past the byte bound."""
        job.history.append((phase, fields))
        job.history_bytes += len(fields.get("message") or "") + _EVENT_OVERHEAD
        while job.history_bytes > self._history_bytes and len(job.history) > 1:
            _, old = job.history.popleft()
            job.history_bytes -= len(old.get("message") or "") + _EVENT_OVERHEAD
            job.history_dropped += 1

    async def submit(self, request: BuildRequested) -> Subscriber:
        """``request`` following the build of its image: an existing one (attached to) or a new one.

        A request attaching late is sent the log so far before this returns; if that fails, its
        ``outcome`` holds the RequestDropped."""
        job = self._jobs.get(request.image_name)
        if job is not None:
            # Registered with a snapshot of the history, without awaiting between the two (see emit);
            # the build's lock is not taken, so its new lines go on to the others during the replay.
            sub = Subscriber(request, job, backlog=deque())
            job.subscribers[request.request_id] = sub
            history, dropped = list(job.history), job.history_dropped
            try:
                await self._replay(sub, history, dropped)
            except asyncio.CancelledError:
                await self.abandon(job, request.request_id)
                raise
            except Exception as exc:  # noqa: BLE001 - a lost send: this request's failure alone
                log.warning("request %s could not be sent the log of %s: %r", request.request_id, job.image, exc)
                sub.drop(exc)
            return sub
        job = Job(request.image_name, request)
        sub = Subscriber(request, job)
        job.subscribers[request.request_id] = sub
        self._jobs[job.image] = job
        self._queue.append(job)
        await self._tell_positions()
        job.task = self._tasks.start(self._execute(job), name=f"build {job.image}")
        return sub

    async def _replay(self, sub: Subscriber, history: list[tuple[Phase, dict[str, Any]]], dropped: int) -> None:
        """Send a late request the log so far, then what the build said meanwhile; then it is live."""
        request = sub.request
        await self._emit_one(request, Phase.WAITING, {"message": "Another launch is already building this "
                                                                 "image; following its build.\n"})
        if dropped:
            await self._emit_one(request, Phase.BUILDING, {"message": f"[Kiln: the first {dropped} "
                                                                      "lines of this build's log are not kept]\n"})
        for phase, fields in history:
            if sub.dropped:
                return
            await self._emit_one(request, phase, fields)
        assert sub.backlog is not None
        while sub.backlog and not sub.dropped:
            phase, fields = sub.backlog.popleft()
            sub.backlog_bytes -= len(fields.get("message") or "") + _EVENT_OVERHEAD
            await self._emit_one(request, phase, fields)
        sub.backlog = None  # the backlog is empty and nothing was awaited since: the next event goes out live

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
        outcome: BaseException | None = None
        try:
            async with self._slots:
                # Only now is this record's build running: a crash from here on counts against it; the
                # requests that merely waited in the queue beside it do not (kilnbus.begin_attempt).
                await begin_attempt()
                self._queue.remove(job)
                await self._tell_positions()
                await self._run(job, self)
        except asyncio.CancelledError as exc:
            outcome = exc  # whoever still waits for it is told, rather than left waiting
            raise
        except Exception as exc:
            if not isinstance(exc, BuildFailed):  # an outcome: each waiting handler reports it to its request
                log.exception("build of %s failed unexpectedly", job.image)
            outcome = exc
        finally:
            self._jobs.pop(job.image, None)
            if job in self._queue:
                self._queue.remove(job)
            for sub in list(job.subscribers.values()):
                if sub.outcome.done():
                    continue
                if outcome is None:
                    sub.outcome.set_result(None)
                elif isinstance(outcome, asyncio.CancelledError):
                    sub.outcome.cancel()
                else:
                    sub.outcome.set_exception(outcome)
