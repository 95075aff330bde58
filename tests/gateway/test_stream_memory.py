"""The /build event stream end to end in memory: the real application and router over a ``MemoryBus``,
with scripted services answering launch requests. No broker: what Kafka adds (real delivery,
partitions on a broker, the Kafka reader's replay) is in test_stream.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kiln_gateway.eventids import EventIds, holder_name
from kiln_gateway.settings import Settings
from kilnbus import LaunchRequested, LayerProgress, MemoryBus, Phase, PhaseEvent
from kilnbus.sealing import Sealer

from .memory import (
    PEER,
    SSE,
    MemoryGateway,
    ScriptedServices,
    answer,
    memory_settings,
    read_events,
    running,
    scripted_services,
)

SERVER = "http://127.0.0.1:8000/user/u/"


def full_launch(seal_key: str, req: LaunchRequested) -> list[PhaseEvent]:
    """A build and launch as the services tell it: every BinderHub phase, plus Kiln's own."""
    def e(phase: Phase, **kw: Any) -> PhaseEvent:
        return PhaseEvent(request_id=req.request_id, phase=phase, service="test", **kw)

    return [
        e(Phase.RESOLVED, ref="a" * 40, repo_url="http://127.0.0.1/r.git"),
        e(Phase.WAITING, message="Waiting for build to start...\n"),
        e(Phase.FETCHING, message="Cloning into '/tmp/repo'...\n"),
        e(Phase.BUILDING, message="Step 1/4 : FROM base\n"),
        e(Phase.PUSHING, message="Pushing image\n",
          progress={"sha256:aa": LayerProgress(current=5, total=10), "sha256:bb": LayerProgress(status="Pushed")}),
        e(Phase.BUILT, message="Built image, launching...\n", image_name="127.0.0.1:5000/kiln/r:abc"),
        e(Phase.LAUNCHING, message="Launching server...\n"),
        e(Phase.READY, message=f"server running at {SERVER}\n", url=SERVER,
          sealed_token=Sealer([seal_key]).seal("the-server-token", request_id=req.request_id, url=SERVER),
          image_name="127.0.0.1:5000/kiln/r:abc", repo_url="http://127.0.0.1/r.git",
          ref_url="http://127.0.0.1/r/tree/aaa", provider=req.provider, resolved_spec="org/repo/" + "a" * 40),
    ]


@pytest.fixture
def settings(seal_key: str, request: pytest.FixtureRequest) -> Settings:
    return memory_settings(seal_key, **getattr(request, "param", {}))


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[MemoryGateway]:
    async with MemoryGateway(settings).started() as gw:
        yield gw


async def test_a_build_request_publishes_its_launch_and_streams_the_phases_in_order(
        gateway: MemoryGateway, seal_key: str, settings: Settings) -> None:
    async with (scripted_services(gateway.bus, answer(lambda req: full_launch(seal_key, req))) as services,
                gateway.client() as c, c.stream("GET", "/build/gh/org/repo/main", headers=SSE) as r):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream") and r.headers["cache-control"] == "no-cache"
        events = await read_events(r)
    data = [e["data"] for e in events]
    assert [d["phase"] for d in data] == ["waiting", "fetching", "building", "pushing", "built", "launching", "ready"]
    assert data[3]["progress"] == {"sha256:aa": {"current": 5, "total": 10}, "sha256:bb": "Pushed"}
    assert data[4] == {"phase": "built", "message": "Built image, launching...\n", "imageName": "127.0.0.1:5000/kiln/r:abc"}
    ready = data[6]
    assert ready["url"] == SERVER and ready["token"] == "the-server-token"
    assert ready["binder_request"] == "v2/gh/org/repo/main"
    assert ready["binder_persistent_request"] == "v2/gh/org/repo/" + "a" * 40
    assert ready["binder_launch_host"] == "http://testserver/" and ready["binder_client_ip"] == PEER
    assert ready["repo_url"] == "http://127.0.0.1/r.git" and ready["binder_ref_url"] == "http://127.0.0.1/r/tree/aaa"
    # One launch request, with what the client asked for, and the accepted event that opens the log.
    (req,) = services.requests
    assert (req.provider, req.spec, req.client_ip, req.build_only) == ("gh", "org/repo/main", PEER, False)
    assert gateway.bus.records(gateway.bus.topics.launch_requested) == [req]
    accepted = gateway.bus.records(gateway.bus.topics.phase_events)[0]
    assert isinstance(accepted, PhaseEvent) and accepted.phase is Phase.ACCEPTED and accepted.request_id == req.request_id
    # Every event id is signed, names the event's place in the log, and belongs to this client.
    ids = EventIds(settings.resume_secret, settings.event_id_lifetime_s)
    positions = [ids.check(e["id"], holder_name(None, PEER)) for e in events]
    assert {p.request_id for p in positions} == {req.request_id}
    assert len({p.partition for p in positions}) == 1
    assert [p.offset for p in positions] == sorted(p.offset for p in positions)
    assert gateway.router.open_streams == 0, "the route is removed when the stream ends"


