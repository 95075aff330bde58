"""The resolver service as it runs in production: on Kafka, against the local stack's real registry.

Only what needs the real broker or registry is here: the cached-image path through the registry's
token authentication, and a restarted resolver replaying the phase log before it answers. The
handling of launch requests is tested on the in-memory bus (test_resolver_units.py).
Git repositories are real and served on loopback (tests/support/githost.py).
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import tarfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from kiln_resolver import running
from kiln_resolver.bootstrap import run as serve
from kiln_resolver.images import image_name
from kiln_resolver.settings import Settings
from kilnbus import BuildRequested, BusSettings, KafkaBus, LaunchRequested, LogFollower, Phase, PhaseEvent

from ..bus.bus_support import read_until
from ..support.githost import GitHost

pytestmark = [pytest.mark.kafka, pytest.mark.docker]
FINAL = (Phase.FAILED, Phase.BUILT, Phase.READY)


@dataclass
class Harness:
    settings: Settings
    bus: KafkaBus
    tasks: list[tuple[asyncio.Task[None], asyncio.Event]] = field(default_factory=list)

    def start_resolver(self, **overrides: Any) -> None:
        """A resolver process; it takes launch requests from the log whenever it has joined its group."""
        stop = asyncio.Event()
        self.tasks.append((asyncio.create_task(serve(self.settings.model_copy(update=overrides), stop)), stop))

    async def stop_resolvers(self) -> None:
        for task, stop in self.tasks:
            stop.set()
            await asyncio.wait_for(task, 30)
        self.tasks.clear()

    async def launch(self, provider: str, spec: str, **kw: Any) -> str:
        rid = uuid.uuid4().hex
        await self.bus.publish(self.bus.topics.launch_requested, rid,
                               LaunchRequested(request_id=rid, provider=provider, spec=spec, **kw))
        return rid

    async def final(self, rid: str, timeout: float = 30) -> PhaseEvent:
        """The request's answer when the resolver launches or refuses it: built, ready or failed."""
        events = await read_until(self.bus, self.bus.topics.phase_events,
                                  lambda events: any(e.request_id == rid and e.phase in FINAL for e in events), timeout)
        return next(e for e in events if e.request_id == rid and e.phase in FINAL)

    async def build(self, rid: str, timeout: float = 30) -> BuildRequested:
        """The request's build request, when its image is not in the registry yet."""
        builds = await read_until(self.bus, self.bus.topics.build_requested,
                                  lambda builds: any(b.request_id == rid for b in builds), timeout)
        return next(b for b in builds if b.request_id == rid)


@pytest.fixture
async def harness(bus_settings: BusSettings, githost: GitHost) -> AsyncIterator[Harness]:
    settings = Settings(**bus_settings.model_dump(), github_url=githost.url, github_api_url=githost.github_api,
                        gitlab_url=githost.gitlab, allowed_private_hosts=["127.0.0.1"],
                        image_prefix=f"127.0.0.1:5000/kilntest{uuid.uuid4().hex[:8]}/binder-")
    async with KafkaBus(bus_settings) as bus:
        h = Harness(settings, bus)
        yield h
        await h.stop_resolvers()


def push_image(name: str) -> None:
    """A one-file image pushed to the local registry, as its admin (DOCKER_CONFIG: tests/support/stack.py)."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tarfile.TarInfo("x")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    subprocess.run(["docker", "import", "-", name], input=layer.getvalue(), check=True, capture_output=True, timeout=60)
    try:
        pushed = subprocess.run(["docker", "push", name], capture_output=True, text=True, timeout=120)
        assert pushed.returncode == 0, f"docker push {name} failed: {pushed.stderr}"
    finally:
        subprocess.run(["docker", "rmi", name], check=True, capture_output=True, timeout=60)


async def test_cached_image_is_launched_directly(harness: Harness) -> None:
    harness.start_resolver()
    image = (await harness.build(await harness.launch("gh", "org/demo/main"))).image_name
    await asyncio.to_thread(push_image, image)
    rid = await harness.launch("gh", "org/demo/main")
    built = await harness.final(rid)
    assert (built.phase, built.image_name, built.message) == (Phase.BUILT, image, "Found built image, launching...\n")
    launches = await read_until(harness.bus, harness.bus.topics.hub_launch_requested, lambda launches: len(launches) >= 1)
    assert [(launch.request_id, launch.image_name) for launch in launches] == [(rid, image)]


async def test_a_restarted_resolver_serves_only_once_its_quota_count_has_replayed_the_log(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """The log already holds a repository at its quota when a resolver starts: its first answer refuses.

    The replay is held back until the test lets it go (a slow replay, made deterministic): the
    resolver is waiting for it, with a launch request in the log, when it is let go; a resolver
    that consumed before catching up would count no server and accept the request.
    """
    replay, waiting = asyncio.Event(), asyncio.Event()

    class HeldReplay:
        """Stands in for LogFollower: the same follower, whose replay starts only once ``replay`` is set."""

        def __init__(self, *args: Any) -> None:
            self._real = LogFollower(*args)
            self.caught_up = self._real.caught_up
            self._task: asyncio.Task[None] | None = None

        async def start(self) -> None:
            async def later() -> None:
                await replay.wait()
                await self._real.start()
            self._task = asyncio.create_task(later())

        async def wait_caught_up(self, stop: asyncio.Event) -> bool:
            waiting.set()
            return await self._real.wait_caught_up(stop)

        async def stop(self) -> None:
            if self._task is not None:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            await self._real.stop()

    monkeypatch.setattr(running, "LogFollower", HeldReplay)
    # Two servers of org/demo (another commit's image counts for the repository too), each ready
    # event delivered twice; one more that stopped; a build-only ready (no URL) that is no server.
    image = image_name(harness.settings.image_prefix, "org-demo", "0" * 40)
    older = image_name(harness.settings.image_prefix, "org-demo", "1" * 40)
    log: list[PhaseEvent] = []
    for rid, img in (("a", image), ("b", older), ("c", image)):
        rid = f"{rid}-{uuid.uuid4().hex}"
        ready = PhaseEvent(request_id=rid, phase=Phase.READY, service="launcher", image_name=img,
                           url=f"http://127.0.0.1:8000/user/u/{rid}/", server_name=f"u/{rid}")
        log += [ready, ready]
        if rid.startswith("c-"):
            log.append(PhaseEvent(request_id=rid, phase=Phase.STOPPED, service="launcher", server_name=f"u/{rid}"))
    log.append(PhaseEvent(request_id=uuid.uuid4().hex, phase=Phase.READY, service="resolver", image_name=image))
    for event in log:
        await harness.bus.publish(harness.bus.topics.phase_events, event.request_id, event)

    harness.start_resolver(per_repo_quota=2)
    await asyncio.wait_for(waiting.wait(), 30)  # started, and waiting for its replay
    rid = await harness.launch("gh", "org/demo/main")
    assert not harness.tasks[0][0].done()
    replay.set()
    refused = await harness.final(rid)
    assert (refused.phase, refused.failure_cause, refused.status_code) == (Phase.FAILED, "repo_quota", 429)

    # Control: with room for one more (the same log, a quota of 3) the same launch is accepted.
    await harness.stop_resolvers()
    harness.start_resolver(per_repo_quota=3)
    accepted = await harness.build(await harness.launch("gh", "org/demo/main"))
    assert accepted.image_name.rsplit(":", 1)[0] == image.rsplit(":", 1)[0]
