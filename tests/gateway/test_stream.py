"""The /build event stream: BinderHub's protocol, fed from Kafka, with resume and heartbeats."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kilnbus import BusProducer, LaunchRequested, LayerProgress, Phase, PhaseEvent, Topics
from kilnbus.sealing import Sealer

from .conftest import Gateway

pytestmark = pytest.mark.kafka


def full_launch(seal_key: str) -> Any:
    """A cached-miss launch as the services will tell it: every BinderHub phase, plus Kiln's own."""
    sealer = Sealer([seal_key])

    def script(req: LaunchRequested) -> list[PhaseEvent]:
        e = lambda phase, **kw: PhaseEvent(request_id=req.request_id, phase=phase, service="test", **kw)  # noqa: E731
        return [
            e(Phase.ACCEPTED, provider=req.provider, spec=req.spec),
            e(Phase.RESOLVED, ref="a" * 40, repo_url="http://127.0.0.1/r.git"),
            e(Phase.WAITING, message="Waiting for build to start...\n"),
            e(Phase.FETCHING, message="Cloning into '/tmp/repo'...\n"),
            e(Phase.BUILDING, message="Step 1/4 : FROM base\n"),
            e(Phase.PUSHING, message="Pushing image\n",
              progress={"sha256:aa": LayerProgress(current=5, total=10), "sha256:bb": LayerProgress(status="Pushed")}),
            e(Phase.BUILT, message="Built image, launching...\n", image_name="127.0.0.1:5000/kiln/r:abc"),
            e(Phase.LAUNCHING, message="Launching server...\n"),
            e(Phase.READY, message="server running at http://127.0.0.1:8000/user/u/\n", url="http://127.0.0.1:8000/user/u/",
              sealed_token=sealer.seal("the-server-token", request_id=req.request_id, url="http://127.0.0.1:8000/user/u/"),
              image_name="127.0.0.1:5000/kiln/r:abc",
              repo_url="http://127.0.0.1/r.git", ref_url="http://127.0.0.1/r/tree/aaa", provider=req.provider,
              resolved_spec="org/repo/" + "a" * 40),
        ]

    return script


async def test_stream_is_binderhubs_protocol(gateway: Gateway, scripted: Any, seal_key: str) -> None:
    services = await scripted(full_launch(seal_key))
    status, events, headers = await gateway.events("/build/gh/org/repo/main")
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"
    data = [e["data"] for e in events]
    assert [d["phase"] for d in data] == ["waiting", "fetching", "building", "pushing", "built", "launching", "ready"]
    assert data[3]["progress"] == {"sha256:aa": {"current": 5, "total": 10}, "sha256:bb": "Pushed"}
    assert data[4] == {"phase": "built", "message": "Built image, launching...\n", "imageName": "127.0.0.1:5000/kiln/r:abc"}
    ready = data[6]
    assert ready["url"] == "http://127.0.0.1:8000/user/u/" and ready["token"] == "the-server-token"
    assert ready["binder_request"] == "v2/gh/org/repo/main"
    assert ready["binder_persistent_request"] == "v2/gh/org/repo/" + "a" * 40
    assert ready["binder_launch_host"] == gateway.url + "/"
    assert ready["repo_url"] == "http://127.0.0.1/r.git" and ready["binder_ref_url"] == "http://127.0.0.1/r/tree/aaa"
    assert all("id" in e for e in events), "every event carries its place in the log"
    # One launch request was published for the one stream, with what the client asked for.
    assert len(services.requests) == 1
    req = services.requests[0]
    assert (req.provider, req.spec, req.client_ip) == ("gh", "org/repo/main", "127.0.0.1")
    await asyncio.sleep(0.1)
    assert gateway.app.state.router.open_streams == 0, "the route is removed when the stream ends"


async def test_failed_event_ends_the_stream(gateway: Gateway, scripted: Any) -> None:
    await scripted(lambda req: [
        PhaseEvent(request_id=req.request_id, phase=Phase.FAILED, service="resolver", status_code=404,
                   message="Could not resolve ref for gh:org/nope/main.\n", failure_cause="repo_not_found"),
        PhaseEvent(request_id=req.request_id, phase=Phase.BUILDING, service="x", message="never shown\n"),
    ])
    status, events, _ = await gateway.events("/build/gh/org/nope/main")
    assert status == 200
    assert [e["data"] for e in events] == [
        {"phase": "failed", "status_code": 404, "message": "Could not resolve ref for gh:org/nope/main.\n"}]


