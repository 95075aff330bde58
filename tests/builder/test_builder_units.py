"""The builder's handler and build queue in memory (a fake producer and executor; no Kafka, no Docker):
each build's log-line sends are its own, and every build has an owner that stops it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from kilnbus import BuildRequested, Delivery, HubLaunchRequested, Phase, PhaseEvent, Record, Topics

from kiln_builder.handler import Builder
from kiln_builder.settings import Settings


class SendFailed(Exception):
    """What the broker's acknowledgement of a lost send raises."""


class FakeProducer:
    """Keeps what is published; a send for a request in ``fail_sends_for`` fails (once acknowledged)."""

    def __init__(self) -> None:
        self.published: list[Record] = []
        self.fail_sends_for: set[str] = set()

    async def send(self, topic: Any, key: str, record: Record) -> asyncio.Future[None]:
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if key in self.fail_sends_for:
            self.fail_sends_for.discard(key)
            ack.set_exception(SendFailed(f"send for {key} lost"))
        else:
            ack.set_result(None)
        self.published.append(record)
        return ack

    async def publish(self, topic: Any, key: str, record: Record) -> None:
        self.published.append(record)

    def phases(self, request_id: str) -> list[PhaseEvent]:
        return [r for r in self.published if isinstance(r, PhaseEvent) and r.request_id == request_id]

    def final(self, request_id: str) -> PhaseEvent | None:
        return next((e for e in reversed(self.phases(request_id)) if e.phase in (Phase.BUILT, Phase.FAILED)), None)


class FakeExecutor:
    """Every image is on this builder already (so a build is: say so, push); ``gates`` hold a build's
    first step until set, and ``interrupted`` records builds cancelled there."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.waiting: set[str] = set()
        self.interrupted: set[str] = set()
        self.closed = False

    async def has_image(self, image: str) -> bool:
        if image in self.gates:
            self.waiting.add(image)
            try:
                await self.gates[image].wait()
            except asyncio.CancelledError:
                self.interrupted.add(image)
                raise
        return True

    async def push(self, image: str, on_progress: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        return None

    async def aclose(self) -> None:
        self.closed = True


def make_builder(tmp_path: Path) -> tuple[Builder, FakeProducer, FakeExecutor]:
    producer, executor = FakeProducer(), FakeExecutor()
    settings = Settings(work_dir=str(tmp_path), concurrent_builds=4)
    return Builder(settings, producer, Topics("t."), executor), producer, executor  # type: ignore[arg-type]


def delivery(image: str) -> Delivery[BuildRequested]:
    rid = uuid.uuid4().hex
    req = BuildRequested(request_id=rid, image_name=image, repo_url="https://example.org/r", ref="a" * 40,
                         provider="git", spec="x")
    return Delivery("t.build-requested", 0, 0, image, req, 0)


async def until(condition: Callable[[], bool], what: str, timeout: float = 5) -> None:
    """Wait for ``condition`` on the event loop (no fixed sleeps)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0)
    assert condition(), what


async def test_a_failed_send_fails_its_own_build_and_no_other(tmp_path: Path) -> None:
    builder, producer, executor = make_builder(tmp_path)
    a, b = delivery("reg/a:1"), delivery("reg/b:1")
    producer.fail_sends_for.add(a.value.request_id)  # a's first log line (its queue position) is lost
    executor.gates["reg/a:1"] = asyncio.Event()  # a waits, holding its failed send, while b builds
    handle_a = asyncio.create_task(builder.handle(a))
    await until(lambda: "reg/a:1" in executor.waiting, "a's build started")
    await builder.handle(b)
    b_final = producer.final(b.value.request_id)
    assert b_final is not None and b_final.phase is Phase.BUILT, b_final
    assert [r.request_id for r in producer.published if isinstance(r, HubLaunchRequested)] == [b.value.request_id]
    # Positive control: the lost send is not ignored; it fails the build it belonged to.
    executor.gates["reg/a:1"].set()
    await handle_a
    a_final = producer.final(a.value.request_id)
    assert a_final is not None and (a_final.phase, a_final.failure_cause) == (Phase.FAILED, "internal_error")
    assert not any(isinstance(r, HubLaunchRequested) and r.request_id == a.value.request_id for r in producer.published)


async def test_aclose_cancels_and_awaits_every_build(tmp_path: Path) -> None:
    builder, _, executor = make_builder(tmp_path)
    executor.gates["reg/a:1"] = asyncio.Event()
    handle = asyncio.create_task(builder.handle(delivery("reg/a:1")))
    await until(lambda: "reg/a:1" in executor.waiting, "the build started")
    assert builder.builds.active == 1 and not executor.interrupted, "control: running until stopped"
    await builder.aclose()
    assert executor.interrupted == {"reg/a:1"} and executor.closed
    assert builder.builds.active == 0
    await asyncio.wait([handle], timeout=5)
    assert handle.cancelled(), "the request's handler ends too (its record is delivered again)"


async def test_a_build_no_handler_waits_for_is_stopped_with_the_last_one(tmp_path: Path) -> None:
    builder, producer, executor = make_builder(tmp_path)
    executor.gates["reg/a:1"] = asyncio.Event()
    first, second = delivery("reg/a:1"), delivery("reg/a:1")
    handles = [asyncio.create_task(builder.handle(first))]
    await until(lambda: "reg/a:1" in executor.waiting, "the build started")
    handles.append(asyncio.create_task(builder.handle(second)))
    await until(lambda: any(e.phase is Phase.WAITING for e in producer.phases(second.value.request_id)), "attached")
    # The consumer stops: it cancels one handler, and the build goes on for the other (control) ...
    handles[0].cancel()
    await asyncio.wait([handles[0]])
    assert not executor.interrupted
    # ... then the other: the build is cancelled, and has ended by the time the handler has.
    handles[1].cancel()
    await asyncio.wait([handles[1]])
    assert executor.interrupted == {"reg/a:1"} and builder.builds.active == 0
