"""Warm pools against the stand-in hub, on the in-memory bus (``kiln_launcher.pool``).

``FakeHub`` (tests/support/hub.py) stands for JupyterHub and for each server's ``kiln_handover``
extension as the launcher reaches it through the proxy: it answers only the token minted for that
server, once. The real extension in Kiln's base image, on the real hub, is in tests/e2e/test_pool.py.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from prometheus_client import REGISTRY

from kiln_launcher.demand import RecentLaunches
from kiln_launcher.pool import OWNER_OPTION
from kilnbus import Phase, PhaseEvent
from kilnbus.sealing import Sealer

from ..support.hub import FakeHub
from .test_launcher_units import IMAGE, Launching

OTHER = "reg/kiln/binder-y:def"
FAST: dict[str, Any] = {"pool_check_interval_s": 0.02, "pool_images": [IMAGE], "pool_size": 1}


def warm_servers(hub: FakeHub, image: str = IMAGE) -> set[str]:
    """Servers the pool started and nobody has been handed yet."""
    return {f"{user}/{name}" for user, servers in hub.users.items() for name, model in servers.items()
            if model["user_options"].get(OWNER_OPTION) and model["user_options"].get("image") == image
            and hub.handed.get(f"{user}/{name}") is None}


async def until(predicate: object, timeout: float = 5) -> None:
    """Wait for the background pool to reach a state (it works on its own schedule)."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_launch_gets_a_warm_server_with_its_own_token_and_environment() -> None:
    async with Launching(**FAST) as h:
        await until(lambda: len(warm_servers(h.hub)) == 1)
        (warm,) = warm_servers(h.hub)
        ready = await h.launch(client_ip="198.51.100.7")
        assert ready.phase is Phase.READY and ready.server_name == warm and ready.warm is True
        launching = [e for e in h.events if e.request_id == ready.request_id and e.phase is Phase.LAUNCHING]
        assert [e.warm for e in launching] == [True] and "ahead of time" in launching[0].message
        user, server = warm.split("/")
        assert ready.url == f"http://127.0.0.1:8000/user/{user}/{server}/"
        opened = Sealer([h.key]).open(ready.sealed_token or b"", request_id=ready.request_id)
        assert h.hub.tokens[opened.secret] == warm, "the token opens that server only"
        assert h.hub.handed[warm] == {
            "BINDER_REPO_URL": "https://example.org/o/r", "BINDER_REQUEST": "v2/gh/o/r/main",
            "BINDER_PERSISTENT_REQUEST": "v2/gh/o/r/" + "a" * 40, "BINDER_CLIENT_IP": "198.51.100.7"}
        await until(lambda: warm in h.hub.activities)
        assert REGISTRY.get_sample_value("kiln_pool_target_servers") == 1
        assert (REGISTRY.get_sample_value("kiln_pool_launches_total", {"outcome": "hit"}) or 0) >= 1


async def test_each_warm_server_goes_to_one_launch_and_the_pool_refills() -> None:
    async with Launching(**FAST) as h:
        got = []
        for _ in range(3):
            await until(lambda: len(warm_servers(h.hub)) == 1)
            ready = await h.launch()
            assert ready.warm is True
            got.append(ready.server_name)
        assert len(set(got)) == 3, "never the same server twice"
        assert all(h.hub.handed[name] is not None for name in got)
        await until(lambda: len(warm_servers(h.hub)) == 1)


async def test_concurrent_launches_never_share_a_warm_server() -> None:
    async with Launching(**{**FAST, "pool_size": 2}) as h:
        await until(lambda: len(warm_servers(h.hub)) == 2)
        outcomes = await asyncio.gather(*(h.launch() for _ in range(5)))
        names = [e.server_name for e in outcomes]
        assert all(e.phase is Phase.READY for e in outcomes) and len(set(names)) == 5
        # Both warm servers are used; a later launch may also get one the pool refilled meanwhile.
        assert sum(bool(e.warm) for e in outcomes) >= 2, "the two warm servers were handed out"