@pytest.fixture
def gateway_settings(gateway_settings: Any, request: pytest.FixtureRequest) -> Any:
    overrides = getattr(request, "param", {})
    return gateway_settings.model_copy(update=overrides)


@pytest.mark.parametrize("gateway_settings", [{"heartbeat_interval_s": 0.3}], indirect=True)
async def test_idle_stream_sends_heartbeats(gateway: Gateway, scripted: Any) -> None:
    async def slow(req: LaunchRequested) -> list[PhaseEvent]:
        await asyncio.sleep(1.0)
        return [PhaseEvent(request_id=req.request_id, phase=Phase.FAILED, service="t", message="done\n")]

    await scripted(slow)
    _, events, _ = await gateway.events("/build/gh/org/repo/main")
    assert {"comment": ":heartbeat"} in events
    assert events[-1]["data"]["phase"] == "failed"


async def test_reconnect_with_last_event_id_resumes_the_same_launch(
    gateway: Gateway, scripted: Any, producer: BusProducer, topics: Topics, seal_key: str
) -> None:
    """The client drops after 3 events; more happen meanwhile; it reconnects and gets exactly the rest."""
    gate = asyncio.Event()
    script = full_launch(seal_key)

    async def paused(req: LaunchRequested) -> list[PhaseEvent]:
        events = script(req)
        for e in events[:5]:  # accepted, resolved, waiting, fetching, building
            await producer.publish(topics.phase_events, req.request_id, e)
        await gate.wait()  # the client is away now
        return events[5:]

    services = await scripted(paused)
    status, first, _ = await gateway.events("/build/gh/org/repo/main", limit=3)
    assert [e["data"]["phase"] for e in first] == ["waiting", "fetching", "building"]
    gate.set()
    await asyncio.sleep(0.5)
    status, rest, _ = await gateway.events("/build/gh/org/repo/main", headers={"Last-Event-ID": first[-1]["id"]})
    assert status == 200
    assert [e["data"]["phase"] for e in rest] == ["pushing", "built", "launching", "ready"]
    assert rest[-1]["data"]["token"] == "the-server-token"
    assert len(services.requests) == 1, "resuming does not start a second launch"
    # Reconnecting after the end: 204, which tells an EventSource to stop reconnecting.
    status, after, _ = await gateway.events("/build/gh/org/repo/main", headers={"Last-Event-ID": rest[-1]["id"]})
    assert (status, after) == (204, [])


async def test_ready_replayed_into_another_stream_hands_over_no_token(
    gateway: Gateway, scripted: Any, producer: BusProducer, topics: Topics, seal_key: str
) -> None:
    """Someone who can write phase events copies request A's ready event (sealed token and all) into
    request B's stream: B's client gets a failed event, not A's token; A's own client gets it."""
    launched: list[str] = []

    async def script(req: LaunchRequested) -> list[PhaseEvent]:
        launched.append(req.request_id)
        if len(launched) == 1:
            return full_launch(seal_key)(req)[-1:]  # A: its genuine ready event
        first = launched[0]
        genuine = Sealer([seal_key]).seal("token-of-a", request_id=first, url="http://127.0.0.1:8000/user/u/")
        return [PhaseEvent(request_id=req.request_id, phase=Phase.READY, service="launcher",
                           url="http://127.0.0.1:8000/user/u/", sealed_token=genuine)]

    await scripted(script)
    _, a_events, _ = await gateway.events("/build/gh/org/repo/main")
    assert a_events[-1]["data"]["phase"] == "ready" and a_events[-1]["data"]["token"] == "the-server-token"
    _, b_events, _ = await gateway.events("/build/gh/org/repo/main")
    assert b_events[-1]["data"]["phase"] == "failed" and "not sealed for this launch" in b_events[-1]["data"]["message"]
    assert "token-of-a" not in str(b_events)


