"""Fakes of the builder's ports for the fast tier: an executor, the registry behind it, a git fetcher;
and a harness that runs the real ``Builder`` behind its ``Routes`` on a ``MemoryBus``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln_builder.errors import BuildFailed, FetchFailed
from kiln_builder.executor import LineSink, ProgressSink
from kiln_builder.handler import Builder
from kiln_builder.service import GROUP, SERVE_OPTIONS, routes
from kiln_builder.settings import Settings
from kilnbus import (
    BuildRequested,
    HubLaunchRequested,
    MemoryBus,
    Phase,
    PhaseEvent,
    PhaseReporter,
    Position,
    Record,
    Topic,
    serve,
)

FINAL = (Phase.BUILT, Phase.FAILED)


class FakeRegistry:
    """Images pushed, by name; what a pull finds."""

    def __init__(self) -> None:
        self.images: dict[str, str] = {}  # image -> the Dockerfile it was built from
        self.pushes: list[str] = []


@dataclass
class BuildCall:
    """What the executor was asked to build."""

    tag: str
    dockerfile: str
    files: dict[str, str]  # the context: relative path -> content (or "<dir>")
    options: dict[str, Any]


def snapshot(context: dict[str, bytes] | Path) -> dict[str, str]:
    if isinstance(context, Path):
        return {p.relative_to(context).as_posix(): ("<dir>" if p.is_dir() else p.read_text(errors="replace"))
                for p in sorted(context.rglob("*"))}
    return {name: data.decode(errors="replace") for name, data in context.items()}


class FakeExecutor:
    """Records every build (Dockerfile and context), prints ``log_lines`` through it, and can be told
    to fail a build (``fail[tag]``), hold it until an event is set (``gates[tag]``) or hang (``hang``)."""

    def __init__(self, registry: FakeRegistry) -> None:
        self.registry = registry
        self.local: set[str] = set()
        self.builds: list[BuildCall] = []
        self.log_lines: list[str] = ["Step 1/2 : FROM base\n", "Step 2/2 : RUN make\n"]
        self.fail: dict[str, BuildFailed] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.hang: set[str] = set()
        self.started: set[str] = set()
        self.interrupted: set[str] = set()
        self.onbuild: dict[str, list[str]] = {}
        self.closed = False

    def built(self, tag: str) -> list[BuildCall]:
        return [b for b in self.builds if b.tag == tag]

    async def build(self, context: dict[str, bytes] | Path, dockerfile: str, tag: str, on_line: LineSink,
                    buildargs: dict[str, str] | None = None, timeout_s: float = 3600,
                    extra_files: dict[str, bytes] | None = None, labels: dict[str, str] | None = None,
                    subdir: str = "") -> None:
        self.builds.append(BuildCall(tag, dockerfile, snapshot(context), {
            "buildargs": buildargs, "timeout_s": timeout_s, "extra_files": sorted(extra_files or {}), "labels": labels,
            "subdir": subdir}))
        self.started.add(tag)
        try:
            for line in self.log_lines:
                await on_line(line)
            if tag in self.gates:
                await self.gates[tag].wait()
            if tag in self.hang:
                await asyncio.Event().wait()  # an engine that never answers again
        except asyncio.CancelledError:
            self.interrupted.add(tag)
            raise
        if tag in self.fail:
            raise self.fail[tag]
        self.local.add(tag)  # on this builder; in the registry once pushed

    async def push(self, image: str, on_progress: ProgressSink) -> None:
        if image not in self.local:
            raise BuildFailed(f"Pushing the image to the registry failed: {image} is not on this builder", "push_failed")
        await on_progress({"id": "layer1", "status": "Pushing", "progressDetail": {"current": 1, "total": 2}})
        await on_progress({"id": "layer1", "status": "Pushed", "progressDetail": {}})
        self.registry.images[image] = next((b.dockerfile for b in reversed(self.builds) if b.tag == image), "")
        self.registry.pushes.append(image)

    async def has_image(self, image: str) -> bool:
        return image in self.local

    async def pull(self, image: str) -> bool:
        if image in self.registry.images:
            self.local.add(image)
            return True
        return False

    async def onbuild_triggers(self, image: str, kiln_registry: bool) -> list[str]:
        return self.onbuild.get(image, [])

    async def aclose(self) -> None:
        self.closed = True


class FakeFetcher:
    """Repositories as files in memory, by (URL, ref); anything else is not found, as git would say."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], dict[str, str]] = {}
        self.fetches: list[tuple[str, str]] = []

    async def fetch(self, repo_url: str, ref: str, dest: Path, on_line: LineSink, content: str = "git") -> None:
        self.fetches.append((repo_url, ref))
        await on_line(f"Picked Git content provider.\nFetching {repo_url} at {ref}\n")
        files = self.repos.get((repo_url, ref))
        if files is None:
            raise FetchFailed(f"Commit {ref} is not in {repo_url}.", "fetch_failed")
        for name, text in files.items():
            path = dest / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)


