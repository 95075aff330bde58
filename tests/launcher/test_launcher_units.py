"""The launcher's handling of launch requests against a stand-in hub, on the in-memory bus.

``kiln_launcher.bootstrap.run_on`` serves the launcher on a ``MemoryBus`` (the same dispatcher, failed
events and projection of running servers as on Kafka). ``FakeHub`` (tests/support/hub.py, shared
with tests/chain) answers the few calls the launcher makes as JupyterHub's REST API would (users
and their named servers, with the user options they were started with); servers are ready at once
unless told otherwise. The same calls against
the real hub, on Kafka, are in ``test_launcher.py``.
"""

from __future__ import annotations

import asyncio
import types
import uuid
from collections.abc import Callable
from typing import Any, Self

import pytest

from kiln_launcher import quota
from kiln_launcher.bootstrap import run_on as run
from kiln_launcher.hub import Hub
from kiln_launcher.quota import Listing, RunningCount, client_key
from kiln_launcher.settings import Settings
from kilnbus import HubLaunchRequested, MemoryBus, Phase, PhaseEvent
from kilnbus.sealing import Sealer, SealError, new_key

from ..support.hub import FakeHub

PUBLIC = "http://127.0.0.1:8000"
IMAGE = "reg/kiln/binder-x:abc"


class Launching:
    """The launcher served on a ``MemoryBus`` against ``FakeHub`` until the block ends, as its entry point runs it."""

    def __init__(self, hub: Any = None, bus: MemoryBus | None = None, **settings: Any) -> None:
        self.key = new_key()
        # Warm pools off unless a test asks for them (tests/launcher/test_pool_units.py): their
        # servers would start beside the ones a test counts.
        self.settings = Settings(**{"token_seal_keys": [self.key], "quota_check_interval_s": 0, "retry_delay_s": 0,
                                    "pool_size": 0, **settings})
        self.hub = hub if hub is not None else FakeHub()
        self.bus = bus if bus is not None else MemoryBus(self.settings)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(run(self.bus, self.settings, self.hub, self._stop))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, 10)

    @property
    def events(self) -> list[PhaseEvent]:
        return [e for e in self.bus.records(self.bus.topics.phase_events) if isinstance(e, PhaseEvent)]

    async def publish(self, hub_user: str | None = None, client_ip: str | None = "198.51.100.1",
                      request_id: str | None = None, image: str = IMAGE) -> str:
        rid = request_id or uuid.uuid4().hex
        if hub_user is not None:
            self.hub.users.setdefault(hub_user, {})  # a logged-in user exists at the hub already
        await self.bus.publish(self.bus.topics.hub_launch_requested, rid, HubLaunchRequested(
            request_id=rid, image_name=image, repo_url="https://example.org/o/r", ref="a" * 40,
            provider="gh", spec="o/r/main", resolved_spec="o/r/" + "a" * 40, hub_user=hub_user, client_ip=client_ip))
        return rid

    async def launch(self, hub_user: str | None = None, client_ip: str | None = "198.51.100.1",
                     request_id: str | None = None, image: str = IMAGE) -> PhaseEvent:
        """Publish a launch request; once the launcher has handled it, its answer (ready or failed)."""
        before = len(self.events)
        rid = await self.publish(hub_user, client_ip, request_id, image)
        await self.bus.drained(self.settings.group_id("kiln-launcher"))
        return next(e for e in self.events[before:] if e.request_id == rid and e.phase in (Phase.READY, Phase.FAILED))

    async def wait_for(self, predicate: Callable[[list[PhaseEvent]], bool], timeout: float = 5) -> list[PhaseEvent]:
        """The phase events once ``predicate`` holds of them (woken by each record published, no polling)."""
        async with self.bus.changed:
            await asyncio.wait_for(self.bus.changed.wait_for(lambda: predicate(self.events)), timeout)
        return self.events


def test_defaults_are_finite() -> None:
    s = Settings()
    assert (s.total_quota, s.servers_per_user, s.servers_per_client) == (100, 5, 20)


async def test_total_quota_refuses_with_a_clear_failed_event() -> None:
    async with Launching(total_quota=2, servers_per_client=0) as h:
        assert (await h.launch(client_ip="192.0.2.1")).phase is Phase.READY
        assert (await h.launch(client_ip="192.0.2.2")).phase is Phase.READY
        refused = await h.launch(client_ip="192.0.2.3")
        assert (refused.phase, refused.failure_cause, refused.status_code) == (Phase.FAILED, "total_quota", 429)
        assert "Too many users on this Binder (2 servers running)" in refused.message
        assert (refused.service, refused.image_name, refused.provider) == ("launcher", "reg/kiln/binder-x:abc", "gh")
        assert h.bus.records(h.bus.topics.dead_letter) == [], "an answer for the user, not poison"
    async with Launching(total_quota=0) as h:
        refused = await h.launch()
        assert (refused.failure_cause, refused.status_code) == ("total_quota", 429), "0: closed"
        assert h.hub.starts == 0


