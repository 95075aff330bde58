"""The resolver service through Kafka: every outcome is an event, and it goes to the right topic.

Git repositories are real and served on loopback; GitHub's API calls are answered by the test git
host's stand-ins (tests/support/githost.py); the registry is the local stack's real one.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import tarfile
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from kilnbus import (BuildRequested, BusProducer, BusSettings, Delivery, HubLaunchRequested, LaunchRequested, Phase,
                     PhaseEvent, Topics)

from kiln_resolver.__main__ import serve
from kiln_resolver.settings import Settings, SpecRule

from ..bus.helpers import start_consumer, wait_until
from ..support.githost import GitHost, git

pytestmark = [pytest.mark.kafka, pytest.mark.docker]


@dataclass
class Outcomes:
    phases: dict[str, list[PhaseEvent]] = field(default_factory=lambda: defaultdict(list))
    builds: list[tuple[str | None, BuildRequested]] = field(default_factory=list)
    launches: list[HubLaunchRequested] = field(default_factory=list)

    async def collect(self, d: Delivery[Any]) -> None:
        v = d.value
        if isinstance(v, PhaseEvent):
            self.phases[v.request_id].append(v)
        elif isinstance(v, BuildRequested):
            self.builds.append((d.key, v))
        elif isinstance(v, HubLaunchRequested):
            self.launches.append(v)

    def final(self, rid: str) -> PhaseEvent | None:
        events = [e for e in self.phases.get(rid, []) if e.phase in (Phase.FAILED, Phase.BUILT, Phase.READY)]
        return events[-1] if events else None


@dataclass
class Harness:
    settings: Settings
    producer: BusProducer
    topics: Topics
    out: Outcomes
    tasks: list[tuple[asyncio.Task[None], asyncio.Event]] = field(default_factory=list)

    async def start_resolver(self, **overrides: Any) -> None:
        stop = asyncio.Event()
        self.tasks.append((asyncio.create_task(serve(self.settings.model_copy(update=overrides), stop)), stop))
        await asyncio.sleep(1.5)  # joined its group

    async def stop_resolvers(self) -> None:
        for task, stop in self.tasks:
            stop.set()
            await asyncio.wait_for(task, 30)
        self.tasks.clear()

    async def launch(self, provider: str, spec: str, request_id: str | None = None, **kw: Any) -> str:
        rid = request_id or uuid.uuid4().hex
        await self.producer.publish(self.topics.launch_requested, rid, LaunchRequested(request_id=rid, provider=provider, spec=spec, **kw))
        return rid

    async def outcome(self, rid: str, timeout: float = 30) -> PhaseEvent:
        await wait_until(lambda: self.out.final(rid) is not None or rid in {b.request_id for _, b in self.out.builds}, timeout,
                         f"an outcome for {rid}")
        await asyncio.sleep(0.2)
        final = self.out.final(rid)
        return final if final is not None else next(e for e in self.out.phases[rid] if e.phase is Phase.RESOLVED)


@pytest.fixture
async def harness(bus_settings: BusSettings, topics: Topics, producer: BusProducer, githost: GitHost) -> AsyncIterator[Harness]:
    settings = Settings(**bus_settings.model_dump(), github_url=githost.url, github_api_url=githost.github_api,
                        gitlab_url=githost.gitlab, allowed_private_hosts=["127.0.0.1"],
                        image_prefix=f"127.0.0.1:5000/kilntest{uuid.uuid4().hex[:8]}/binder-",
                        banned_specs=[SpecRule(pattern=r"gh/org/banned", reason="It mines cryptocurrency.")])
    out = Outcomes()
    reader = await start_consumer(bus_settings, topics, [topics.phase_events, topics.build_requested, topics.hub_launch_requested],
                                  out.collect, producer, group="resolver-test-reader")
    h = Harness(settings, producer, topics, out)
    await h.start_resolver()
    yield h
    await h.stop_resolvers()
    await reader.close()


def push_image(name: str) -> None:
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tarfile.TarInfo("x")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    subprocess.run(["docker", "import", "-", name], input=layer.getvalue(), check=True, capture_output=True, timeout=60)
    subprocess.run(["docker", "push", name], check=True, capture_output=True, timeout=120)
    subprocess.run(["docker", "rmi", name], check=True, capture_output=True, timeout=60)


async def test_uncached_repository_goes_to_the_builder_keyed_by_image(harness: Harness, githost: GitHost) -> None:
    rid = await harness.launch("gh", "org/demo/main", launch_host="http://127.0.0.1:8585/")
    resolved = await harness.outcome(rid)
    sha = git(githost.root / "org" / "demo", "rev-parse", "main")
    assert resolved.phase is Phase.RESOLVED and resolved.ref == sha and resolved.service == "resolver"
    key, build = harness.out.builds[0]
    assert key == build.image_name == resolved.image_name
    assert build.image_name.startswith(harness.settings.image_prefix + "org-2ddemo-") and build.image_name.endswith(":" + sha)
    assert (build.repo_url, build.ref, build.resolved_spec, build.launch) == (f"{githost.url}/org/demo", sha, f"org/demo/{sha}", True)
    assert build.launch_host == "http://127.0.0.1:8585/"
    assert harness.out.launches == []


async def test_cached_image_is_launched_directly(harness: Harness) -> None:
    first = await harness.launch("gh", "org/demo/main")
    image = (await harness.outcome(first)).image_name
    assert image is not None
    await asyncio.to_thread(push_image, image)
    rid = await harness.launch("gh", "org/demo/main")
    built = await harness.outcome(rid)
    assert (built.phase, built.image_name, built.message) == (Phase.BUILT, image, "Found built image, launching...\n")
    assert [launch.request_id for launch in harness.out.launches] == [rid]
    rid = await harness.launch("gh", "org/demo/main", build_only=True)
    ready = await harness.outcome(rid)
    assert (ready.phase, ready.image_name, ready.message) == (Phase.READY, image, "Done! Found built image\n")
    assert len(harness.out.launches) == 1


@pytest.mark.parametrize("provider, spec, cause, status, text", [
    ("gh", "org/nope/main", "repo_not_found", 404, "Repository org/nope not found"),
    ("gh", "org/demo/no-such-ref", "ref_not_found", 404, "no such branch, tag or commit"),
    ("gh", "org/banned/main", "banned", 403, "not allowed to launch. It mines cryptocurrency."),
    ("git", "http%3A%2F%2F10.0.0.1%2Frepo.git/HEAD", "private_host", 403, "private network"),
    ("zenodo", "10.5281/zenodo.3242074", "unsupported_provider", 400, "cannot launch from 'zenodo'"),
])
async def test_failures_say_what_to_do(harness: Harness, provider: str, spec: str, cause: str, status: int, text: str) -> None:
    rid = await harness.launch(provider, spec)
    failed = await harness.outcome(rid)
    assert (failed.phase, failed.failure_cause, failed.status_code) == (Phase.FAILED, cause, status)
    assert text in failed.message
    assert harness.out.builds == [] and harness.out.launches == []


async def test_master_falls_back_to_the_default_branch(harness: Harness, githost: GitHost) -> None:
    rid = await harness.launch("gh", "org/demo/master")
    resolved = await harness.outcome(rid)
    assert resolved.ref == git(githost.root / "org" / "demo", "rev-parse", "main")
    assert any("Please update your links" in e.message for e in harness.out.phases[rid] if e.phase is Phase.WAITING)


async def test_a_request_delivered_twice_is_handled_once(harness: Harness) -> None:
    rid = uuid.uuid4().hex
    await harness.launch("gh", "org/demo/main", request_id=rid)
    await harness.launch("gh", "org/demo/main", request_id=rid)
    await harness.outcome(rid)
    await asyncio.sleep(1)
    assert len(harness.out.builds) == 1


async def test_quota_counts_running_servers_from_the_log_and_survives_restart(harness: Harness) -> None:
    await harness.stop_resolvers()
    await harness.start_resolver(per_repo_quota=1)
    first = await harness.launch("gh", "org/demo/main")
    image = (await harness.outcome(first)).image_name
    # The launcher would say this; here the test plays its ready event.
    await harness.producer.publish(harness.topics.phase_events, first, PhaseEvent(
        request_id=first, phase=Phase.READY, service="launcher", url="http://127.0.0.1:8000/user/x/", image_name=image))
    await asyncio.sleep(0.5)
    refused = await harness.outcome(await harness.launch("gh", "org/demo/main"))
    assert (refused.failure_cause, refused.status_code) == ("repo_quota", 429)
    assert "Too many users running" in refused.message
    # A new resolver rebuilds the count from the log.
    await harness.stop_resolvers()
    await harness.start_resolver(per_repo_quota=1)
    assert (await harness.outcome(await harness.launch("gh", "org/demo/main"))).failure_cause == "repo_quota"
    # The server stops; the repository may launch again.
    await harness.producer.publish(harness.topics.phase_events, first, PhaseEvent(request_id=first, phase=Phase.STOPPED,
                                                                                  service="launcher"))
    await asyncio.sleep(0.5)
    assert (await harness.outcome(await harness.launch("gh", "org/demo/main"))).phase is Phase.RESOLVED


async def test_a_restarted_resolver_serves_only_once_its_quota_count_has_replayed_the_log(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """The log already holds a repository at its quota when a resolver starts: its first answer refuses.

    The replay is held back until the test lets it go (a slow replay, made deterministic): a
    resolver that consumed before catching up would count no server and accept the request.
    """
    from kiln_resolver import running
    from kiln_resolver.images import image_name
    from kilnbus.follow import LogFollower

    await harness.stop_resolvers()
    replay = asyncio.Event()

    class HeldReplay:
        """Stands in for LogFollower: the same follower, started only once ``replay`` is set."""

        def __init__(self, *args: Any) -> None:
            self._real = LogFollower(*args)
            self.caught_up = self._real.caught_up
            self._task: asyncio.Task[None] | None = None

        async def start(self) -> None:
            async def later() -> None:
                await replay.wait()
                await self._real.start()
            self._task = asyncio.create_task(later())

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
        await harness.producer.publish(harness.topics.phase_events, event.request_id, event)

    await harness.start_resolver(per_repo_quota=2)
    rid = await harness.launch("gh", "org/demo/main")
    with pytest.raises(AssertionError, match="timed out"):  # nothing is answered while the log replays
        await wait_until(lambda: rid in harness.out.phases, 4, f"any event for {rid}")
    replay.set()
    refused = await harness.outcome(rid)
    assert (refused.phase, refused.failure_cause, refused.status_code) == (Phase.FAILED, "repo_quota", 429)

    # Control: with room for one more (the same log, a quota of 3) the same launch is accepted,
    # and the request held above was answered once the replay was let go.
    await harness.stop_resolvers()
    await harness.start_resolver(per_repo_quota=3)
    accepted = await harness.outcome(await harness.launch("gh", "org/demo/main"))
    assert accepted.phase is Phase.RESOLVED and accepted.image_name is not None
    assert accepted.image_name.rsplit(":", 1)[0] == image.rsplit(":", 1)[0]
