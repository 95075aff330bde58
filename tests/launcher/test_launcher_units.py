"""The launcher's quotas and token sealing against a stand-in hub: no Kafka, no JupyterHub.

``FakeHub`` answers the few calls the launcher makes as JupyterHub's REST API would (users and
their named servers, with the user options they were started with); servers are ready at once.
The same calls against the real hub are covered by ``test_launcher.py``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kilnbus import Delivery, HubLaunchRequested, Phase, PhaseEvent, Topics
from kilnbus.sealing import Sealer, SealError, new_key

from kiln_launcher.handler import Launcher
from kiln_launcher.quota import Listing, RunningCount, client_key
from kiln_launcher.settings import Settings

PUBLIC = "http://127.0.0.1:8000"


class FakeHub:
    """Users and servers in memory, shaped as JupyterHub's API returns them."""

    def __init__(self) -> None:
        self.users: dict[str, dict[str, dict[str, Any]]] = {}  # user -> server name -> server model
        self.listings = 0

    async def create_user(self, name: str) -> bool:
        created = name not in self.users
        self.users.setdefault(name, {})
        return created

    async def user(self, name: str) -> dict[str, Any] | None:
        if name not in self.users:
            return None
        return {"name": name, "servers": {k: dict(v) for k, v in self.users[name].items()}}

    async def start_server(self, user: str, server: str, options: dict[str, Any]) -> str | None:
        await asyncio.sleep(0.01)  # the hub takes a moment: concurrent launches overlap
        self.users.setdefault(user, {})[server] = {"name": server, "ready": True, "user_options": dict(options)}
        return None

    async def stop_server(self, user: str, server: str, remove: bool = True) -> None:
        self.users.get(user, {}).pop(server, None)

    async def progress(self, user: str, server: str) -> AsyncIterator[dict[str, Any]]:
        yield {"progress": 100, "ready": True, "message": "Server ready"}

    async def token(self, user: str, server: str, lifetime_s: int) -> str:
        return f"token-for-{user}/{server}"

    async def active_servers(self) -> Listing:
        self.listings += 1
        return Listing.from_users([{"name": u, "servers": s} for u, s in self.users.items() if s])


class Recorder:
    """Stands in for the producer: keeps the phase events the launcher publishes."""

    def __init__(self) -> None:
        self.events: list[PhaseEvent] = []

    async def publish(self, topic: Any, key: str, value: PhaseEvent) -> None:
        self.events.append(value)


class Harness:
    def __init__(self, **settings: Any) -> None:
        self.key = new_key()
        self.settings = Settings(**{"token_seal_keys": [self.key], "quota_check_interval_s": 0, "retry_delay_s": 0,
                                    **settings})
        self.hub = FakeHub()
        self.out = Recorder()
        self.launcher = Launcher(self.settings, self.out, Topics("t."), self.hub, Sealer([self.key]))  # type: ignore[arg-type]

    async def launch(self, hub_user: str | None = None, client_ip: str | None = "198.51.100.1",
                     request_id: str | None = None) -> PhaseEvent:
        rid = request_id or uuid.uuid4().hex
        if hub_user is not None:
            self.hub.users.setdefault(hub_user, {})  # a logged-in user exists at the hub already
        req = HubLaunchRequested(request_id=rid, image_name="reg/kiln/binder-x:abc", repo_url="https://example.org/o/r",
                                 ref="a" * 40, provider="gh", spec="o/r/main", hub_user=hub_user, client_ip=client_ip)
        await self.launcher.handle(Delivery("t.hub-launch-requested", 0, 0, rid, req, 0))
        return next(e for e in self.out.events if e.request_id == rid and e.phase in (Phase.READY, Phase.FAILED))


def test_defaults_are_finite() -> None:
    s = Settings()
    assert (s.total_quota, s.servers_per_user, s.servers_per_client) == (100, 5, 20)


async def test_total_quota_refuses_with_a_clear_failed_event() -> None:
    h = Harness(total_quota=2, servers_per_client=0)
    assert (await h.launch(client_ip="192.0.2.1")).phase is Phase.READY
    assert (await h.launch(client_ip="192.0.2.2")).phase is Phase.READY
    refused = await h.launch(client_ip="192.0.2.3")
    assert (refused.phase, refused.failure_cause, refused.status_code) == (Phase.FAILED, "total_quota", 429)
    assert "Too many users on this Binder (2 servers running)" in refused.message