class LossyPublisher:
    """The bus, with sends that do not wait (as a BusProducer's); the next send for a key in
    ``lose_for`` is lost: its acknowledgement fails. A key in ``hold_after`` has that many sends
    go through, then the next ones wait (as a slow or full producer would) until ``released`` is set."""

    def __init__(self, bus: MemoryBus) -> None:
        self.bus = bus
        self.lose_for: set[str] = set()
        self.hold_after: dict[str, int] = {}
        self.released = asyncio.Event()

    async def publish(self, topic: Topic, key: str | None, record: Record) -> Any:
        return await self.bus.publish(topic, key, record)

    async def send(self, topic: Topic, key: str | None, record: Record) -> asyncio.Future[Any]:
        ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if key in self.hold_after:
            if self.hold_after[key] > 0:
                self.hold_after[key] -= 1
            else:
                await self.released.wait()
        if key in self.lose_for:
            self.lose_for.discard(key)
            ack.set_exception(ConnectionResetError(f"send for {key} lost"))
        else:
            ack.set_result(await self.bus.publish(topic, key, record))
        return ack


@dataclass
class BuilderHarness:
    """The builder served on a MemoryBus with fake ports; requests in, events and launches out."""

    bus: MemoryBus
    builder: Builder
    executor: FakeExecutor
    registry: FakeRegistry
    fetcher: FakeFetcher
    publisher: LossyPublisher
    group: str
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    counter: list[int] = field(default_factory=lambda: [0])
    positions: dict[str, Position] = field(default_factory=dict)

    async def stop_serving(self) -> None:
        """The consumer stops as on SIGTERM: handlers still waiting after the grace are cancelled."""
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 15)

    def repo(self, files: dict[str, str]) -> tuple[str, str]:
        """A repository the fake fetcher serves: (URL, ref)."""
        self.counter[0] += 1
        url, ref = f"https://git.example.org/r{self.counter[0]}", f"{self.counter[0]:040x}"
        self.fetcher.repos[(url, ref)] = files
        return url, ref

    async def request(self, url: str, ref: str, image: str | None = None, launch: bool = True,
                      request_id: str | None = None) -> BuildRequested:
        """Publish a build request, keyed by its image as the resolver does; where it landed is in ``positions``."""
        self.counter[0] += 1
        request = BuildRequested(request_id=request_id or f"req-{self.counter[0]}",
                                 image_name=image or f"reg.example.org/binder-r:{ref}", repo_url=url, ref=ref,
                                 provider="git", spec=f"{url}/{ref}", launch=launch)
        self.positions[request.request_id] = await self.bus.publish(self.bus.topics.build_requested, request.image_name,
                                                                    request)
        return request

    def events(self, request_id: str) -> list[PhaseEvent]:
        return [r for r in self.bus.records(self.bus.topics.phase_events)
                if isinstance(r, PhaseEvent) and r.request_id == request_id]

    def final(self, request_id: str) -> PhaseEvent | None:
        return next((e for e in reversed(self.events(request_id)) if e.phase in FINAL), None)

    def launches(self) -> list[HubLaunchRequested]:
        return [r for r in self.bus.records(self.bus.topics.hub_launch_requested) if isinstance(r, HubLaunchRequested)]

    def log(self, request_id: str) -> str:
        return "".join(e.message for e in self.events(request_id) if e.phase in (Phase.FETCHING, Phase.BUILDING))

    async def until(self, condition: Callable[[], bool], what: str, timeout: float = 5) -> None:
        """Wait until ``condition`` holds, woken by every change on the bus (no polling, no sleeps)."""
        async with self.bus.changed:
            try:
                await asyncio.wait_for(self.bus.changed.wait_for(condition), timeout)
            except TimeoutError:
                raise AssertionError(f"timed out waiting for {what}") from None

    async def outcome(self, request_id: str) -> PhaseEvent:
        await self.until(lambda: self.final(request_id) is not None, f"the outcome of {request_id}")
        final = self.final(request_id)
        assert final is not None
        return final

    async def drained(self) -> None:
        await self.bus.drained(self.group, timeout=5)


@asynccontextmanager
async def served(tmp_path: Path, **overrides: Any) -> AsyncIterator[BuilderHarness]:
    """A builder on a MemoryBus, served through its Routes until the block ends."""
    values: dict[str, Any] = {"work_dir": str(tmp_path), "concurrent_builds": 2, "metrics_port": None,
                              "base_image": "127.0.0.1:5000/kiln/base:latest", "env_image_prefix": "127.0.0.1:5000/kiln/env",
                              "build_timeout_s": 60, **overrides}
    settings = Settings(**values)
    bus = MemoryBus(settings)
    await bus.start()
    registry = FakeRegistry()
    executor, fetcher, publisher = FakeExecutor(registry), FakeFetcher(), LossyPublisher(bus)
    builder = Builder(settings, PhaseReporter(publisher, bus.topics, "builder"), bus.topics, executor, fetcher,
                      executor_grace_s=0)
    harness = BuilderHarness(bus, builder, executor, registry, fetcher, publisher, settings.group_id(GROUP))
    # A short grace: a test that stops the builder mid-build should not wait the service's 10 s.
    options = {**SERVE_OPTIONS, "shutdown_grace_s": 0.1}
    harness.task = asyncio.create_task(serve(bus, GROUP, routes(bus.topics, builder), harness.stop, **options))
    try:
        yield harness
    finally:
        await harness.stop_serving()
        await builder.aclose()
        await bus.stop()