async def test_per_client_quota_in_the_anonymous_mode() -> None:
    async with Launching(servers_per_client=2) as h:
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
    async with Launching(servers_per_client=1) as h:
        assert (await h.launch(client_ip="2001:db8:1:2::1")).phase is Phase.READY
        refused = await h.launch(client_ip="2001:db8:1:2::beef")
        assert refused.failure_cause == "client_quota"
        assert (await h.launch(client_ip="2001:db8:1:3::1")).phase is Phase.READY


async def test_concurrent_launches_from_one_client_cannot_overshoot() -> None:
    async with Launching(servers_per_client=3, quota_check_interval_s=60) as h:
        outcomes = await asyncio.gather(*(h.launch(client_ip="198.51.100.9") for _ in range(8)))
        assert sorted(e.phase.value for e in outcomes) == ["failed"] * 5 + ["ready"] * 3
        assert h.hub.listings == 1, "one listing shared by all of them"


async def test_per_user_quota_in_the_authenticated_mode() -> None:
    async with Launching(servers_per_user=2, servers_per_client=1) as h:  # the per-client quota is for anonymous launches only
        assert [(await h.launch(hub_user="ada", client_ip="198.51.100.1")).phase for _ in range(2)] == [Phase.READY] * 2
        refused = await h.launch(hub_user="ada", client_ip="198.51.100.1")
        assert (refused.phase, refused.failure_cause, refused.status_code) == (Phase.FAILED, "user_quota", 429)
        assert "You already have 2 servers running" in refused.message and "2 per user" in refused.message
        assert (await h.launch(hub_user="grace", client_ip="198.51.100.1")).phase is Phase.READY, "another user is not affected"
        h.hub.users["ada"].popitem()  # ada stops one
        assert (await h.launch(hub_user="ada")).phase is Phase.READY


async def test_concurrent_launches_by_one_user_cannot_overshoot() -> None:
    async with Launching(servers_per_user=2) as h:
        outcomes = await asyncio.gather(*(h.launch(hub_user="ada") for _ in range(5)))
        assert sorted(e.phase.value for e in outcomes) == ["failed"] * 3 + ["ready"] * 2
        assert len(h.hub.users["ada"]) == 2


async def test_a_request_delivered_again_is_not_refused_by_its_own_server() -> None:
    async with Launching(servers_per_user=1) as h:
        rid = uuid.uuid4().hex
        assert (await h.launch(hub_user="ada", request_id=rid)).phase is Phase.READY
        assert (await h.launch(hub_user="ada", request_id=rid)).phase is Phase.READY
        assert h.hub.starts == 1, "the server it started is found running"


async def test_zero_turns_the_per_user_and_per_client_quotas_off() -> None:
    async with Launching(servers_per_user=0, servers_per_client=0, total_quota=None) as h:
        assert all(e.phase is Phase.READY for e in [await h.launch(hub_user="ada") for _ in range(7)])
        assert all(e.phase is Phase.READY for e in [await h.launch(client_ip="198.51.100.1") for _ in range(7)])


async def test_ready_token_is_sealed_for_its_request_with_its_url() -> None:
    async with Launching() as h:
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


async def test_a_request_in_the_log_twice_starts_one_server() -> None:
    async with Launching() as h:
        rid = uuid.uuid4().hex
        for _ in range(2):  # both in the log before the launcher takes either
            await h.publish(request_id=rid)
        await h.bus.drained(h.settings.group_id("kiln-launcher"))
        assert h.hub.starts == 1 and sum(len(servers) for servers in h.hub.users.values()) == 1
        assert [e.phase for e in h.events if e.phase in (Phase.READY, Phase.FAILED)] == [Phase.READY]


async def test_a_crashed_spawn_is_retried_and_a_missing_image_is_not() -> None:
    async with Launching(FakeHub(refusals=["Spawner exited with status 1"]), retries=3) as h:
        ready = await h.launch()
        assert ready.phase is Phase.READY and h.hub.starts == 2 and h.hub.stops == 1
        assert [e.message for e in h.events if e.phase is Phase.LAUNCHING][:2] == [
            "Launching server...\n", "Launch attempt 1 failed, retrying...\n"]
    async with Launching(FakeHub(refusals=["image reg/kiln/binder-x:abc not present"]), retries=3) as h:
        failed = await h.launch()
        assert (failed.failure_cause, h.hub.starts, h.hub.stops) == ("image_missing", 1, 1), "not retried"
        assert failed.message == "The server failed to start: image reg/kiln/binder-x:abc not present\n"
    async with Launching(FakeHub(refusals=["Spawner exited"] * 3), retries=3) as h:
        failed = await h.launch()
        assert (failed.phase, failed.failure_cause, failed.status_code) == (Phase.FAILED, "server_crashed", 500)
        assert (h.hub.starts, h.hub.stops) == (3, 3), "every attempt, then no more"