async def test_resume_with_a_tampered_offset_is_refused(gateway: Gateway, scripted: Any, seal_key: str) -> None:
    await scripted(full_launch(seal_key))
    _, events, _ = await gateway.events("/build/gh/org/repo/main", limit=2)
    rid, partition, offset, issued, holder, signature = events[-1]["id"].split(".")
    for forged in (f"{rid}.{partition}.0.{issued}.{holder}.{signature}",
                   f"{rid}.{(int(partition) + 1) % 3}.{offset}.{issued}.{holder}.{signature}"):
        status, refused, _ = await gateway.events("/build/gh/org/repo/main", headers={"Last-Event-ID": forged})
        assert status == 400 and "not an event id this Kiln issued" in refused[0]["data"]["message"]
    status, rest, _ = await gateway.events("/build/gh/org/repo/main", headers={"Last-Event-ID": events[-1]["id"]})
    assert status in (200, 204)  # the genuine id still resumes (204 once the launch has ended)


@pytest.mark.parametrize("gateway_settings", [{"trusted_proxies": ["127.0.0.0/8"]}], indirect=True)
async def test_resume_from_another_client_is_refused_and_the_launcher_resumes(
    gateway: Gateway, scripted: Any, producer: BusProducer, topics: Topics, seal_key: str
) -> None:
    """Through the real router's replay: an id copied to another client (here: another address behind
    the trusted local proxy) replays nothing; the client that launched resumes and gets its token."""
    gate = asyncio.Event()
    script = full_launch(seal_key)

    async def paused(req: LaunchRequested) -> list[PhaseEvent]:
        events = script(req)
        for e in events[:5]:
            await producer.publish(topics.phase_events, req.request_id, e)
        await gate.wait()
        return events[5:]

    await scripted(paused)
    alice, mallory = {"X-Forwarded-For": "198.51.100.7"}, {"X-Forwarded-For": "198.51.100.8"}
    _, first, _ = await gateway.events("/build/gh/org/repo/main", headers=alice, limit=3)
    gate.set()
    status, stolen, _ = await gateway.events("/build/gh/org/repo/main", headers={**mallory, "Last-Event-ID": first[-1]["id"]})
    assert status == 403 and "another network address" in stolen[0]["data"]["message"]
    assert "the-server-token" not in str(stolen)
    status, rest, _ = await gateway.events("/build/gh/org/repo/main", headers={**alice, "Last-Event-ID": first[-1]["id"]})
    assert status == 200 and rest[-1]["data"]["token"] == "the-server-token"


async def test_forged_or_foreign_event_id_is_refused(gateway: Gateway) -> None:
    for bad in ("0" * 32 + ".0.5." + "f" * 32, "not-an-id", "../../etc"):
        status, events, _ = await gateway.events("/build/gh/org/repo/main", headers={"Last-Event-ID": bad})
        assert status == 400
        assert "not an event id this Kiln issued" in events[0]["data"]["message"]


async def test_concurrent_streams_each_get_only_their_events(gateway: Gateway, scripted: Any) -> None:
    await scripted(lambda req: [
        PhaseEvent(request_id=req.request_id, phase=Phase.BUILDING, service="t", message=f"{req.spec}\n"),
        PhaseEvent(request_id=req.request_id, phase=Phase.FAILED, service="t", message=f"end {req.spec}\n"),
    ])
    results = await asyncio.gather(*(gateway.events(f"/build/gh/org/repo{i}/main") for i in range(30)))
    for i, (status, events, _) in enumerate(results):
        assert [e["data"]["message"] for e in events] == [f"org/repo{i}/main\n", f"end org/repo{i}/main\n"]


async def test_client_that_disconnects_is_cleaned_up(gateway: Gateway, scripted: Any) -> None:
    async def never(req: LaunchRequested) -> list[PhaseEvent]:
        return [PhaseEvent(request_id=req.request_id, phase=Phase.WAITING, service="t", message="queued\n")]

    await scripted(never)
    _, events, _ = await gateway.events("/build/gh/org/repo/main", limit=1)
    assert events[0]["data"]["phase"] == "waiting"
    for _ in range(50):
        if gateway.app.state.router.open_streams == 0:
            break
        await asyncio.sleep(0.1)
    assert gateway.app.state.router.open_streams == 0
