"""Servers this Kiln started and that have not stopped: a projection of the phase log.

The idle culler stops servers behind Kiln's back; the launcher notices by asking the hub, and says
so with a ``stopped`` event, so quotas and analytics (which count from the log) stay true.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from kilnbus import Phase, PhaseEvent

from kiln_launcher.hub import Hub, HubError

log = logging.getLogger(__name__)


class Servers:
    def __init__(self) -> None:
        self.running: dict[str, str] = {}  # request id -> "user/server"

    def apply(self, event: PhaseEvent) -> None:
        if event.phase is Phase.READY and event.service == "launcher" and event.server_name:
            self.running[event.request_id] = event.server_name
        elif event.phase is Phase.STOPPED:
            self.running.pop(event.request_id, None)

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
                    self.running.pop(request_id, None)
                    await stopped(request_id, server_name)
