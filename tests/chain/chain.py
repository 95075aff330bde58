"""The whole of Kiln in one process, on one ``MemoryBus``: the map of a launch from click to server.

Each service runs as its entry point runs it, only on another bus and with other ports:

    client --GET /build/gh/...--> gateway (kiln_gateway.app over its memory ports, tests/gateway/memory.py)
      --launch-requested--> resolver (kiln_resolver.bootstrap.run_on; its real GitHub provider asks a loopback git host)
      --build-requested--> builder (kiln_builder.bootstrap.run_on; the real git fetcher, buildpacks and queue,
                                    a fake executor and registry: tests/builder/fakes.py)
      --hub-launch-requested--> launcher (kiln_launcher.bootstrap.run_on; a fake hub: tests/support/hub.py)
      --phase-events--> the gateway's router (the client's SSE stream), analytics' fold, kilnbus.servers

Only what lies outside Kiln is faked: the git host is a real git server on 127.0.0.1 with a
stand-in of GitHub's API answered from its repositories (tests/support/githost.py), the image
registry and the Docker engine are ``FakeRegistry`` and ``FakeExecutor``, JupyterHub's API is
``FakeHub``. Everything else (the handlers, their ``Routes``, the dispatcher's failed events, the
projections, the token sealing, the event ids) is the code that runs in production, so a test here
follows a request through every service.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette

from kiln_builder.bootstrap import make_fetcher, run_on
from kiln_builder.handler import Builder
from kiln_builder.settings import Settings as BuilderSettings
from kiln_gateway.projection import CLIENT_PHASES
from kiln_gateway.settings import Settings as GatewaySettings
from kiln_launcher.bootstrap import run_on as run_launcher
from kiln_launcher.settings import Settings as LauncherSettings
from kiln_resolver.bootstrap import run_on as run_resolver
from kiln_resolver.handler import Resolver
from kiln_resolver.images import image_name, split_image
from kiln_resolver.providers import make_providers
from kiln_resolver.running import RunningServers
from kiln_resolver.settings import Settings as ResolverSettings
from kilnbus import (
    BuildRequested,
    BusSettings,
    HubLaunchRequested,
    LaunchRequested,
    MemoryBus,
    PhaseEvent,
    PhaseReporter,
    Topic,
)
from kilnbus.sealing import new_key

from ..builder.fakes import FakeExecutor, FakeRegistry
from ..gateway.memory import StreamingASGITransport, memory_app, read_events, running
from ..support.githost import GitHost, git, make_repo, start_githost
from ..support.hub import FakeHub

SSE = {"Accept": "text/event-stream"}
PEER = "203.0.113.50"  # the client's address, as the gateway sees it
HUB_PUBLIC = "http://127.0.0.1:8000"  # where the launcher says servers are (nothing listens: the hub is fake)
IMAGE_PREFIX = "127.0.0.1:5000/kiln/binder-"
OWNER, REPO = "org", "demo"
FOLLOWS = "Another launch is already building this image"  # kiln_builder.builds, to a request that attaches
REQUESTS = (LaunchRequested, BuildRequested, HubLaunchRequested)


class ResolverRegistry:
    """The registry as the resolver asks it (``image_exists``), over the store the fake executor pushes
    to: one registry for both services, so an image the builder pushed is a cache hit for the next launch."""

    def __init__(self, store: FakeRegistry) -> None:
        self.store = store

    async def image_exists(self, repository: str, tag: str) -> bool:
        return any(split_image(name)[1:] == (repository, tag) for name in self.store.images)

    async def aclose(self) -> None:
        pass


@dataclass
class Stream:
    """One client's event stream, read to its end (or as far as the test asked)."""

    status: int
    events: list[dict[str, Any]]  # {"id", "data"} per SSE event; heartbeats left out

    @property
    def data(self) -> list[dict[str, Any]]:
        return [e["data"] for e in self.events]

    @property
    def phases(self) -> list[str]:
        return [d["phase"] for d in self.data]

    @property
    def request_id(self) -> str:
        """The request the stream follows: every event id starts with it."""
        return str(self.events[0]["id"]).split(".", 1)[0]

    @property
    def last(self) -> dict[str, Any]:
        return self.data[-1]


def collapsed(phases: list[str]) -> list[str]:
    """``phases`` with runs of one phase (a build's many log lines) as one: the shape of a launch."""
    return [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]


def offset_of(event_id: str) -> int:
    """The log offset an event id names (``<request>.<partition>.<offset>.<issued>.<holder>.<mac>``)."""
    return int(event_id.split(".")[2])