async def test_a_warm_server_that_claims_it_was_handed_over_is_retired_and_its_image_not_pooled() -> None:
    async with Launching(**FAST) as h:
        await until(lambda: len(warm_servers(h.hub)) == 1)
        (warm,) = warm_servers(h.hub)
        # The server's own code (an image's start script) posts its own hand-over with its own token.
        h.hub.handed[warm] = {"BINDER_CLIENT_IP": "203.0.113.9"}
        ready = await h.launch()
        assert ready.phase is Phase.READY and ready.server_name != warm and ready.warm is False
        await until(lambda: warm.split("/")[0] in h.hub.deleted)
        starts = h.hub.starts
        await asyncio.sleep(0.2)
        assert h.hub.starts == starts and warm_servers(h.hub) == set(), "that image is not pooled again"


async def test_concurrent_launches_from_one_client_get_no_more_warm_servers_than_its_quota() -> None:
    async with Launching(**{**FAST, "pool_size": 3, "servers_per_client": 1, "pool_memory_budget_mb": 8192}) as h:
        await until(lambda: len(warm_servers(h.hub)) == 3)
        outcomes = await asyncio.gather(*(h.launch(client_ip="198.51.100.8") for _ in range(3)))
        assert sorted(e.phase.value for e in outcomes) == ["failed", "failed", "ready"]
        assert {e.failure_cause for e in outcomes if e.phase is Phase.FAILED} == {"client_quota"}


async def test_a_server_made_to_look_like_a_warm_one_is_never_adopted() -> None:
    """A logged-in user can start a server with any user options: without the launcher's proof it is theirs."""
    hub = FakeHub()
    hub.users["mallory"] = {"bait": {"name": "bait", "ready": True, "started": datetime.now(UTC).isoformat(),
                                     "user_options": {"image": IMAGE, OWNER_OPTION: "kiln-launcher",
                                                      "kiln_pool_proof": "0" * 64}}}
    async with Launching(hub=hub, **FAST) as h:
        await until(lambda: len(warm_servers(hub) - {"mallory/bait"}) == 1)
        ready = await h.launch()
        assert ready.server_name != "mallory/bait" and "bait" in hub.users["mallory"], "not used, not removed"


async def test_images_without_the_handover_extension_are_not_pooled() -> None:
    hub = FakeHub()
    hub.without_handover.add(IMAGE)
    async with Launching(hub=hub, **FAST) as h:
        await until(lambda: hub.starts >= 1 and not any(hub.users.values()) and hub.deleted)  # the probe's server and user removed
        ready = await h.launch()
        assert ready.phase is Phase.READY and ready.warm is False
        starts = hub.starts
        await asyncio.sleep(0.2)
        assert hub.starts == starts, "no more tries for that image"


async def test_logged_in_users_never_get_a_warm_server() -> None:
    async with Launching(**FAST) as h:
        await until(lambda: len(warm_servers(h.hub)) == 1)
        ready = await h.launch(hub_user="ada")
        assert ready.server_name is not None and ready.server_name.startswith("ada/") and ready.warm is False
        assert len(warm_servers(h.hub)) == 1


async def test_warm_servers_give_their_room_to_launches_under_the_total_quota() -> None:
    # The hub's listing asked once, then launches counted as they start (asked at every check, it can be
    # taken while a launch's server is not at the hub yet: a pool may then refill one slot too many until
    # the next listing, which the next launch corrects).
    async with Launching(**{**FAST, "pool_size": 2, "total_quota": 2, "servers_per_client": 0,
                            "quota_check_interval_s": 60}) as h:
        await until(lambda: len(warm_servers(h.hub)) == 2)
        first = await h.launch(image=OTHER)  # a miss: the quota is full of warm servers, one gives way
        assert first.phase is Phase.READY and first.warm is False
        second = await h.launch(image=OTHER)
        assert second.phase is Phase.READY and second.warm is False
        assert warm_servers(h.hub) == set()
        refused = await h.launch(image=OTHER)
        assert refused.failure_cause == "total_quota", "users' servers are not given up"
        await asyncio.sleep(0.1)
        assert warm_servers(h.hub) == set(), "no room: the pool does not fill"