async def test_failed_ends_the_stream_and_nothing_after_it_is_sent(gateway: MemoryGateway) -> None:
    def events(req: LaunchRequested) -> list[PhaseEvent]:
        return [PhaseEvent(request_id=req.request_id, phase=Phase.FAILED, service="resolver", status_code=404,
                           message="Could not resolve ref for gh:org/nope/main.\n", failure_cause="repo_not_found"),
                PhaseEvent(request_id=req.request_id, phase=Phase.BUILDING, service="x", message="never shown\n")]

    async with scripted_services(gateway.bus, answer(events)):
        status, got = await gateway.events("/build/gh/org/nope/main")
    assert status == 200
    assert [e["data"] for e in got] == [
        {"phase": "failed", "status_code": 404, "message": "Could not resolve ref for gh:org/nope/main.\n"}]
    # Control: the event after it is in the log; the stream ended before it.
    assert [e.phase for e in gateway.bus.records(gateway.bus.topics.phase_events)
            if isinstance(e, PhaseEvent)][-2:] == [Phase.FAILED, Phase.BUILDING]


@pytest.mark.parametrize("settings", [{"heartbeat_interval_s": 0.02}], indirect=True)
async def test_an_idle_stream_sends_heartbeats_until_its_end(gateway: MemoryGateway) -> None:
    gate = asyncio.Event()

    async def slow(req: LaunchRequested) -> list[PhaseEvent]:
        await gate.wait()
        return [PhaseEvent(request_id=req.request_id, phase=Phase.FAILED, service="t", message="done\n")]

    async with (scripted_services(gateway.bus, slow), gateway.client() as c,
                c.stream("GET", "/build/gh/org/repo/main", headers=SSE) as r):
        first = await read_events(r, limit=1)
        assert first == [{"comment": ":heartbeat"}]
        gate.set()
        rest = await read_events(r)
    assert rest[-1]["data"]["phase"] == "failed"


async def test_resume_replays_what_was_missed_then_goes_on_live(gateway: MemoryGateway, seal_key: str) -> None:
    """The client drops after 3 events; 2 more happen meanwhile; it resumes and gets those from the log,
    then the rest live, each once and in order."""
    more, last = asyncio.Event(), asyncio.Event()

    async def paused(req: LaunchRequested) -> list[PhaseEvent]:
        events = full_launch(seal_key, req)
        topic = gateway.bus.topics.phase_events
        for e in events[:4]:  # resolved, waiting, fetching, building
            await gateway.bus.publish(topic, req.request_id, e)
        await more.wait()  # the client is away now
        for e in events[4:6]:  # pushing, built: missed
            await gateway.bus.publish(topic, req.request_id, e)
        await last.wait()
        return events[6:]  # launching, ready: live, after the resume

    async with scripted_services(gateway.bus, paused) as services:
        _, first = await gateway.events(limit=3)
        assert [e["data"]["phase"] for e in first] == ["waiting", "fetching", "building"]
        more.set()
        await wait_for_phase(gateway.bus, Phase.BUILT)
        async with gateway.client() as c, c.stream("GET", "/build/gh/org/repo/main",
                                                   headers={**SSE, "Last-Event-ID": first[-1]["id"]}) as r:
            assert r.status_code == 200
            replayed = await read_events(r, limit=2)
            last.set()
            live = await read_events(r)
        assert [e["data"]["phase"] for e in replayed] == ["pushing", "built"]
        assert [e["data"]["phase"] for e in live] == ["launching", "ready"]
        assert live[-1]["data"]["token"] == "the-server-token"
        assert len(services.requests) == 1, "resuming does not start a second launch"
        # Reconnecting after the end: 204, which tells an EventSource to stop reconnecting.
        status, after = await gateway.events(headers={"Last-Event-ID": live[-1]["id"]})
        assert (status, after) == (204, [])


async def wait_for_phase(bus: MemoryBus, phase: Phase) -> None:
    def seen() -> bool:
        return any(isinstance(e, PhaseEvent) and e.phase is phase for e in bus.records(bus.topics.phase_events))

    async with bus.changed:
        await asyncio.wait_for(bus.changed.wait_for(seen), 5)


