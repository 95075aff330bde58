"""A stand-in for JupyterHub's REST API, as the launcher uses it (``kiln_launcher.hub.Hub``'s calls).

Users and their named servers live in memory, shaped as the hub returns them, with the user
options each server was started with; servers are ready at once unless told otherwise. Shared by
the launcher's handler tests (tests/launcher/test_launcher_units.py) and the whole chain in memory
(tests/chain).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from kiln_launcher.quota import Listing


class FakeHub:
    """Users and servers in memory, shaped as JupyterHub's API returns them."""

    def __init__(self, refusals: list[str] | None = None) -> None:
        self.users: dict[str, dict[str, dict[str, Any]]] = {}  # user -> server name -> server model
        self.listings = 0
        self.refusals = list(refusals or [])  # what the hub answers the next start requests with
        self.starts = 0
        self.stops = 0

    async def create_user(self, name: str) -> bool:
        created = name not in self.users
        self.users.setdefault(name, {})
        return created

    async def user(self, name: str) -> dict[str, Any] | None:
        if name not in self.users:
            return None
        return {"name": name, "servers": {k: dict(v) for k, v in self.users[name].items()}}

    async def start_server(self, user: str, server: str, options: dict[str, Any]) -> str | None:
        self.starts += 1
        await asyncio.sleep(0.01)  # the hub takes a moment: concurrent launches overlap
        if self.refusals:
            return self.refusals.pop(0)
        self.users.setdefault(user, {})[server] = {"name": server, "ready": True, "user_options": dict(options)}
        return None

    async def stop_server(self, user: str, server: str, remove: bool = True) -> None:
        self.stops += 1
        self.users.get(user, {}).pop(server, None)

    async def progress(self, user: str, server: str) -> AsyncIterator[dict[str, Any]]:
        yield {"progress": 100, "ready": True, "message": "Server ready"}

    async def token(self, user: str, server: str, lifetime_s: int) -> str:
        return f"token-for-{user}/{server}"

    async def active_servers(self) -> Listing:
        self.listings += 1
        return Listing.from_users([{"name": u, "servers": s} for u, s in self.users.items() if s])