@dataclass
class Chain:
    """Kiln running on ``bus``, with its fakes, and a client's view of it."""

    bus: MemoryBus
    app: Starlette
    githost: GitHost
    registry: FakeRegistry
    executor: FakeExecutor
    hub: FakeHub
    seal_key: str
    resolver: Resolver
    builder: Builder
    gateway_settings: GatewaySettings
    resolver_settings: ResolverSettings
    streams: list[Stream] = field(default_factory=list)

    # -- the repository and the names Kiln gives it ----------------------------------------------

    def sha(self, ref: str = "main") -> str:
        """The commit ``ref`` of org/demo is on the git host."""
        return git(self.githost.root / OWNER / REPO, "rev-parse", ref)

    def image(self, ref: str = "main") -> str:
        """The image the resolver names org/demo at ``ref`` (BinderHub's rule: the ``owner-repo`` slug and
        the commit), known before the launch so a test can gate or fail that build on the fake executor."""
        return image_name(self.resolver_settings.image_prefix, f"{OWNER}-{REPO}", self.sha(ref))

    # -- a client ------------------------------------------------------------------------------

    def client(self, peer: str = PEER) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=StreamingASGITransport(self.app, client=(peer, 40000)),
                                 base_url="http://testserver")

    async def launch(self, path: str = f"/build/gh/{OWNER}/{REPO}/main", headers: dict[str, str] | None = None,
                     until: Callable[[dict[str, Any]], bool] | None = None) -> Stream:
        """GET ``path`` as an EventSource does and read the stream to its end, or (``until``) up to and
        including the first event ``until`` holds for; then disconnect."""
        async with self.client() as c, c.stream("GET", path, headers={**SSE, **(headers or {})}) as r:
            events: list[dict[str, Any]] = []
            while batch := await read_events(r, limit=1):
                if "comment" in batch[0]:
                    continue  # a heartbeat: the stream is idle, not a phase
                events.append(batch[0])
                if until is not None and until(batch[0]["data"]):
                    break
            stream = Stream(r.status_code, events)
        self.streams.append(stream)
        return stream

    # -- the log -------------------------------------------------------------------------------

    def events(self, request_id: str | None = None) -> list[PhaseEvent]:
        """Phase events in the order they were published (one request's are in its partition's order)."""
        return [e for e in self.bus.records(self.bus.topics.phase_events)
                if isinstance(e, PhaseEvent) and (request_id is None or e.request_id == request_id)]

    def client_view(self, request_id: str) -> list[tuple[str, str]]:
        """(phase, message) of every event of ``request_id`` a BinderHub client is shown, in log order."""
        return [(e.phase.value, e.message) for e in self.events(request_id) if e.phase in CLIENT_PHASES]

    def request_ids(self, topic: Topic) -> list[str]:
        """Request ids of the records on a request topic (build-requested, hub-launch-requested), in order."""
        return [r.request_id for r in self.bus.records(topic) if isinstance(r, REQUESTS)]

    async def follower(self) -> str:
        """The request id of the first launch told it follows a build already running for its image."""
        def followers() -> list[str]:
            return [e.request_id for e in self.events() if e.message.startswith(FOLLOWS)]

        await self.until(lambda: bool(followers()), "a launch to follow a running build")
        return followers()[0]

    async def until(self, condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
        """Wait until ``condition`` holds, woken by every change on the bus (no polling, no sleeps)."""
        async with self.bus.changed:
            try:
                await asyncio.wait_for(self.bus.changed.wait_for(condition), timeout)
            except TimeoutError:
                raise AssertionError(f"timed out waiting for {what}") from None


def make_githost(root: Path) -> GitHost:
    """org/demo on a loopback git host: a Python repository (requirements.txt) on ``main``."""
    root.mkdir(parents=True)
    make_repo(root, f"{OWNER}/{REPO}", {"README.md": "# demo\n", "requirements.txt": "numpy\n"})
    return start_githost(root)


@contextlib.asynccontextmanager
async def running_chain(githost: GitHost, tmp_path: Path) -> AsyncIterator[Chain]:
    """Every service served on one MemoryBus until the block ends; then each stopped as on SIGTERM.

    ``githost`` serves org/demo (``make_githost``); the builder works under ``tmp_path``.
    """
    bus = MemoryBus(BusSettings(topic_partitions=3))
    seal_key = new_key()  # the launcher seals server tokens with it; the gateway opens them
    # Each service its own settings, as each reads its own environment; the bus settings they embed
    # are unused here (the one bus was made above), except the topic prefix, which is the default.
    gateway_settings = GatewaySettings(rate_limit=0, token_seal_keys=[seal_key])
    resolver_settings = ResolverSettings(github_url=githost.url, github_api_url=githost.github_api,
                                         allowed_private_hosts=["127.0.0.1"], image_prefix=IMAGE_PREFIX)
    builder_settings = BuilderSettings(work_dir=str(tmp_path / "builds"), concurrent_builds=2, metrics_port=None,
                                       base_image="127.0.0.1:5000/kiln/base:latest",
                                       env_image_prefix="127.0.0.1:5000/kiln/env", allowed_private_hosts=["127.0.0.1"])
    launcher_settings = LauncherSettings(token_seal_keys=[seal_key], hub_public_url=HUB_PUBLIC,
                                         quota_check_interval_s=0, retry_delay_s=0)

    registry = FakeRegistry()
    executor = FakeExecutor(registry)
    hub = FakeHub()
    providers = make_providers(resolver_settings)
    resolver = Resolver(resolver_settings, bus, providers, ResolverRegistry(registry),  # type: ignore[arg-type]
                        RunningServers(bus))
    # The real git fetcher, made as the builder's composition root makes it, fetching from the git host.
    builder = Builder(builder_settings, PhaseReporter(bus, bus.topics, "builder"), bus.topics, executor,
                      make_fetcher(builder_settings))
    app = memory_app(gateway_settings, bus)
    chain = Chain(bus, app, githost, registry, executor, hub, seal_key, resolver, builder, gateway_settings,
                  resolver_settings)

    stop = asyncio.Event()
    try:
        async with running(app):  # the gateway's lifespan: its router reads the bus from its end
            services = [
                asyncio.create_task(run_resolver(bus, resolver, stop), name="resolver"),
                # A short grace: a test that ends with a build held open should not wait the service's 10 s.
                asyncio.create_task(run_on(bus, builder, stop, shutdown_grace_s=1), name="builder"),
                asyncio.create_task(run_launcher(bus, launcher_settings, hub, stop), name="launcher"),  # type: ignore[arg-type]
            ]
            try:
                yield chain
            finally:
                stop.set()
                done = await asyncio.wait_for(asyncio.gather(*services, return_exceptions=True), 15)
                for result in done:
                    if isinstance(result, BaseException):
                        raise result
    finally:
        await providers.aclose()