async def test_live_events_arriving_during_the_replay_come_after_it_once(gateway: MemoryGateway) -> None:
    """Events published while the replay runs are held back, then delivered after it, without duplicates."""
    rid = "ab" * 16
    topic = gateway.bus.topics.phase_events
    positions = [await gateway.bus.publish(topic, rid, PhaseEvent(request_id=rid, phase=Phase.BUILDING, service="t",
                                                                  message=f"{i}\n")) for i in range(3)]
    sub = gateway.router.subscribe(rid, 100)
    original = gateway.bus.reader

    def reader_publishing_meanwhile(*args: Any, **kwargs: Any) -> Any:
        reader = original(*args, **kwargs)
        start = reader.start

        async def start_then_publish() -> None:
            await start()
            # Past the replay's end: only the router may deliver this one, after the replay.
            await gateway.bus.publish(topic, rid, PhaseEvent(request_id=rid, phase=Phase.BUILDING, service="t",
                                                             message="3\n"))
        reader.start = start_then_publish  # type: ignore[method-assign]
        return reader

    gateway.bus.reader = reader_publishing_meanwhile  # type: ignore[method-assign]
    try:
        seen = await gateway.router.replay(sub, positions[0].partition, positions[0].offset)
    finally:
        gateway.bus.reader = original  # type: ignore[method-assign]
    assert seen is Phase.BUILDING
    got = [(await sub.next(1)) for _ in range(3)]
    assert [item.event.message for item in got if item] == ["1\n", "2\n", "3\n"]
    assert await sub.next(0.01) is None, "each event once"
    gateway.router.unsubscribe(sub)


async def test_a_ready_copied_into_another_stream_hands_over_no_token(gateway: MemoryGateway, seal_key: str) -> None:
    """Someone who can write phase events copies request A's sealed token into request B's stream:
    B's client gets a failed event, not A's token; A's own client gets it (the control)."""
    launched: list[str] = []

    async def script(req: LaunchRequested) -> list[PhaseEvent]:
        launched.append(req.request_id)
        if len(launched) == 1:
            return full_launch(seal_key, req)[-1:]
        stolen = Sealer([seal_key]).seal("token-of-a", request_id=launched[0], url=SERVER)
        return [PhaseEvent(request_id=req.request_id, phase=Phase.READY, service="launcher", url=SERVER,
                           sealed_token=stolen)]

    async with scripted_services(gateway.bus, script):
        _, a = await gateway.events()
        _, b = await gateway.events()
    assert a[-1]["data"]["phase"] == "ready" and a[-1]["data"]["token"] == "the-server-token"
    assert b[-1]["data"]["phase"] == "failed" and "not sealed for this launch" in b[-1]["data"]["message"]
    assert "token-of-a" not in str(b)


async def test_a_resume_with_a_tampered_position_is_refused(gateway: MemoryGateway, seal_key: str) -> None:
    async with scripted_services(gateway.bus, answer(lambda req: full_launch(seal_key, req))):
        _, events = await gateway.events(limit=2)
    rid, partition, offset, issued, holder, signature = events[-1]["id"].split(".")
    for forged in (f"{rid}.{partition}.0.{issued}.{holder}.{signature}",
                   f"{rid}.{(int(partition) + 1) % 3}.{offset}.{issued}.{holder}.{signature}",
                   "0" * 32 + ".0.5." + "f" * 32, "not-an-id"):
        status, refused = await gateway.events(headers={"Last-Event-ID": forged})
        assert status == 400 and "not an event id this Kiln issued" in refused[0]["data"]["message"]
    status, rest = await gateway.events(headers={"Last-Event-ID": events[-1]["id"]})
    assert status == 200, "control: the genuine id resumes"
    assert [e["data"]["phase"] for e in rest] == ["building", "pushing", "built", "launching", "ready"]


