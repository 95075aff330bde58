"""Builder fixtures: the real builder service (in this process) on the real Docker engine and
registry, fed through Kafka, building repositories from tests/builder/repos served by the
loopback git host. One builder serves the whole module."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio

from kiln_builder.bootstrap import run
from kiln_builder.settings import Settings
from kilnbus import (
    BuildRequested,
    BusProducer,
    BusSettings,
    Delivery,
    HubLaunchRequested,
    Phase,
    PhaseEvent,
    Topics,
    ensure_topics,
)

from ..bus.helpers import Running, start_consumer, wait_until
from ..conftest import delete_topics
from ..support.githost import GitHost, git, make_repo, start_githost

REPOS = Path(__file__).parent / "repos"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class BuildHarness:
    settings: Settings
    topics: Topics
    producer: BusProducer
    githost: GitHost
    prefix: str
    phases: dict[str, list[PhaseEvent]] = field(default_factory=lambda: defaultdict(list))
    launches: list[HubLaunchRequested] = field(default_factory=list)
    readers: list[Running] = field(default_factory=list)
    tasks: list[tuple[asyncio.Task[None], asyncio.Event]] = field(default_factory=list)

    async def collect(self, d: Delivery[Any]) -> None:
        if isinstance(d.value, PhaseEvent):
            self.phases[d.value.request_id].append(d.value)
        else:
            self.launches.append(d.value)

    def serve_repo(self, name: str, files: dict[str, str] | None = None) -> tuple[str, str]:
        """Publish tests/builder/repos/<name> (or ``files``) as a git repository: (url, commit)."""
        path = self.githost.root / "t" / f"{name}-{uuid.uuid4().hex[:6]}"
        if files is None:
            files = {p.relative_to(REPOS / name).as_posix(): p.read_text() for p in (REPOS / name).rglob("*") if p.is_file()}
        # A file unique to this run: the repository stage really builds, whatever the engine's layer
        # cache holds from earlier runs (environment images are still shared, as they should be).
        files = {**files, ".test-run-id": uuid.uuid4().hex + "\n"}
        make_repo(path.parent, path.name, files)  # modes are not kept: the build makes postBuild and start executable
        return f"{self.githost.url}/t/{path.name}", git(path, "rev-parse", "HEAD")

    async def request(self, url: str, ref: str, image: str | None = None, launch: bool = True) -> tuple[str, str]:
        rid = uuid.uuid4().hex
        image = image or f"{self.prefix}{uuid.uuid4().hex[:10]}:{ref}"
        await self.producer.publish(self.topics.build_requested, image, BuildRequested(
            request_id=rid, image_name=image, repo_url=url, ref=ref, provider="git", spec=url, launch=launch))
        return rid, image

    def final(self, rid: str) -> PhaseEvent | None:
        return next((e for e in reversed(self.phases.get(rid, [])) if e.phase in (Phase.BUILT, Phase.FAILED, Phase.READY)), None)

    async def outcome(self, rid: str, timeout: float = 600) -> PhaseEvent:
        await wait_until(lambda: self.final(rid) is not None, timeout, f"the build for {rid}")
        final = self.final(rid)
        assert final is not None
        return final

    async def settle(self, rid: str, timeout: float = 30) -> None:
        """Publish a marker under ``rid``'s key on each topic collected and wait until both are read: every
        record published under that key before them (same partition, in order) has been collected too."""
        marker = f"marker-{uuid.uuid4().hex[:8]}"
        await self.producer.publish(self.topics.phase_events, rid, PhaseEvent(
            request_id=rid, phase=Phase.UNKNOWN, service=marker))
        await self.producer.publish(self.topics.hub_launch_requested, rid, HubLaunchRequested(
            request_id=marker, image_name=marker, repo_url="", ref="", provider="", spec=""))
        await wait_until(lambda: any(e.service == marker for e in self.phases.get(rid, [])), timeout, "the event marker")
        await wait_until(lambda: any(x.request_id == marker for x in self.launches), timeout, "the launch marker")

    def log(self, rid: str) -> str:
        return "".join(e.message for e in self.phases[rid] if e.phase in (Phase.BUILDING, Phase.FETCHING))

    async def start_builder(self, **overrides: Any) -> None:
        stop = asyncio.Event()
        # No wait for it to join: requests published before it has are read from the group's committed
        # offsets (or the start of the topic) once it has.
        self.tasks.append((asyncio.create_task(run(self.settings.model_copy(update=overrides), stop)), stop))

    async def stop_builders(self) -> None:
        for task, stop in self.tasks:
            stop.set()
            await asyncio.wait_for(task, 60)
        self.tasks.clear()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def builder(tmp_path_factory: Any) -> AsyncIterator[BuildHarness]:
    bus = BusSettings(topic_prefix=f"test-build-{uuid.uuid4().hex[:8]}.", topic_partitions=3)
    await ensure_topics(bus)
    topics = Topics(bus.topic_prefix)
    root = tmp_path_factory.mktemp("git")
    host = start_githost(root)
    # The base images make up built, one per Python ("VERSION IMAGE" lines, the default first).
    listed = [line.split() for line in (ROOT / ".state" / "base-images").read_text().splitlines() if line.strip()]
    settings = Settings(**bus.model_dump(), base_image=(ROOT / ".state" / "base-image").read_text().strip(),
                        base_images=dict(listed), offered_pythons=[version for version, _ in listed],
                        work_dir=str(tmp_path_factory.mktemp("work")),
                        allowed_private_hosts=["127.0.0.1"])  # the test git host is on loopback
    async with BusProducer(bus) as producer:
        h = BuildHarness(settings, topics, producer, host, prefix=f"127.0.0.1:5000/kilntest-{uuid.uuid4().hex[:6]}/binder-")
        h.readers.append(await start_consumer(bus, topics, [topics.phase_events, topics.hub_launch_requested], h.collect,
                                              producer, group="builder-test-reader"))
        await h.start_builder()
        yield h
        await h.stop_builders()
        for r in h.readers:
            await r.close()
    host.server.shutdown()
    await delete_topics(bus.kafka_bootstrap, bus.topic_prefix)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_in(image: str, command: str, timeout: float = 120, login: bool = False) -> str:
    """Run ``command`` in a fresh container of ``image`` (through its entrypoint) and return its output;
    with ``login``, in a login shell (``bash -lc``), as JupyterLab's terminal runs one."""
    shell = ["bash", "-lc"] if login else ["sh", "-c"]
    out = subprocess.run(["docker", "run", "--rm", "--network", "host", image, *shell, command],
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def jupyter_answers(image: str, kernel: tuple[str, str, str] | None = None,
                    then: Callable[[str, str], None] | None = None) -> None:
    """Start the image's Jupyter server on a free loopback port and check that it answers with its token;
    with ``kernel`` (name, code, what it prints), also that such a kernel runs the code there; ``then``
    is called with the server's URL and its container's name while it runs (its token is ``probe``)."""
    port, name = free_port(), f"kilntest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "run", "-d", "--rm", "--network", "host", "--name", name, image, "jupyter", "server",
                    "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--IdentityProvider.token=probe"],
                   check=True, capture_output=True, timeout=60)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/status", headers={"Authorization": "token probe"}, timeout=2)
                assert r.status_code == 200
                assert httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=2).status_code == 403
                if kernel:
                    name, code, expected = kernel
                    assert _kernel_runs(f"http://127.0.0.1:{port}", name, code) == expected
                if then:
                    then(f"http://127.0.0.1:{port}", name)
                return
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True).stderr[-2000:]
                    raise AssertionError(f"Jupyter in {image} did not answer:\n{logs}") from None
                time.sleep(0.3)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def _kernel_runs(server: str, name: str, code: str) -> str:
    """Start a kernel called ``name``, run ``code`` in it over Jupyter's kernel websocket (as a notebook
    does) and return what it printed."""
    import json

    from websockets.sync.client import connect

    auth = {"Authorization": "token probe"}
    started = httpx.post(f"{server}/api/kernels", json={"name": name}, headers=auth, timeout=30)
    assert started.status_code == 201, started.text
    msg_id = uuid.uuid4().hex
    request = {"header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test", "session": uuid.uuid4().hex,
                          "version": "5.3", "date": ""},
               "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
               "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                           "allow_stdin": False, "stop_on_error": True}}
    printed = ""
    url = server.replace("http", "ws", 1) + f"/api/kernels/{started.json()['id']}/channels"
    with connect(url, additional_headers=auth, open_timeout=30) as ws:
        ws.send(json.dumps(request))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            message = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if message["msg_type"] == "stream":
                printed += message["content"]["text"]
            elif message["msg_type"] == "error":
                raise AssertionError(f"the {name} kernel failed: {message['content']}")
            elif message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
                return printed
    raise AssertionError(f"the {name} kernel did not finish running {code!r}; printed {printed!r}")


def labels(image: str) -> dict[str, str]:
    import json

    out = subprocess.run(["docker", "image", "inspect", image, "--format", "{{json .Config.Labels}}"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def cleanup_images(prefix: str) -> None:
    ids = subprocess.run(["docker", "images", "-q", "--filter", f"reference={prefix}*"], capture_output=True, text=True).stdout.split()
    if ids:
        subprocess.run(["docker", "rmi", "-f", *ids], capture_output=True)


__all__ = ["BuildHarness", "cleanup_images", "jupyter_answers", "labels", "run_in", "shutil"]
