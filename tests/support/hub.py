"""A stand-in for JupyterHub's REST API, as the launcher uses it (``kiln_launcher.hub.Hub``'s calls).

Users and their named servers live in memory, shaped as the hub returns them, with the user
options each server was started with; servers are ready at once unless told otherwise. Shared by
the launcher's handler tests (tests/launcher/test_launcher_units.py) and the whole chain in memory
(tests/chain).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
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
        # Servers' kiln_handover extension (Kiln's base image): "user/server" -> the environment it was handed, if it was.
        self.handed: dict[str, dict[str, str] | None] = {}
        self.without_handover: set[str] = set()  # images built without Kiln's base image (no extension: 404)
        self.tokens: dict[str, str] = {}  # token -> "user/server" it opens
        self.activities: list[str] = []
        self.deleted: list[str] = []

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
        self.users.setdefault(user, {})[server] = {"name": server, "ready": True, "user_options": dict(options),
                                                   "started": datetime.now(UTC).isoformat()}
        return None

    async def stop_server(self, user: str, server: str, remove: bool = True) -> None:
        self.stops += 1
        self.users.get(user, {}).pop(server, None)
        self.handed.pop(f"{user}/{server}", None)

    async def delete_user(self, name: str) -> None:
        self.deleted.append(name)
        for server in list(self.users.get(name, {})):
            await self.stop_server(name, server)
        self.users.pop(name, None)

    async def activity(self, user: str, server: str) -> None:
        self.activities.append(f"{user}/{server}")

    async def handover(self, user: str, server: str, token: str, environment: dict[str, str] | None) -> int | None:
        """As the kiln_handover extension answers through the proxy: the server's own token only, once."""
        model = self.users.get(user, {}).get(server)
        if model is None:
            return 503  # the proxy has no route
        if model["user_options"].get("image") in self.without_handover:
            return 404
        if self.tokens.get(token) != f"{user}/{server}":
            return 403
        name = f"{user}/{server}"
        if self.handed.get(name) is not None:
            return 409
        if environment is not None:
            self.handed[name] = dict(environment)
        return 200

    async def progress(self, user: str, server: str) -> AsyncIterator[dict[str, Any]]:
        yield {"progress": 100, "ready": True, "message": "Server ready"}

    async def token(self, user: str, server: str, lifetime_s: int) -> str:
        token = f"token-for-{user}/{server}"
        self.tokens[token] = f"{user}/{server}"
        return token

    async def probe_token(self, user: str, server: str) -> tuple[str, str]:
        token = f"probe-{len(self.tokens)}-for-{user}/{server}"
        self.tokens[token] = f"{user}/{server}"
        return token, token

    async def revoke(self, user: str, token_id: str) -> None:
        self.tokens.pop(token_id, None)

    async def active_users(self) -> list[dict[str, Any]]:
        return [{"name": u, "servers": {k: dict(v) for k, v in s.items()}} for u, s in self.users.items() if s]

    async def active_servers(self) -> Listing:
        self.listings += 1
        return Listing.from_users(await self.active_users())
