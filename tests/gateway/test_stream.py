"""The /build event stream over the real broker: what Kafka itself adds to the stream.

Delivery through Kafka partitions to the router's group-less reader, and a resume replayed by the
Kafka log reader from the offset an event id names. Everything else about the stream (phases and
their order, failed and ready ending it, heartbeats, sealed tokens, refused resumes, cleanup) is
the gateway's own logic and is tested in memory, in test_stream_memory.py.
"""

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
        e = lambda phase, **kw: PhaseEvent(request_id=req.request_id, phase=phase, service="test", **kw)
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
    # The route goes before the response's last chunk, so it is gone once the client saw the end.
    assert gateway.app.state.router.open_streams == 0, "the route is removed when the stream ends"


async def test_reconnect_with_last_event_id_resumes_the_same_launch(
    gateway: Gateway, scripted: Any, producer: BusProducer, topics: Topics, seal_key: str
) -> None:
    """The client drops after 3 events; more happen meanwhile; it reconnects and gets exactly the rest."""
    gate, published = asyncio.Event(), asyncio.Event()
    script = full_launch(seal_key)

    async def paused(req: LaunchRequested) -> list[PhaseEvent]:
        events = script(req)
        for e in events[:5]:  # accepted, resolved, waiting, fetching, building
            await producer.publish(topics.phase_events, req.request_id, e)
        await gate.wait()  # the client is away now
        for e in events[5:]:
            await producer.publish(topics.phase_events, req.request_id, e)
        published.set()
        return []

    services = await scripted(paused)
    status, first, _ = await gateway.events("/build/gh/org/repo/main", limit=3)
    assert [e["data"]["phase"] for e in first] == ["waiting", "fetching", "building"]
    gate.set()
    await asyncio.wait_for(published.wait(), 30)  # all acknowledged: the resume misses nothing
    status, rest, _ = await gateway.events("/build/gh/org/repo/main", headers={"Last-Event-ID": first[-1]["id"]})
    assert status == 200
    assert [e["data"]["phase"] for e in rest] == ["pushing", "built", "launching", "ready"]
    assert rest[-1]["data"]["token"] == "the-server-token"
    assert len(services.requests) == 1, "resuming does not start a second launch"
    # Reconnecting after the end: 204, which tells an EventSource to stop reconnecting.
    status, after, _ = await gateway.events("/build/gh/org/repo/main", headers={"Last-Event-ID": rest[-1]["id"]})
    assert (status, after) == (204, [])


async def test_concurrent_streams_each_get_only_their_events(gateway: Gateway, scripted: Any) -> None:
    await scripted(lambda req: [
        PhaseEvent(request_id=req.request_id, phase=Phase.BUILDING, service="t", message=f"{req.spec}\n"),
        PhaseEvent(request_id=req.request_id, phase=Phase.FAILED, service="t", message=f"end {req.spec}\n"),
    ])
    results = await asyncio.gather(*(gateway.events(f"/build/gh/org/repo{i}/main") for i in range(30)))
    for i, (status, events, _) in enumerate(results):
        assert [e["data"]["message"] for e in events] == [f"org/repo{i}/main\n", f"end org/repo{i}/main\n"]
