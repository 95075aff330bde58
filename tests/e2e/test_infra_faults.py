"""Infrastructure faults on the running stack, with what the user sees checked: the Kafka broker
stopped and started mid-build, the registry down during the push, JupyterHub down during a launch.

Each request must end within a bounded time in ``ready`` or in a ``failed`` that says what
happened, and Kiln must serve the next request normally once the part is back.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path

import pytest

from ..support.githost import make_repo
from .test_binder import server_answers, spec_for
from .test_faults import TICKING, Stream, one_ready

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def local(script: str, action: str) -> None:
    done = subprocess.run(["bash", str(ROOT / "deploy" / "local" / script), action], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


async def test_broker_stopped_and_started_mid_build(repos: Path) -> None:
    """Every service loses Kafka for a while; the build and the stream carry on when it is back."""
    make_repo(repos, "i-kafka", {"postBuild": TICKING.format(n=20), "id": uuid.uuid4().hex})
    stream = Stream(spec_for(repos, "i-kafka"))
    try:
        await stream.until(lambda: any("tick 2" in e.get("message", "") for _, e in stream.events), 180,
                           "the build to run")
        local("kafka.sh", "stop")
        await asyncio.sleep(5)
    finally:
        local("kafka.sh", "start")
    await asyncio.wait_for(stream.closed.wait(), 420)
    assert stream.phases().count("built") == 1, stream.phases()[-10:]
    server_answers(one_ready(stream))


async def test_registry_down_during_the_push(repos: Path) -> None:
    """The push cannot finish: the user is told the registry failed, and nothing is called built."""
    make_repo(repos, "i-registry", {"postBuild": TICKING.format(n=4), "id": uuid.uuid4().hex})
    spec = spec_for(repos, "i-registry")
    stream = Stream(spec)
    try:
        await stream.until(lambda: any("tick 1" in e.get("message", "") for _, e in stream.events), 180,
                           "the build to run")
        local("registry.sh", "stop")
        await asyncio.wait_for(stream.closed.wait(), 300)
    finally:
        local("registry.sh", "start")
    last = stream.events[-1][1]
    assert last["phase"] == "failed" and "built" not in stream.phases(), stream.phases()[-6:]
    assert "registry" in last["message"].lower(), last["message"]
    # Back to normal: the same repository builds, pushes and launches.
    again = Stream(spec)
    await asyncio.wait_for(again.closed.wait(), 300)
    server_answers(one_ready(again))


async def test_hub_down_during_a_launch(repos: Path) -> None:
    """The launch fails saying the hub cannot be reached; once it is back, launching works again."""
    make_repo(repos, "i-hub", {"README.md": uuid.uuid4().hex})
    spec = spec_for(repos, "i-hub")
    warm = Stream(spec)  # builds the image, so the launch under test is a cache hit
    await asyncio.wait_for(warm.closed.wait(), 300)
    assert warm.phases()[-1] == "ready", warm.phases()[-6:]
    local("hub.sh", "stop")
    try:
        stream = Stream(spec)
        await asyncio.wait_for(stream.closed.wait(), 300)
    finally:
        local("hub.sh", "start")
    last = stream.events[-1][1]
    assert last["phase"] == "failed", stream.phases()[-6:]
    assert "jupyterhub" in last["message"].lower(), last["message"]
    again = Stream(spec)
    await asyncio.wait_for(again.closed.wait(), 300)
    server_answers(one_ready(again))