async def test_per_client_quota_in_the_anonymous_mode() -> None:
    h = Harness(servers_per_client=2)
    assert [(await h.launch(client_ip="198.51.100.1")).phase for _ in range(2)] == [Phase.READY] * 2
    refused = await h.launch(client_ip="198.51.100.1")
    assert (refused.phase, refused.failure_cause, refused.status_code) == (Phase.FAILED, "client_quota", 429)
    assert "2 are running" in refused.message and "2 per address" in refused.message
    assert (await h.launch(client_ip="198.51.100.2")).phase is Phase.READY, "another address is not affected"
    # A server stopped frees its place (the hub's next listing no longer has it).
    user = next(u for u, servers in h.hub.users.items()
                if any(s["user_options"]["binder_client_ip"] == "198.51.100.1" for s in servers.values()))
    h.hub.users[user].clear()
    assert (await h.launch(client_ip="198.51.100.1")).phase is Phase.READY


async def test_per_client_quota_counts_an_ipv6_client_by_its_64() -> None:
    h = Harness(servers_per_client=1)
    assert (await h.launch(client_ip="2001:db8:1:2::1")).phase is Phase.READY
    refused = await h.launch(client_ip="2001:db8:1:2::beef")
    assert refused.failure_cause == "client_quota"
    assert (await h.launch(client_ip="2001:db8:1:3::1")).phase is Phase.READY


async def test_concurrent_launches_from_one_client_cannot_overshoot() -> None:
    h = Harness(servers_per_client=3, quota_check_interval_s=60)
    outcomes = await asyncio.gather(*(h.launch(client_ip="198.51.100.9") for _ in range(8)))
    assert sorted(e.phase.value for e in outcomes) == ["failed"] * 5 + ["ready"] * 3
    assert h.hub.listings == 1, "one listing shared by all of them"


async def test_per_user_quota_in_the_authenticated_mode() -> None:
    h = Harness(servers_per_user=2, servers_per_client=1)  # the per-client quota is for anonymous launches only
    assert [(await h.launch(hub_user="ada", client_ip="198.51.100.1")).phase for _ in range(2)] == [Phase.READY] * 2
    refused = await h.launch(hub_user="ada", client_ip="198.51.100.1")
    assert (refused.phase, refused.failure_cause, refused.status_code) == (Phase.FAILED, "user_quota", 429)
    assert "You already have 2 servers running" in refused.message and "2 per user" in refused.message
    assert (await h.launch(hub_user="grace", client_ip="198.51.100.1")).phase is Phase.READY, "another user is not affected"
    h.hub.users["ada"].popitem()  # ada stops one
    assert (await h.launch(hub_user="ada")).phase is Phase.READY


async def test_concurrent_launches_by_one_user_cannot_overshoot() -> None:
    h = Harness(servers_per_user=2)
    outcomes = await asyncio.gather(*(h.launch(hub_user="ada") for _ in range(5)))
    assert sorted(e.phase.value for e in outcomes) == ["failed"] * 3 + ["ready"] * 2
    assert len(h.hub.users["ada"]) == 2


async def test_a_request_delivered_again_is_not_refused_by_its_own_server() -> None:
    h = Harness(servers_per_user=1)
    rid = uuid.uuid4().hex
    assert (await h.launch(hub_user="ada", request_id=rid)).phase is Phase.READY
    h.out.events.clear()
    assert (await h.launch(hub_user="ada", request_id=rid)).phase is Phase.READY


async def test_zero_turns_the_per_user_and_per_client_quotas_off() -> None:
    h = Harness(servers_per_user=0, servers_per_client=0, total_quota=None)
    assert all(e.phase is Phase.READY for e in [await h.launch(hub_user="ada") for _ in range(7)])
    assert all(e.phase is Phase.READY for e in [await h.launch(client_ip="198.51.100.1") for _ in range(7)])


async def test_ready_token_is_sealed_for_its_request_with_its_url() -> None:
    h = Harness()
    ready = await h.launch()
    assert ready.phase is Phase.READY and ready.sealed_token is not None and ready.url is not None
    opened = Sealer([h.key]).open(ready.sealed_token, request_id=ready.request_id)
    assert opened.secret.startswith("token-for-") and opened.url == ready.url
    with pytest.raises(SealError):
        Sealer([h.key]).open(ready.sealed_token, request_id=uuid.uuid4().hex)


def test_listing_counts_servers_per_client_from_user_options() -> None:
    listing = Listing.from_users([
        {"name": "a", "servers": {"binder-1": {"user_options": {"binder_client_ip": "198.51.100.1"}},
                                  "binder-2": {"user_options": {"binder_client_ip": "::ffff:198.51.100.1"}}}},
        {"name": "b", "servers": {"binder-3": {"user_options": {}}, "": {}}},
    ])
    assert listing.total == 4 and listing.per_client == {"198.51.100.1": 2}
    assert client_key("2001:db8::1") == client_key("2001:db8::2") == "2001:db8::/64"


async def test_running_count_still_takes_a_bare_total() -> None:
    async def ask() -> int:
        return 3

    running = RunningCount(ask, max_age_s=60)
    assert await running.count() == 3 and await running.count_for("198.51.100.1") == 0
    running.started("198.51.100.1")
    assert await running.count() == 4 and await running.count_for("198.51.100.1") == 1
