"""On the real engine and Kafka: environment reuse, the time and memory limits (no container left
behind), a builder killed mid-build, git mirrors. One build per image, queue positions and the
handler's outcomes are tested in memory (test_builder_service.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kilnbus import Phase

from ..bus.helpers import wait_until
from .conftest import BuildHarness, run_in

pytestmark = [pytest.mark.docker, pytest.mark.kafka, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

SLOW_POSTBUILD = "#!/bin/bash\nfor i in $(seq 1 {n}); do echo tick $i; sleep 1; done\n"


def containers() -> set[str]:
    return set(subprocess.run(["docker", "ps", "-aq", "--no-trunc"], capture_output=True, text=True).stdout.split())


async def test_environment_image_is_reused_across_repositories(builder: BuildHarness) -> None:
    reqs = {"requirements.txt": "six==1.16.0\ntoolz==0.12.1\n"}
    url_a, ref_a = builder.serve_repo("env-a", {**reqs, "a.ipynb": "{}"})
    url_b, ref_b = builder.serve_repo("env-b", {**reqs, "b.ipynb": "{}"})
    rid_a, _ = await builder.request(url_a, ref_a)
    assert (await builder.outcome(rid_a)).phase is Phase.BUILT
    rid_b, image_b = await builder.request(url_b, ref_b)
    assert (await builder.outcome(rid_b)).phase is Phase.BUILT
    assert "reusing the environment image" in builder.log(rid_b)
    assert "pip install" not in builder.log(rid_b).split("reusing the environment image")[1]
    assert run_in(image_b, "ls ~/*.ipynb; python -c 'import toolz'") == "/home/jovyan/b.ipynb"


async def test_queue_positions_time_limit_and_no_leftover_containers(builder: BuildHarness) -> None:
    await builder.stop_builders()
    await builder.start_builder(concurrent_builds=1, build_timeout_s=8)
    try:
        before = containers()
        url, ref = builder.serve_repo("too-slow", {"postBuild": SLOW_POSTBUILD.format(n=120)})
        slow, _ = await builder.request(url, ref)
        await wait_until(lambda: "tick 1" in builder.log(slow), 120, "the slow build's postBuild running")
        assert containers() - before, "control: a build step's container exists while it runs"
        url2, ref2 = builder.serve_repo("queued", {"README.md": "queued\n"})
        queued, _ = await builder.request(url2, ref2)
        failed = await builder.outcome(slow)
        assert (failed.phase, failed.failure_cause) == (Phase.FAILED, "build_timeout")
        assert "took longer than the limit of 8 seconds" in failed.message
        waits = [e for e in builder.phases[queued] if e.phase is Phase.WAITING]
        assert waits[0].queue_position == 0 and "1 build(s) ahead of yours" in waits[0].message
        assert (await builder.outcome(queued)).phase is Phase.BUILT
        await wait_until(lambda: not containers() - before, 30, "no container left behind by the stopped build")
    finally:
        await builder.stop_builders()
        await builder.start_builder()


async def test_memory_limit_stops_the_build(builder: BuildHarness) -> None:
    await builder.stop_builders()
    await builder.start_builder(build_memory_limit=128 * 2**20)
    try:
        hog = "#!/usr/bin/env python3\nchunks = []\nfor _ in range(64):\n    chunks.append(bytearray(16 * 2**20))\nprint('survived')\n"
        url, ref = builder.serve_repo("hog", {"postBuild": hog})
        rid, _ = await builder.request(url, ref)
        outcome = await builder.outcome(rid)
        assert (outcome.phase, outcome.failure_cause) == (Phase.FAILED, "build_memory")
        assert "more than its memory limit of 0.1 GiB" in outcome.message
    finally:
        await builder.stop_builders()
        await builder.start_builder()


async def test_builder_killed_mid_build_is_rebuilt_after_restart(builder: BuildHarness) -> None:
    """kill -9 of a builder process while it builds: the request is built again by its successor,
    and ``built`` is said once, after the push."""
    await builder.stop_builders()
    url, ref = builder.serve_repo("killed", {"postBuild": SLOW_POSTBUILD.format(n=6), "README.md": "x\n"})
    env = {**os.environ, "KILN_TOPIC_PREFIX": builder.settings.topic_prefix, "KILN_BASE_IMAGE": builder.settings.base_image,
           "KILN_WORK_DIR": builder.settings.work_dir, "KILN_TOPIC_PARTITIONS": "3",
           "KILN_ALLOWED_PRIVATE_HOSTS": '["127.0.0.1"]'}  # the test git host is on loopback
    with open(Path(builder.settings.work_dir) / "killed-builder.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "kiln_builder"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            # Published at once: the new process reads it from the group's committed offset once it has joined.
            rid, _ = await builder.request(url, ref)
            await wait_until(lambda: "tick 2" in builder.log(rid), 120, "the build running in the killed process")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            assert builder.final(rid) is None
            await builder.start_builder(session_timeout_ms=6000)
            outcome = await builder.outcome(rid, timeout=120)
            assert outcome.phase is Phase.BUILT
            await wait_until(lambda: rid in [launch.request_id for launch in builder.launches], 30, "its launch request")
            await builder.settle(rid)  # whatever was published about it before now has been read
            assert [e.phase for e in builder.phases[rid]].count(Phase.BUILT) == 1
            assert [launch.request_id for launch in builder.launches].count(rid) == 1
        finally:
            proc.kill()
            await builder.stop_builders()
            await builder.start_builder()


async def test_builder_keeps_a_mirror_so_new_commits_are_fetched_not_cloned(builder: BuildHarness) -> None:
    from ..support.githost import commit

    url, ref = builder.serve_repo("mirror", {"requirements.txt": "six==1.16.0\n", "a.ipynb": "{}"})
    first, _ = await builder.request(url, ref)
    assert (await builder.outcome(first)).phase is Phase.BUILT
    assert "Cloning into bare repository" in builder.log(first)
    repo = builder.githost.root / "t" / url.rsplit("/", 1)[1]
    newer = commit(repo, {"b.ipynb": "{}"}, "a second notebook")
    second, image = await builder.request(url, newer)
    assert (await builder.outcome(second)).phase is Phase.BUILT
    assert "Cloning" not in builder.log(second) and "From " in builder.log(second), builder.log(second)
    assert run_in(image, "ls ~/*.ipynb | wc -l") == "2"
    again, _ = await builder.request(url, newer)  # the same commit under another image name: no network
    assert (await builder.outcome(again)).phase is Phase.BUILT
    assert "is already here; nothing to fetch" in builder.log(again)
