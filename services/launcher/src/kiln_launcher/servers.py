"""Servers this Kiln started and that have not stopped: a projection of the phase log.

What counts as running is ``kilnbus.servers``' fold, shared with the resolver and analytics. The
idle culler stops servers behind Kiln's back; the launcher notices by asking the hub, and says so
with a ``stopped`` event, so quotas and analytics (which count from the log) stay true.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from kiln_launcher.hub import Hub, HubError
from kilnbus import Phase, PhaseEvent
from kilnbus.servers import RunningServers

log = logging.getLogger(__name__)


class Servers:
    """The running servers the culler watcher checks with the hub."""

    def __init__(self) -> None:
        self.fold = RunningServers()

    def apply(self, event: PhaseEvent) -> None:
        """Fold one phase event in (the log follower calls this for every record)."""
        self.fold.apply(event)

    @property
    def running(self) -> dict[str, str]:
        """Request id -> "user/server" of each running server the hub can be asked about."""
        return {s.request_id: s.server_name for s in self.fold.servers() if s.server_name}

    async def watch(self, hub: Hub, interval_s: float, stopped: Callable[[str, str], Awaitable[None]], stop: asyncio.Event) -> None:
        """Every ``interval_s``, report servers the hub no longer has."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
                return
            except TimeoutError:
                pass
            for request_id, server_name in list(self.running.items()):
                user, _, server = server_name.partition("/")
                try:
                    model = await hub.user(user)
                except HubError as exc:
                    log.warning("cannot check %s: %s", server_name, exc)
                    break
                if model is None or server not in (model.get("servers") or {}):
                    await stopped(request_id, server_name)
                    # Folded now, not when the follower reads it back, so the next round does not report it again.
                    self.fold.apply(PhaseEvent(request_id=request_id, phase=Phase.STOPPED, service="launcher",
                                               server_name=server_name))
