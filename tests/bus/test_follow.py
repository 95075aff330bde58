"""LogFollower on the in-memory bus: a projection replays the log, then follows it; a service waits for the replay."""

from __future__ import annotations

import asyncio

from kilnbus import LogFollower, MemoryBus, Phase, PhaseEvent, Record


def event(rid: str) -> PhaseEvent:
    return PhaseEvent(request_id=rid, phase=Phase.WAITING, service="test")


async def test_a_follower_replays_the_log_then_follows_it() -> None:
    bus = MemoryBus(partitions=3)
    for rid in ("a", "b", "c"):
        await bus.publish(bus.topics.phase_events, rid, event(rid))
    seen: list[Record] = []
    follower = LogFollower(bus, bus.topics.phase_events, seen.append)
    await follower.start()
    try:
        assert await asyncio.wait_for(follower.wait_caught_up(asyncio.Event()), 5) is True
        assert sorted(e.request_id for e in seen if isinstance(e, PhaseEvent)) == ["a", "b", "c"]
        await bus.publish(bus.topics.phase_events, "d", event("d"))
        async with asyncio.timeout(5):
            while len(seen) < 4:
                await asyncio.sleep(0)
    finally:
        await follower.stop()


async def test_waiting_for_the_replay_ends_at_a_stop_and_leaves_no_task_behind() -> None:
    bus = MemoryBus()
    follower = LogFollower(bus, bus.topics.phase_events, lambda record: None)  # never started: never caught up
    stop = asyncio.Event()
    waiting = asyncio.create_task(follower.wait_caught_up(stop))
    await asyncio.sleep(0)
    assert not waiting.done(), "control: it waits while neither has happened"
    before = asyncio.all_tasks()
    stop.set()
    assert await asyncio.wait_for(waiting, 1) is False
    assert not [t for t in before if not t.done() and t is not asyncio.current_task()], \
        "its own waits were cancelled and awaited"