@pytest.mark.parametrize("settings", [{"trusted_proxies": ["127.0.0.0/8"]}], indirect=True)
async def test_a_resume_from_another_client_replays_nothing_and_the_launcher_resumes(
        gateway: MemoryGateway, seal_key: str) -> None:
    """Through the router's replay: an id copied to another client (another address behind the trusted
    proxy) is refused; the client that launched resumes and gets its token."""
    gate = asyncio.Event()

    async def paused(req: LaunchRequested) -> list[PhaseEvent]:
        events = full_launch(seal_key, req)
        for e in events[:4]:
            await gateway.bus.publish(gateway.bus.topics.phase_events, req.request_id, e)
        await gate.wait()
        return events[4:]

    alice, mallory = {"X-Forwarded-For": "198.51.100.7"}, {"X-Forwarded-For": "198.51.100.8"}
    async with scripted_services(gateway.bus, paused):
        _, first = await gateway.events(headers=alice, limit=3, peer="127.0.0.1")
        gate.set()
        await wait_for_phase(gateway.bus, Phase.READY)
        status, stolen = await gateway.events(headers={**mallory, "Last-Event-ID": first[-1]["id"]}, peer="127.0.0.1")
        assert status == 403 and "another network address" in stolen[0]["data"]["message"]
        assert "the-server-token" not in str(stolen)
        status, rest = await gateway.events(headers={**alice, "Last-Event-ID": first[-1]["id"]}, peer="127.0.0.1")
        assert status == 200 and rest[-1]["data"]["token"] == "the-server-token"


async def test_concurrent_streams_each_get_only_their_own_events(gateway: MemoryGateway) -> None:
    def events(req: LaunchRequested) -> list[PhaseEvent]:
        return [PhaseEvent(request_id=req.request_id, phase=Phase.BUILDING, service="t", message=f"{req.spec}\n"),
                PhaseEvent(request_id=req.request_id, phase=Phase.FAILED, service="t", message=f"end {req.spec}\n")]

    async with scripted_services(gateway.bus, answer(events)):
        results = await asyncio.gather(*(gateway.events(f"/build/gh/org/repo{i}/main") for i in range(30)))
    for i, (_, got) in enumerate(results):
        assert [e["data"]["message"] for e in got] == [f"org/repo{i}/main\n", f"end org/repo{i}/main\n"]


async def test_a_client_that_disconnects_is_cleaned_up(gateway: MemoryGateway) -> None:
    async def never_ends(req: LaunchRequested) -> list[PhaseEvent]:
        return [PhaseEvent(request_id=req.request_id, phase=Phase.WAITING, service="t", message="queued\n")]

    async with scripted_services(gateway.bus, never_ends):
        async with gateway.client() as c, c.stream("GET", "/build/gh/org/repo/main", headers=SSE) as r:
            assert [e["data"]["phase"] for e in await read_events(r, limit=1)] == ["waiting"]
            assert gateway.router.open_streams == 1, "control: the open stream has its route"
        # Leaving the block disconnected the client and waited for the app to finish the response.
        assert gateway.router.open_streams == 0


async def test_health_reports_the_bus_the_hub_and_the_router(gateway: MemoryGateway) -> None:
    async with scripted_services(gateway.bus, answer(lambda req: [
            PhaseEvent(request_id=req.request_id, phase=Phase.FAILED, service="resolver")])):
        await gateway.events()
        await gateway.bus.drained(ScriptedServices.group)
        async with gateway.client() as c:
            report = (await c.get("/health")).json()
            assert (await c.head("/health")).status_code == 200
    checks = {c["service"]: c for c in report["checks"]}
    assert report["ok"] is True
    assert checks["Kafka"]["groups"]["kiln-resolver"] == {"lag": None, "known": False}
    assert checks["JupyterHub API"]["ok"] is True
    assert "resolver" in checks["Phase router"]["heard_from_s_ago"] and checks["Phase router"]["ok"]


async def test_the_lifespan_closes_every_port(settings: Settings) -> None:
    gw = MemoryGateway(settings)
    ports = gw.app.state.ports
    async with running(gw.app):
        assert gw.router.healthy and not ports.hub_http.is_closed
    assert not gw.router.healthy and ports.hub_http.is_closed and ports.group_lag.closed


async def test_a_resume_the_log_cannot_serve_says_so_without_kafkas_details(
        gateway: MemoryGateway, seal_key: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from aiokafka.errors import KafkaError

    async with scripted_services(gateway.bus, answer(lambda req: full_launch(seal_key, req))):
        _, events = await gateway.events(limit=2)

    async def unreachable(*_: Any, **__: Any) -> None:
        raise KafkaError("no leader for kiln.phase-events-2 at kafka-0.kiln.internal:9092")

    monkeypatch.setattr(gateway.router, "replay", unreachable)
    status, refused = await gateway.events(headers={"Last-Event-ID": events[-1]["id"]})
    assert status == 503
    assert refused[0]["data"]["message"] == "Cannot resume this stream right now; please try again shortly.\n"
    assert "kafka-0.kiln.internal" in caplog.text, "control: the details are in the log"
    monkeypatch.undo()
    status, _ = await gateway.events(headers={"Last-Event-ID": events[-1]["id"]})
    assert status == 200, "control: the log serving again, the same id resumes"
