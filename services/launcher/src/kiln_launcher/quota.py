"""Counting running servers for the quotas, without asking the hub at every launch request.

Listing every active user costs the hub more the busier it is, and at a few launch requests a
second the listings alone kept it from answering the servers it was starting (found by the load
test: spawns timed out). The listing is asked at most every ``max_age_s`` by one request that
concurrent callers share, and launches this launcher started since then are added to it. That
request runs as a background task of the count's own (a caller that gives up does not end it for
the others), which ``aclose`` ends.

The listing gives the total quota its count, and the per-client quota (anonymous launches) its
count per client address: each server's user options carry the address it was launched from
(``binder_client_ip``, which the launcher passes as BinderHub does), so the hub, not a table of
the launcher's own, says which servers an address holds; it stays right across restarts and
replicas.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kilnbus.tasks import Tasks

CLAIM = "claim:"  # names of launches counted for their client before they have a server


def client_key(address: str) -> str:
    """The key the per-client quota counts under: the address, or its /64 for IPv6.

    One IPv6 client usually holds a whole /64 and can pick any address in it, so counting single
    IPv6 addresses would not limit anyone.
    """
    try:
        addr = ipaddress.ip_address(address.strip())
    except ValueError:
        return address.strip()
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


@dataclass(frozen=True)
class Listing:
    """Active servers as the hub listed them: how many in all, and how many per client key."""

    total: int
    per_client: Mapping[str, int] = field(default_factory=dict)
    servers: frozenset[str] = frozenset()  # "user/server" of each

    @classmethod
    def from_users(cls, users: Iterable[dict[str, Any]]) -> Listing:
        """From the hub's ``GET /users?state=active`` answer (its servers and their user options)."""
        total = 0
        per_client: Counter[str] = Counter()
        names: set[str] = set()
        for user in users:
            for name, server in (user.get("servers") or {}).items():
                total += 1
                names.add(f"{user.get('name')}/{name}")
                address = ((server or {}).get("user_options") or {}).get("binder_client_ip")
                if isinstance(address, str) and address:
                    per_client[client_key(address)] += 1
        return cls(total, dict(per_client), frozenset(names))


class RunningCount:
    """Servers running (or starting) now, as the hub last said plus the launches started since."""

    def __init__(self, ask: Callable[[], Awaitable[Listing | int]], max_age_s: float,
                 logged: Callable[[str], set[str]] | None = None) -> None:
        self._ask = ask
        # Warm servers handed to a client key, as the phase log says (every launcher, across restarts).
        self._logged = logged
        self._max_age_s = max_age_s
        self._value = Listing(0)
        self._started_since = 0
        self._started_per_client: Counter[str] = Counter()
        self._asked_at: float | None = None
        self._handed: dict[str, tuple[str, float]] = {}  # "user/server" -> (client key, when)
        self._asking: asyncio.Task[None] | None = None
        self._tasks = Tasks("quota count")

    async def aclose(self) -> None:
        """End a listing still being asked for."""
        await self._tasks.aclose()

    async def _fresh(self) -> None:
        if self._asked_at is None or time.monotonic() - self._asked_at >= self._max_age_s:
            if self._asking is None or self._asking.done():
                self._asking = self._tasks.start(self._refresh(), name="hub listing")
            await asyncio.shield(self._asking)  # a caller that gives up does not cancel the others' answer

    async def count(self) -> int:
        """Servers running in all."""
        await self._fresh()
        return self._value.total + self._started_since

    async def count_for(self, client: str) -> int:
        """Servers running that were launched from ``client`` (an address; IPv6 counts per /64)."""
        await self._fresh()
        key = client_key(client)
        # This launcher's own hand-overs and claims until the log has them, then the log's: as one set.
        handed = {name for name, (k, _) in self._handed.items() if k == key}
        if self._logged is not None:
            handed |= self._logged(key)
        return self._value.per_client.get(key, 0) + self._started_per_client[key] + len(handed)

    async def _refresh(self) -> None:
        asked_at = time.monotonic()
        value = await self._ask()
        listing = Listing(value) if isinstance(value, int) else value
        # Handed-over servers are remembered while the hub lists them (or were handed after it was asked).
        self._handed = {name: (key, at) for name, (key, at) in self._handed.items()
                        if name in listing.servers or at >= asked_at or name.startswith(CLAIM)}
        self._value, self._started_since, self._asked_at = listing, 0, time.monotonic()
        self._started_per_client = Counter()

    def stopped(self) -> None:
        """A server this launcher counted was stopped (a warm one retired): uncount it until the hub's next answer."""
        self._started_since -= 1

    def claim(self, client: str | None) -> str | None:
        """Count a launch from ``client`` now, before it has a server; ``release`` ends the claim."""
        if not client:
            return None
        name = f"{CLAIM}{uuid.uuid4().hex}"
        self._handed[name] = (client_key(client), time.monotonic())
        return name

    def release(self, claim: str | None) -> None:
        """End a ``claim`` (the launch got a server, counted by ``handed`` or ``started``, or failed)."""
        if claim is not None:
            self._handed.pop(claim, None)

    def handed(self, server_name: str, client: str | None) -> None:
        """A warm server (counted already in all) went to a launch from ``client``: count it for that client.

        Its user options, started before anyone asked, carry no client address, so this launcher
        remembers it for as long as the hub lists the server.
        """
        if client:
            self._handed[server_name] = (client_key(client), time.monotonic())

    def started(self, client: str | None = None) -> None:
        """A launch passed the quota checks: count it until the hub's next answer includes it."""
        self._started_since += 1
        if client:
            self._started_per_client[client_key(client)] += 1
