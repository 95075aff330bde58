"""Phase events, written one way for every service: ``PhaseReporter``.

Every event about a request carries its id (the key of ``phase-events``, so one request's events
stay in order), the reporting service, and the provider and spec the request names (analytics
groups by them). Handlers that return their records use ``event``; code outside a handler
(a watcher) awaits ``report``; a stream of log lines uses ``send``, which does not wait for each.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, runtime_checkable

from kilnbus.dispatch import Outgoing, Publisher, cut_message
from kilnbus.records import Phase, PhaseEvent, Record
from kilnbus.topics import Topic, Topics


class RequestLike(Protocol):
    """Any request record: LaunchRequested, BuildRequested, HubLaunchRequested."""

    @property
    def request_id(self) -> str: ...


@runtime_checkable
class Sender(Protocol):
    """A publisher that can also queue a record without waiting for it (a BusProducer)."""

    async def send(self, topic: Topic, key: str | None, record: Record) -> asyncio.Future[Any]: ...


class PhaseReporter:
    """Makes and publishes ``service``'s phase events on ``topics.phase_events`` through ``bus``."""

    def __init__(self, bus: Publisher, topics: Topics, service: str) -> None:
        self._bus = bus
        self._topic = topics.phase_events
        self.service = service

    def event(self, request: RequestLike | str, phase: Phase, **fields: Any) -> Outgoing:
        """The event, ready for a handler to return; ``request`` may be a bare request id."""
        if isinstance(request, str):
            request_id, named = request, {}
        else:
            request_id = request.request_id
            # What the request names travels with each event, unless the caller says otherwise.
            named = {name: value for name in ("provider", "spec") if (value := getattr(request, name, None)) is not None}
        if phase is Phase.FAILED and isinstance(fields.get("message"), str):
            # What a failure says may quote a log or an answer at length; the broker takes only so much.
            fields = {**fields, "message": cut_message(fields["message"])}
        record = PhaseEvent(request_id=request_id, phase=phase, service=self.service, **{**named, **fields})
        return Outgoing(self._topic, request_id, record)

    async def report(self, request: RequestLike | str, phase: Phase, **fields: Any) -> PhaseEvent:
        """Publish the event and wait for the broker's acknowledgement; return it."""
        out = self.event(request, phase, **fields)
        await self._bus.publish(out.topic, out.key, out.record)
        assert isinstance(out.record, PhaseEvent)
        return out.record

    async def send(self, request: RequestLike | str, phase: Phase, **fields: Any) -> asyncio.Future[Any]:
        """Queue the event without waiting for the acknowledgement; the future holds its outcome.

        For log lines, where a round trip each would slow the log down: the idempotent producer keeps
        them in order, and whoever sends them awaits the futures before the request's next phase change.
        A publisher that cannot queue (a MemoryBus) publishes at once, and the future is already done.
        """
        out = self.event(request, phase, **fields)
        if isinstance(self._bus, Sender):
            return await self._bus.send(out.topic, out.key, out.record)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            done.set_result(await self._bus.publish(out.topic, out.key, out.record))
        except Exception as exc:  # noqa: BLE001 - handed to whoever awaits the future, as a lost send would be
            done.set_exception(exc)
        return done
