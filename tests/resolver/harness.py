"""The resolver served on the in-memory bus as its entry point serves it, and a registry that is a set.

Shared by the resolver's fast tests (the fixtures are in conftest.py): ``kiln_resolver.bootstrap.run_on``
runs the resolver on a ``MemoryBus`` (the same dispatcher, failed events and projection as on Kafka).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Self

from kiln_resolver.bootstrap import run_on as run
from kiln_resolver.handler import Resolver
from kiln_resolver.images import split_image
from kiln_resolver.providers import make_providers
from kiln_resolver.registry import RegistryError
from kiln_resolver.running import RunningServers
from kiln_resolver.settings import Settings
from kilnbus import BuildRequested, HubLaunchRequested, LaunchRequested, MemoryBus, Phase, PhaseEvent

OUTCOMES = (Phase.FAILED, Phase.BUILT, Phase.READY)


class FakeRegistry:
    """The registry as a set of (repository, tag); ``down`` makes every question fail as an unreachable one does."""

    def __init__(self) -> None:
        self.images: set[tuple[str, str]] = set()
        self.down = False

    def push(self, image: str) -> None:
        _, repository, tag = split_image(image)
        self.images.add((repository, tag))

    async def image_exists(self, repository: str, tag: str) -> bool:
        if self.down:
            raise RegistryError("the image registry at http://127.0.0.1:5000 could not be reached: ConnectError()")
        return (repository, tag) in self.images

    async def aclose(self) -> None:
        pass


class Resolving:
    """One resolver served on ``bus`` until the block ends, as the service's entry point runs it."""

    def __init__(self, bus: MemoryBus, settings: Settings, registry: FakeRegistry) -> None:
        self.bus = bus
        self.settings = settings
        self.providers = make_providers(settings)
        self.resolver = Resolver(settings, bus, self.providers, registry, RunningServers(bus))  # type: ignore[arg-type]
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(run(self.bus, self.resolver, self._stop))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, 10)
        await self.providers.aclose()

    async def launch(self, provider: str, spec: str, request_id: str | None = None, **fields: Any) -> str:
        """Publish a launch request and return once the resolver has handled it (and published its outcome)."""
        rid = request_id or uuid.uuid4().hex
        await self.bus.publish(self.bus.topics.launch_requested, rid,
                               LaunchRequested(request_id=rid, provider=provider, spec=spec, **fields))
        await self.bus.drained(self.settings.group_id("kiln-resolver"))
        return rid

    def events(self, rid: str) -> list[PhaseEvent]:
        return [e for e in self.bus.records(self.bus.topics.phase_events) if isinstance(e, PhaseEvent) and e.request_id == rid]

    def outcome(self, rid: str) -> PhaseEvent:
        """The request's last answer: failed, built or ready, else (a build was asked for) resolved."""
        events = self.events(rid)
        final = [e for e in events if e.phase in OUTCOMES]
        return final[-1] if final else next(e for e in events if e.phase is Phase.RESOLVED)

    def builds(self) -> list[tuple[str | None, BuildRequested]]:
        return [(r.key.decode() if r.key else None, self.bus.codec.decode(r.value, expect=BuildRequested))
                for r in self.bus.raw(self.bus.topics.build_requested)]

    def launches(self) -> list[HubLaunchRequested]:
        return [r for r in self.bus.records(self.bus.topics.hub_launch_requested) if isinstance(r, HubLaunchRequested)]
