"""Phase events, written one way for every service: ``PhaseReporter``.

Every event about a request carries its id (the key of ``phase-events``, so one request's events
stay in order), the reporting service, and the provider and spec the request names (analytics
groups by them). Handlers that return their records use ``event``; code outside a handler
(a watcher, a build's log) awaits ``report``.
"""

from __future__ import annotations

from typing import Any, Protocol

from kilnbus.dispatch import Outgoing, Publisher
from kilnbus.records import Phase, PhaseEvent
from kilnbus.topics import Topics


class RequestLike(Protocol):
    """Any request record: LaunchRequested, BuildRequested, HubLaunchRequested."""

    @property
    def request_id(self) -> str: ...


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
        record = PhaseEvent(request_id=request_id, phase=phase, service=self.service, **{**named, **fields})
        return Outgoing(self._topic, request_id, record)

    async def report(self, request: RequestLike | str, phase: Phase, **fields: Any) -> PhaseEvent:
        """Publish the event and wait for the broker's acknowledgement; return it."""
        out = self.event(request, phase, **fields)
        await self._bus.publish(out.topic, out.key, out.record)
        assert isinstance(out.record, PhaseEvent)
        return out.record
