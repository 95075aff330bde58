"""What the gateway's application is given rather than makes: the bus, its router, the hub's clients.

``kiln_gateway.bootstrap`` builds them for production (``KafkaBus``, a Kafka group-lag reader, an
HTTP client for the hub); tests build them over a ``MemoryBus`` with fakes. The application's
lifespan starts them and closes every one of them, whatever the order things failed in.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import httpx

from kiln_gateway.auth import HubAuth
from kiln_gateway.groupoffsets import GroupLag
from kiln_gateway.router import EventRouter
from kilnbus import Bus


@dataclass
class GatewayPorts:
    """The gateway's clients and long-lived readers, each owned here and closed by ``aclose``."""

    bus: Bus
    router: EventRouter
    group_lag: GroupLag
    hub_http: httpx.AsyncClient
    auth: HubAuth
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack, repr=False)

    async def start(self) -> None:
        """Start the bus (topics ensured on Kafka), then the router reading from its end."""
        stack = self._stack
        # Registered before each start, so whatever was started is closed even if a later start fails.
        stack.push_async_callback(self.hub_http.aclose)
        stack.push_async_callback(self.group_lag.aclose)
        stack.push_async_callback(self.bus.stop)
        await self.bus.start()
        stack.push_async_callback(self.router.stop)
        await self.router.start()

    async def aclose(self) -> None:
        """Stop the router, the bus, the group-lag clients and the hub client (the reverse of ``start``)."""
        await self._stack.aclose()