async def test_the_per_client_quota_counts_warm_servers_handed_to_a_client() -> None:
    async with Launching(**{**FAST, "servers_per_client": 1}) as h:
        await until(lambda: len(warm_servers(h.hub)) == 1)
        assert (await h.launch(client_ip="198.51.100.5")).warm is True
        await until(lambda: len(warm_servers(h.hub)) == 1)
        refused = await h.launch(client_ip="198.51.100.5")
        assert refused.failure_cause == "client_quota"
        assert len(warm_servers(h.hub)) == 1, "a refused launch takes no warm server"


async def test_popular_images_get_pools_and_cold_ones_lose_them() -> None:
    settings: dict[str, Any] = {"pool_check_interval_s": 0.02, "pool_size": 1, "pool_min_launches": 2, "pool_window_s": 1.0}
    async with Launching(**settings) as h:
        await h.launch(image=OTHER)
        await asyncio.sleep(0.1)
        assert warm_servers(h.hub, OTHER) == set(), "one launch is not popular"
        await h.launch(image=OTHER)
        await until(lambda: len(warm_servers(h.hub, OTHER)) == 1)
        # No launches for the window's length: the image is cold, its pool emptied.
        await until(lambda: warm_servers(h.hub, OTHER) == set(), timeout=5)


async def test_warm_servers_are_replaced_before_they_grow_old() -> None:
    async with Launching(**{**FAST, "pool_max_age_s": 0.2}) as h:
        await until(lambda: len(warm_servers(h.hub)) == 1)
        (first,) = warm_servers(h.hub)
        await until(lambda: len(warm_servers(h.hub)) == 1 and first not in warm_servers(h.hub))
        assert first.split("/")[0] in h.hub.deleted


async def test_size_zero_turns_pools_off() -> None:
    async with Launching(**{**FAST, "pool_size": 0}) as h:
        ready = await h.launch()
        await asyncio.sleep(0.1)
        assert ready.warm is False and h.hub.starts == 1


async def test_a_restarted_launcher_adopts_its_unused_warm_servers_only() -> None:
    hub = FakeHub()
    async with Launching(hub=hub, **FAST) as h:
        await until(lambda: len(warm_servers(hub)) == 1)
        used = await h.launch()
        await until(lambda: len(warm_servers(hub)) == 1)  # refilled
        (kept,) = warm_servers(hub)
    starts = hub.starts
    async with Launching(hub=hub, bus=h.bus, **{**FAST, "token_seal_keys": h.settings.token_seal_keys}) as again:
        await asyncio.sleep(0.1)
        assert hub.starts == starts, "the unused one is adopted, not started again"
        ready = await again.launch()
        assert ready.server_name == kept and ready.server_name != used.server_name


async def test_a_hit_delivered_again_answers_with_the_same_server() -> None:
    async with Launching(**FAST) as h:
        await until(lambda: len(warm_servers(h.hub)) == 1)
        first = await h.launch(request_id="again-1")
        second = await h.launch(request_id="again-1")
        assert first.warm is True and second.server_name == first.server_name


def test_recent_launches_counts_each_launch_once_within_its_window() -> None:
    now = [1000.0]
    demand = RecentLaunches(60, clock=lambda: now[0])

    def ready(rid: str, image: str, at: float) -> PhaseEvent:
        return PhaseEvent(request_id=rid, phase=Phase.READY, service="launcher", url="http://h/u/", image_name=image,
                          repo_url="https://example.org/r", timestamp=datetime.fromtimestamp(at, UTC))

    for rid, image in (("a", "i1"), ("b", "i1"), ("b", "i1"), ("c", "i2")):
        demand.apply(ready(rid, image, now[0]))
    demand.apply(PhaseEvent(request_id="d", phase=Phase.READY, service="launcher", image_name="i3"))  # build only
    assert demand.top(5, 1) == [("i1", 2), ("i2", 1)] and demand.top(5, 2) == [("i1", 2)]
    assert demand.repo_url("i1") == "https://example.org/r"
    now[0] += 61
    assert demand.top(5, 1) == [] and demand.repo_url("i1") is None
    demand.apply(ready("e", "i1", now[0] - timedelta(seconds=30).total_seconds()))
    assert demand.launches("i1") == 1


