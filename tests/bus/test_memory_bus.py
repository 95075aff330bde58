"""What only the in-memory bus can show cheaply: groups splitting partitions, handing over unfinished
records, commit-after-publish, draining, and serve() over a Routes table. No infrastructure."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from kilnbus import (
    BadRequest,
    BuildRequested,
    Delivery,
    HubLaunchRequested,
    KilnError,
    LaunchRequested,
    MemoryBus,
    Outgoing,
    Phase,
    PhaseEvent,
    PhaseReporter,
    Record,
    Routes,
    TooManyRequests,
    Topic,
    TransientError,
    Unavailable,
    is_transient,
    serve,
)
from kilnbus.errors import Forbidden, InternalError, NotFound

from .bus_support import Collector, running


def event(rid: str) -> PhaseEvent:
    return PhaseEvent(request_id=rid, phase=Phase.WAITING, service="test")


async def test_two_members_split_the_partitions_and_handle_each_record_once() -> None:
    bus = MemoryBus(partitions=4)
    topic = bus.topics.phase_events
    seen: Collector[tuple[str, int, str]] = Collector()

    def handler(member: str) -> Any:
        async def handle(d: Delivery[PhaseEvent]) -> None:
            await seen.add((member, d.partition, d.value.request_id))
        return handle

    async with running(bus, "g", Routes({topic: handler("a")})), running(bus, "g", Routes({topic: handler("b")})):
        for i in range(40):
            await bus.publish(topic, f"k{i}", event(f"e{i}"))
        await bus.drained("g")
    assert sorted(rid for _, _, rid in seen.items) == sorted(f"e{i}" for i in range(40)), "each once"
    parts = {member: {p for m, p, _ in seen.items if m == member} for member in ("a", "b")}
    assert parts["a"] and parts["b"], "both members worked"
    assert not parts["a"] & parts["b"], "a partition belongs to one member"


async def test_a_member_stopping_mid_record_hands_it_to_the_other() -> None:
    bus = MemoryBus(partitions=1)  # one partition: a record can only reach the other member by being handed over
    topic = bus.topics.phase_events
    entered = asyncio.Event()
    first_calls: list[str] = []
    second: Collector[str] = Collector()

    async def stuck(d: Delivery[PhaseEvent]) -> None:
        first_calls.append(d.value.request_id)
        if d.value.request_id == "slow":
            entered.set()
            await asyncio.Event().wait()  # never finishes: cancelled when its member stops

    async def fine(d: Delivery[PhaseEvent]) -> None:
        await second.add(d.value.request_id)

    for rid in ("done", "slow", "next"):
        await bus.publish(topic, "k", event(rid))
    first = bus.consumer("g", Routes({topic: stuck}), shutdown_grace_s=0.05)
    await first.start()
    stop_first = asyncio.Event()
    first_task = asyncio.create_task(first.run(stop_first))
    await asyncio.wait_for(entered.wait(), 5)
    assert bus.committed("g") == {(topic.name, 0): 1}, "'done' committed, not past 'slow' in hand"
    async with running(bus, "g", Routes({topic: fine})):
        stop_first.set()
        await asyncio.wait_for(first_task, 5)
        await second.wait(lambda items: items == ["slow", "next"], what="the unfinished record, redelivered")
    assert first_calls == ["done", "slow"], "the member that stopped started nothing after it"
    assert first.handled == 1 and first.dead_lettered == 0
    assert bus.committed("g") == {(topic.name, 0): 3}


async def test_a_record_counts_as_handled_only_once_what_its_handler_returned_is_published() -> None:
    release = asyncio.Event()

    class SlowBus(MemoryBus):
        async def publish(self, topic: Topic, key: str | None, record: Record) -> Any:
            if topic is self.topics.build_requested:
                await release.wait()  # a broker slow to acknowledge
            return await super().publish(topic, key, record)

    bus = SlowBus(partitions=1)
    build = BuildRequested(request_id="r", image_name="reg/i:1", repo_url="https://x/y", ref="a" * 40, provider="gh",
                           spec="o/r/HEAD")
    returned = asyncio.Event()

    async def handle(d: Delivery[LaunchRequested]) -> list[Outgoing]:
        returned.set()
        return [Outgoing(bus.topics.build_requested, build.image_name, build)]

    await bus.publish(bus.topics.launch_requested, "r", LaunchRequested(request_id="r", provider="gh", spec="o/r/HEAD"))
    async with running(bus, "g", Routes({bus.topics.launch_requested: handle})):
        await asyncio.wait_for(returned.wait(), 5)
        assert bus.committed("g").get((bus.topics.launch_requested.name, 0), 0) == 0, "not handled while unpublished"
        release.set()
        await bus.drained("g")
    assert bus.committed("g")[(bus.topics.launch_requested.name, 0)] == 1  # control: handled once published
    assert bus.records(bus.topics.build_requested) == [build]


async def test_serve_runs_a_routes_table_and_each_handler_sees_its_own_topic() -> None:
    bus = MemoryBus()
    seen: Collector[tuple[str, str]] = Collector()

    async def on_launch(d: Delivery[LaunchRequested]) -> None:
        await seen.add(("launch", type(d.value).__name__))

    async def on_event(d: Delivery[PhaseEvent]) -> None:
        await seen.add(("event", type(d.value).__name__))

    routes = Routes({bus.topics.launch_requested: on_launch, bus.topics.phase_events: on_event})
    assert routes.topics == [bus.topics.launch_requested, bus.topics.phase_events]
    stop = asyncio.Event()
    served = asyncio.create_task(serve(bus, "kiln-test", routes, stop))
    await bus.publish(bus.topics.launch_requested, "r", LaunchRequested(request_id="r", provider="gh", spec="o/r/HEAD"))
    await bus.publish(bus.topics.phase_events, "r", event("r"))
    await seen.wait(lambda items: len(items) == 2)
    await bus.drained("kiln-test")
    stop.set()
    await asyncio.wait_for(served, 5)
    assert sorted(seen.items) == [("event", "PhaseEvent"), ("launch", "LaunchRequested")]


async def test_drained_waits_for_the_group_and_times_out_when_it_cannot_finish() -> None:
    bus = MemoryBus(partitions=1)
    gate = asyncio.Event()

    async def gated(d: Delivery[PhaseEvent]) -> None:
        await gate.wait()

    await bus.publish(bus.topics.phase_events, "k", event("e"))
    async with running(bus, "g", Routes({bus.topics.phase_events: gated})):
        with pytest.raises(TimeoutError):
            await bus.drained("g", timeout=0.2)
        gate.set()
        await bus.drained("g", timeout=5)  # control: the same wait succeeds once the handler can finish


# -- the error tree -------------------------------------------------------------------------------

def test_errors_carry_cause_status_and_retriability() -> None:
    expected = {BadRequest: ("bad_request", 400, False), NotFound: ("not_found", 404, False),
                Forbidden: ("forbidden", 403, False), TooManyRequests: ("quota", 429, False),
                Unavailable: ("unavailable", 503, True), InternalError: ("internal_error", 500, False)}
    for cls, (cause, status, retriable) in expected.items():
        err = cls("words for the user")
        assert (err.cause, err.status, err.retriable, err.message) == (cause, status, retriable, "words for the user")
        assert is_transient(err) is retriable
    custom = BadRequest("no such ref", cause="ref_not_found", status=404)
    assert (custom.cause, custom.status, custom.retriable) == ("ref_not_found", 404, False)
    assert BadRequest("x").cause == "bad_request", "an instance's override does not leak into the class"
    assert is_transient(KilnError("x", retriable=True)) and not is_transient(Unavailable("x", retriable=False))
    assert isinstance(TransientError(), Unavailable) and is_transient(TransientError("hub away"))


# -- records and the reporter ---------------------------------------------------------------------

def test_hub_launch_requested_from_build_copies_every_field_it_shares() -> None:
    build = BuildRequested(request_id="r", image_name="reg/i:1", repo_url="https://x/y", ref="a" * 40, provider="gh",
                           spec="o/r/HEAD", ref_url="https://x/y/tree/a", resolved_spec="o/r/aaaa", launch=False,
                           hub_user="u", launch_host="h", client_ip="10.0.0.1")
    launch = HubLaunchRequested.from_build(build)
    shared = {f.name for f in dataclasses.fields(HubLaunchRequested)}
    assert shared <= {f.name for f in dataclasses.fields(BuildRequested)}
    assert all(getattr(launch, name) == getattr(build, name) for name in shared)


async def test_the_reporter_stamps_service_provider_and_spec() -> None:
    bus = MemoryBus()
    reporter = PhaseReporter(bus, bus.topics, "builder")
    req = LaunchRequested(request_id="r", provider="gh", spec="o/r/HEAD")
    out = reporter.event(req, Phase.BUILDING, message="step 1\n")
    assert out.topic is bus.topics.phase_events and out.key == "r"
    sent = await reporter.report(req, Phase.FAILED, message="no\n", failure_cause="x", status_code=400)
    bare = await reporter.report("r2", Phase.STOPPED, server_name="s")
    assert bus.records(bus.topics.phase_events) == [sent, bare]
    assert (sent.service, sent.provider, sent.spec, sent.failure_cause) == ("builder", "gh", "o/r/HEAD", "x")
    assert (bare.request_id, bare.provider, bare.server_name) == ("r2", None, "s")