async def test_an_unreachable_hub_fails_the_launch_after_its_retries() -> None:
    hub = Hub("http://127.0.0.1:9/hub/api", "token", retries=2, retry_delay_s=0)
    try:
        async with Launching(hub) as h:
            failed = await h.launch()
    finally:
        await hub.aclose()
    assert (failed.phase, failed.failure_cause, failed.status_code) == (Phase.FAILED, "hub_unreachable", 503)
    assert failed.message.startswith("Launching failed: JupyterHub cannot be reached right now")
    assert "127.0.0.1:9" not in failed.message, "the hub's address is the log's"
    assert h.bus.records(h.bus.topics.dead_letter) == []


async def test_servers_the_hub_no_longer_has_are_reported_stopped() -> None:
    """Also one from the log before the launcher started: its projection replays the log on the bus it serves."""
    bus, hub = MemoryBus(), FakeHub()
    earlier = PhaseEvent(request_id="earlier", phase=Phase.READY, service="launcher", server_name="gone/binder-1",
                         url=f"{PUBLIC}/user/gone/binder-1/")
    await bus.publish(bus.topics.phase_events, earlier.request_id, earlier)
    async with Launching(hub, bus, cull_check_interval_s=0.01) as h:
        ready = await h.launch()
        assert ready.phase is Phase.READY and ready.server_name is not None
        del hub.users[ready.server_name.partition("/")[0]]  # what the idle culler does to a server and its temporary user
        events = await h.wait_for(lambda events: {e.request_id for e in events if e.phase is Phase.STOPPED}
                                  >= {"earlier", ready.request_id})
    stopped = sorted((e.request_id, e.server_name, e.service, e.message) for e in events if e.phase is Phase.STOPPED)
    assert stopped == sorted([("earlier", "gone/binder-1", "launcher", "Server gone/binder-1 stopped\n"),
                              (ready.request_id, ready.server_name, "launcher", f"Server {ready.server_name} stopped\n")])


async def test_quota_count_asks_the_hub_once_for_many_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """The total quota's count: concurrent requests share one hub listing, started launches add up,
    and the hub is asked again once the count is older than its interval."""
    clock = [0.0]
    monkeypatch.setattr(quota, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    asked = 0
    answer = asyncio.Event()

    async def listing() -> int:
        nonlocal asked
        asked += 1
        await answer.wait()
        return 3

    running = RunningCount(listing, max_age_s=0.3)
    counts = asyncio.gather(*(running.count() for _ in range(50)))
    await asyncio.sleep(0)  # every caller is waiting for the one listing
    answer.set()
    assert await counts == [3] * 50
    assert asked == 1
    running.started()
    running.started()
    assert await running.count() == 5 and asked == 1
    clock[0] += 0.29
    assert await running.count() == 5 and asked == 1, "control: still fresh"
    clock[0] += 0.01
    assert await running.count() == 3 and asked == 2, "a fresh answer replaces the local additions"
    await running.aclose()


async def test_aclose_ends_a_hub_listing_its_callers_gave_up_on() -> None:
    asking, cancelled = asyncio.Event(), asyncio.Event()

    async def listing() -> int:
        asking.set()
        try:
            await asyncio.Event().wait()  # a hub that does not answer
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 0

    running = RunningCount(listing, max_age_s=60)
    caller = asyncio.create_task(running.count())
    await asyncio.wait_for(asking.wait(), 5)
    caller.cancel()
    await asyncio.gather(caller, return_exceptions=True)
    await asyncio.sleep(0)
    assert not cancelled.is_set(), "control: a caller giving up does not end the listing others may share"
    await running.aclose()
    assert cancelled.is_set(), "cancelled and awaited by its owner"


async def test_a_hub_refusal_is_told_without_the_hubs_answer(caplog: pytest.LogCaptureFixture) -> None:
    import httpx

    from kiln_launcher.hub import HubError

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/users/alice"):
            return httpx.Response(403, text="token realm http://hub.kiln.internal:8081 refuses scope admin:users")
        return httpx.Response(201, json={})

    hub = Hub("http://hub.kiln.internal:8081/hub/api", "token", retries=1, retry_delay_s=0)
    await hub.aclose()
    hub._client = httpx.AsyncClient(base_url="http://hub.kiln.internal:8081/hub/api", transport=httpx.MockTransport(answer))
    try:
        with pytest.raises(HubError) as refused:
            await hub.create_user("alice")
        assert (refused.value.cause, refused.value.status) == ("hub_error", 403)
        assert str(refused.value).startswith("JupyterHub refused Kiln's request (HTTP 403).")
        assert "hub.kiln.internal" not in str(refused.value) and "/users/alice" not in str(refused.value)
        assert "refuses scope admin:users" in caplog.text, "control: the hub's answer is in the log"
        assert await hub.create_user("bob") is True  # control: an accepted call goes through
    finally:
        await hub.aclose()