async def test_a_launcher_with_pools_turned_off_retires_its_unused_warm_servers() -> None:
    hub = FakeHub()
    async with Launching(hub=hub, **FAST) as h:
        await until(lambda: len(warm_servers(hub)) == 1)
        used = await h.launch()
        await until(lambda: len(warm_servers(hub)) == 1)
    async with Launching(hub=hub, bus=h.bus, **{**FAST, "pool_size": 0, "token_seal_keys": h.settings.token_seal_keys}):
        await until(lambda: warm_servers(hub) == set())
        user, server = (used.server_name or "").split("/")
        assert server in hub.users[user], "the one handed over stays its user's"


async def test_a_hostile_servers_answer_to_the_handover_cannot_flood_or_stall_the_launcher(monkeypatch: Any) -> None:
    """The hand-over client against answers a server running a stranger's code could give (httpx's
    mock transport stands for the hub's proxy and the server behind it)."""
    from kiln_launcher import hub as hub_module
    from kiln_launcher.hub import Hub

    monkeypatch.setattr(hub_module, "HANDOVER_TIMEOUT_S", 0.5)

    async def drip() -> Any:
        while True:
            yield b" "
            await asyncio.sleep(0.05)

    async def flood() -> Any:
        for _ in range(10_000):
            yield b"x" * 1024

    async def once(data: bytes) -> Any:
        yield data

    bomb = gzip.compress(b"{" * 10_000_000)
    answers = {
        "bomb": lambda: httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=once(bomb)),
        "drip": lambda: httpx.Response(200, content=drip()),
        "flood": lambda: httpx.Response(200, content=flood()),
        "lies": lambda: httpx.Response(200, content=once(b'["not", "an", "object"]')),
        "fresh": lambda: httpx.Response(200, content=once(b'{"handed": false}')),
    }
    hub = Hub("http://hub/api", "t", retries=1, retry_delay_s=0)
    hub._servers = httpx.AsyncClient(base_url="http://proxy",
                                     transport=httpx.MockTransport(lambda r: answers[r.url.path.split("/")[2]]()))
    try:
        for name in ("bomb", "drip", "flood", "lies"):
            started = time.monotonic()
            assert await hub.handover(name, "s", "tok", None) is None, name
            assert time.monotonic() - started < 5, name
        assert await hub.handover("fresh", "s", "tok", None) == 200, "control: a real answer"
    finally:
        await hub.aclose()


async def test_a_restarted_launcher_still_counts_warm_servers_for_their_client() -> None:
    """The hub's user options of a warm server hold no client address: the phase log's keyed tag does."""
    hub = FakeHub()
    settings: dict[str, Any] = {**FAST, "servers_per_client": 1}
    async with Launching(hub=hub, **settings) as h:
        await until(lambda: len(warm_servers(hub)) == 1)
        first = await h.launch(client_ip="198.51.100.3")
        assert first.warm is True and first.client_tag and "198.51.100.3" not in first.client_tag
    async with Launching(hub=hub, bus=h.bus, **{**settings, "token_seal_keys": h.settings.token_seal_keys}) as again:
        await until(lambda: len(warm_servers(hub)) == 1)
        refused = await again.launch(client_ip="198.51.100.3")
        assert refused.failure_cause == "client_quota", "the restarted launcher knows whose it is"
        assert (await again.launch(client_ip="198.51.100.4")).phase is Phase.READY, "control: another client"
