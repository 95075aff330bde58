"""The builder's handler in the fast tier: its Routes served on a MemoryBus, with a fake executor,
registry and git fetcher (tests/builder/fakes.py). No Kafka, Docker or git; every wait is on a
condition. What needs the real engine stays in test_build_rules.py and test_build_lifecycle.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kiln_builder import builds as builds_module
from kiln_builder.buildpacks import REPO_SUBDIR
from kiln_builder.errors import BuildFailed
from kilnbus import HubLaunchRequested, Phase

from .fakes import served

REQUIREMENTS = {"requirements.txt": "six==1.16.0\n", "index.ipynb": "{}"}
REPOS = Path(__file__).parent / "repos"


async def test_a_build_is_pushed_then_built_and_its_launch_requested(tmp_path: Path) -> None:
    async with served(tmp_path) as h:
        url, ref = h.repo(REQUIREMENTS)
        request = await h.request(url, ref)
        outcome = await h.outcome(request.request_id)
        await h.drained()
        assert (outcome.phase, outcome.message, outcome.image_name) == (Phase.BUILT, "Built image, launching...\n",
                                                                         request.image_name)
        assert outcome.status_code is None and outcome.service == "builder"
        phases = [e.phase for e in h.events(request.request_id)]
        assert phases[0] is Phase.WAITING and phases[-1] is Phase.BUILT
        assert {Phase.FETCHING, Phase.BUILDING, Phase.PUSHING} <= set(phases)
        assert phases.index(Phase.PUSHING) > max(i for i, p in enumerate(phases) if p is Phase.BUILDING)
        assert h.registry.pushes[0] == request.image_name, "pushed before it is called built"
        assert h.launches() == [HubLaunchRequested.from_build(request)]
        # Two stages: the environment image from the environment files alone, then the repository on it.
        env, repo = h.executor.builds
        assert env.tag.startswith("127.0.0.1:5000/kiln/env:") and "requirements.txt" in env.files
        assert "index.ipynb" not in env.files, "the environment stage sees only the environment files"
        assert repo.tag == request.image_name and env.tag in repo.dockerfile
        assert f"{REPO_SUBDIR}/index.ipynb" in repo.files or "index.ipynb" in repo.files
        assert repo.options["labels"] is None and repo.options["timeout_s"] == 60
        assert h.registry.pushes == [request.image_name, env.tag], "the shared environment image is pushed too"


async def test_a_build_only_request_ends_ready_and_asks_for_no_launch(tmp_path: Path) -> None:
    async with served(tmp_path) as h:
        url, ref = h.repo(REQUIREMENTS)
        only = await h.request(url, ref, launch=False)
        launched = await h.request(url, ref, image="reg.example.org/other:1")  # control: the same, launching
        await h.outcome(only.request_id)
        await h.outcome(launched.request_id)
        await h.drained()
        tail = [(e.phase, e.message) for e in h.events(only.request_id)][-2:]
        assert tail == [(Phase.BUILT, "Built image, launching...\n"), (Phase.READY, "Done! Image built\n")]
        assert [launch.request_id for launch in h.launches()] == [launched.request_id]
        assert Phase.READY not in [e.phase for e in h.events(launched.request_id)]


async def test_concurrent_requests_for_one_image_share_one_build(tmp_path: Path) -> None:
    async with served(tmp_path) as h:
        url, ref = h.repo({"Dockerfile": "FROM 127.0.0.1:5000/kiln/base:latest\nRUN echo hi\n"})
        image = "reg.example.org/shared:1"
        h.executor.gates[image] = asyncio.Event()
        first = await h.request(url, ref, image=image)
        await h.until(lambda: image in h.executor.started, "the first build started")
        others = [await h.request(url, ref, image=image) for _ in range(3)]
        await h.until(lambda: all(any("already building this image" in e.message for e in h.events(o.request_id))
                                  for o in others), "the others attached")
        h.executor.gates[image].set()
        outcomes = [await h.outcome(r.request_id) for r in [first, *others]]
        await h.drained()
        assert [o.phase for o in outcomes] == [Phase.BUILT] * 4
        assert len(h.executor.built(image)) == 1, "one build for all four"
        for other in others:
            assert "Step 1/2 : FROM base" in h.log(other.request_id), "a late request first receives the log so far"
        assert sorted(launch.request_id for launch in h.launches()) == sorted(r.request_id for r in [first, *others])


async def test_the_repository_dockerfile_is_built_as_it_stands(tmp_path: Path) -> None:
    async with served(tmp_path) as h:
        dockerfile = "FROM 127.0.0.1:5000/kiln/base:latest\nRUN echo built from the repository's Dockerfile\n"
        url, ref = h.repo({"Dockerfile": dockerfile, "data.csv": "a,b\n"})
        request = await h.request(url, ref)
        assert (await h.outcome(request.request_id)).phase is Phase.BUILT
        (call,) = h.executor.builds
        assert call.dockerfile == dockerfile and call.files["data.csv"] == "a,b\n"
        assert call.options["buildargs"] == {"NB_USER": "jovyan", "NB_UID": "1000"}
        # A base image with ONBUILD triggers is refused before anything is built (a control just above).
        h.executor.onbuild["127.0.0.1:5000/kiln/base:latest"] = ["ADD http://127.0.0.1:9/x /x"]
        url2, ref2 = h.repo({"Dockerfile": dockerfile})
        refused = await h.request(url2, ref2)
        outcome = await h.outcome(refused.request_id)
        assert (outcome.phase, outcome.failure_cause) == (Phase.FAILED, "dockerfile_refused")
        assert "has ONBUILD triggers, which Kiln does not run" in outcome.message
        assert len(h.executor.builds) == 1


@pytest.mark.parametrize(("case", "cause", "text"), [
    ("pip", "pip_requirement", "pip could not install nosuch==1.0: no version of it on PyPI matches."),
    ("plain", "build_failed", ("The build failed: The command '/bin/sh -c make' returned a non-zero code: 2\n"
                               "Last lines of the log:\n")),
    ("fetch", "fetch_failed", "Commit 0000000000000000000000000000000000000bad is not in https://git.example.org/missing."),
    ("push", "push_failed", "Pushing the image to the registry failed"),
])
async def test_a_failed_build_says_why_with_its_cause(tmp_path: Path, case: str, cause: str, text: str) -> None:
    async with served(tmp_path) as h:
        url, ref = h.repo(REQUIREMENTS)
        image = f"reg.example.org/{case}:1"
        if case == "pip":
            h.executor.log_lines = ["Collecting nosuch==1.0\n", "ERROR: No matching distribution found for nosuch==1.0\n"]
            h.executor.fail[image] = BuildFailed("The command '/bin/sh -c pip install' returned a non-zero code: 1")
        elif case == "plain":
            h.executor.fail[image] = BuildFailed("The command '/bin/sh -c make' returned a non-zero code: 2")
        elif case == "fetch":
            url, ref = "https://git.example.org/missing", f"{0xbad:040x}"
        else:
            h.executor.push = fail_push  # type: ignore[method-assign]
        request = await h.request(url, ref, image=image)
        outcome = await h.outcome(request.request_id)
        await h.drained()
        assert (outcome.phase, outcome.failure_cause) == (Phase.FAILED, cause), outcome
        assert text in outcome.message and outcome.message.endswith("\n")
        assert outcome.status_code is None and outcome.image_name == image
        assert h.launches() == [] and h.registry.pushes == []
        # Control: the builder is not stuck; the next request builds.
        h.executor.push = type(h.executor).push.__get__(h.executor)  # type: ignore[method-assign]
        h.executor.log_lines = []
        good_url, good_ref = h.repo(REQUIREMENTS)
        good = await h.request(good_url, good_ref, image="reg.example.org/good:1")
        assert (await h.outcome(good.request_id)).phase is Phase.BUILT
        assert [launch.request_id for launch in h.launches()] == [good.request_id]


async def fail_push(image: str, on_progress: object) -> None:
    raise BuildFailed("Pushing the image to the registry failed: denied", "push_failed")


async def test_a_build_past_its_time_limit_is_stopped_and_the_queue_moves_on(tmp_path: Path) -> None:
    async with served(tmp_path, concurrent_builds=1, build_timeout_s=0.6) as h:
        url, ref = h.repo({"Dockerfile": "FROM 127.0.0.1:5000/kiln/base:latest\n"})
        slow_image = "reg.example.org/slow:1"
        h.executor.hang.add(slow_image)  # the executor never returns: the builder's own limit stops it
        slow = await h.request(url, ref, image=slow_image)
        await h.until(lambda: slow_image in h.executor.started, "the slow build started")
        queued = await h.request(url, ref, image="reg.example.org/queued:1")
        outcome = await h.outcome(slow.request_id)
        assert (outcome.phase, outcome.failure_cause) == (Phase.FAILED, "build_timeout")
        assert outcome.message == "The build took longer than the limit of 1 seconds and was stopped.\n"
        assert h.executor.interrupted == {slow_image}
        assert h.executor.builds[0].options["timeout_s"] == 0.6, "the executor is given the limit first"
        waits = [e for e in h.events(queued.request_id) if e.phase is Phase.WAITING]
        assert waits[0].queue_position == 0 and "1 build(s) ahead of yours" in waits[0].message
        assert (await h.outcome(queued.request_id)).phase is Phase.BUILT, "the slot was freed"


async def test_log_lines_stream_in_order_cut_to_length_before_the_outcome(tmp_path: Path) -> None:
    async with served(tmp_path, max_log_line_chars=100) as h:
        h.executor.log_lines = [f"line {i}\n" for i in range(50)] + ["x" * 300 + "\n", "last\n"]
        url, ref = h.repo({"Dockerfile": "FROM 127.0.0.1:5000/kiln/base:latest\n"})
        request = await h.request(url, ref)
        await h.outcome(request.request_id)
        events = h.events(request.request_id)
        building = [e.message for e in events if e.phase is Phase.BUILDING]
        executor_lines = building[building.index("line 0\n"):]
        assert executor_lines[:50] == [f"line {i}\n" for i in range(50)]
        assert executor_lines[50] == "x" * 100 + " [Kiln: line truncated, 300 characters]\n"
        assert executor_lines[51] == "last\n"
        assert [e.phase for e in events].index(Phase.BUILT) == len(events) - 1


async def test_a_lost_log_line_fails_its_own_build_and_no_other(tmp_path: Path) -> None:
    async with served(tmp_path) as h:
        url, ref = h.repo({"Dockerfile": "FROM 127.0.0.1:5000/kiln/base:latest\n"})
        a_image, b_image = "reg.example.org/a:1", "reg.example.org/b:1"
        h.executor.gates[a_image] = asyncio.Event()  # a holds its lost send while b builds
        h.publisher.lose_for.add("req-a")
        a = await h.request(url, ref, image=a_image, request_id="req-a")
        await h.until(lambda: a_image in h.executor.started, "a's build started")
        b = await h.request(url, ref, image=b_image)
        assert (await h.outcome(b.request_id)).phase is Phase.BUILT
        assert [launch.request_id for launch in h.launches()] == [b.request_id]
        # Positive control: the lost send is not ignored; it fails the build it belonged to.
        h.executor.gates[a_image].set()
        a_final = await h.outcome(a.request_id)
        assert (a_final.phase, a_final.failure_cause) == (Phase.FAILED, "internal_error")
        assert a_final.message.startswith("The builder hit an unexpected error.")
        await h.drained()
        assert [launch.request_id for launch in h.launches()] == [b.request_id]


async def test_a_joiners_lost_send_fails_that_request_alone_and_the_shared_build_goes_on(tmp_path: Path) -> None:
    async with served(tmp_path) as h:
        url, ref = h.repo({"Dockerfile": "FROM 127.0.0.1:5000/kiln/base:latest\n"})
        image = "reg.example.org/shared-lost:1"
        h.executor.gates[image] = asyncio.Event()
        first = await h.request(url, ref, image=image, request_id="first")
        await h.until(lambda: image in h.executor.started, "the build started")
        h.publisher.lose_for.add("joiner")  # the joiner's first send (while it is sent the log so far) is lost
        joiner = await h.request(url, ref, image=image, request_id="joiner")
        await h.until(lambda: "Step 2/2 : RUN make" in h.log(joiner.request_id), "the joiner was sent the log so far")
        h.executor.gates[image].set()
        joined = await h.outcome(joiner.request_id)
        assert (joined.phase, joined.failure_cause) == (Phase.FAILED, "internal_error"), "its lost send fails it"
        assert joined.message.startswith("The builder hit an unexpected error.")
        # Control: the build went on, once, for the request whose events were delivered.
        assert (await h.outcome(first.request_id)).phase is Phase.BUILT
        await h.drained()
        assert [launch.request_id for launch in h.launches()] == [first.request_id]
        assert len(h.executor.built(image)) == 1 and h.registry.pushes == [image]


async def test_a_joiners_replay_does_not_hold_back_the_build_or_other_joiners(tmp_path: Path) -> None:
    async with served(tmp_path) as h:
        h.executor.log_lines = [f"line {i}\n" for i in range(300)]
        url, ref = h.repo({"Dockerfile": "FROM 127.0.0.1:5000/kiln/base:latest\n"})
        image = "reg.example.org/shared-slow:1"
        h.executor.gates[image] = asyncio.Event()
        first = await h.request(url, ref, image=image, request_id="first")
        await h.until(lambda: "line 299\n" in h.log(first.request_id), "the build printed its log")
        h.publisher.hold_after["slow"] = 10  # the slow joiner's publisher stalls ten events into its replay
        slow = await h.request(url, ref, image=image, request_id="slow")
        await h.until(lambda: len(h.events(slow.request_id)) == 10, "the slow joiner's replay under way")
        quick = await h.request(url, ref, image=image, request_id="quick")
        await h.until(lambda: "line 299\n" in h.log(quick.request_id), "another joiner's replay, beside the stalled one")
        h.executor.gates[image].set()
        # The build's new events reach the others while the slow joiner's replay is still stalled.
        assert (await h.outcome(first.request_id)).phase is Phase.BUILT
        assert (await h.outcome(quick.request_id)).phase is Phase.BUILT
        assert len(h.events(slow.request_id)) == 10 and h.final(slow.request_id) is None, "control: still stalled"
        h.publisher.released.set()
        assert (await h.outcome(slow.request_id)).phase is Phase.BUILT
        await h.drained()
        before = [(e.phase, e.message) for e in h.events(first.request_id)]
        for joiner in (slow, quick):
            got = [(e.phase, e.message) for e in h.events(joiner.request_id)]
            assert got[0] == (Phase.WAITING, "Another launch is already building this image; following its build.\n")
            # The log so far, then what the build said meanwhile, in order: nothing lost, nothing twice.
            assert got[1:] == before, joiner.request_id
        assert sorted(launch.request_id for launch in h.launches()) == ["first", "quick", "slow"]


async def test_a_request_delivered_twice_while_it_builds_is_answered_once(tmp_path: Path) -> None:
    async with served(tmp_path) as h:
        url, ref = h.repo({"Dockerfile": "FROM 127.0.0.1:5000/kiln/base:latest\n"})
        image = "reg.example.org/twice:1"
        h.executor.gates[image] = asyncio.Event()
        request = await h.request(url, ref, image=image)
        await h.until(lambda: image in h.executor.started, "the build started")
        await h.bus.publish(h.bus.topics.build_requested, image, request)  # the same record again
        await h.until(lambda: sum(1 for e in h.events(request.request_id) if e.phase is Phase.WAITING) >= 1, "waiting")
        h.executor.gates[image].set()
        await h.outcome(request.request_id)
        await h.drained()  # both deliveries handled
        assert [e.phase for e in h.events(request.request_id)].count(Phase.BUILT) == 1
        assert [launch.request_id for launch in h.launches()] == [request.request_id]  # control: it was launched


async def test_an_attempt_begins_when_a_build_takes_its_slot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    begun: list[str] = []

    async def begin_attempt() -> None:
        task = asyncio.current_task()
        assert task is not None
        begun.append(task.get_name())

    monkeypatch.setattr(builds_module, "begin_attempt", begin_attempt)
    async with served(tmp_path, concurrent_builds=1) as h:
        url, ref = h.repo({"Dockerfile": "FROM 127.0.0.1:5000/kiln/base:latest\n"})
        first, second = "reg.example.org/first:1", "reg.example.org/second:1"
        h.executor.gates[first] = asyncio.Event()
        await h.request(url, ref, image=first)
        await h.until(lambda: first in h.executor.started, "the first build started")
        queued = await h.request(url, ref, image=second)
        await h.until(lambda: any(e.phase is Phase.WAITING for e in h.events(queued.request_id)), "the second queued")
        assert begun == [f"build {first}"], "a request waiting in the queue is not blamed for a crash"
        h.executor.gates[first].set()
        await h.outcome(queued.request_id)
        assert begun == [f"build {first}", f"build {second}"]  # control: it is, once its build runs


async def test_stopping_mid_build_cancels_it_and_leaves_the_request_for_the_next_builder(tmp_path: Path) -> None:
    async with served(tmp_path) as h:
        url, ref = h.repo({"Dockerfile": "FROM 127.0.0.1:5000/kiln/base:latest\n"})
        done = await h.request(url, ref, image="reg.example.org/done:1")
        await h.outcome(done.request_id)
        image = "reg.example.org/stopped:1"
        h.executor.gates[image] = asyncio.Event()
        request = await h.request(url, ref, image=image)
        await h.until(lambda: image in h.executor.started, "the build started")
        assert h.builder.builds.active == 1 and not h.executor.interrupted, "control: it runs until stopped"
        await h.stop_serving()
        assert h.executor.interrupted == {image} and h.builder.builds.active == 0
        assert h.final(request.request_id) is None and [x.request_id for x in h.launches()] == [done.request_id]
        committed = h.bus.committed(h.group)
        stopped_at, done_at = h.positions[request.request_id], h.positions[done.request_id]
        assert committed[(stopped_at.topic, stopped_at.partition)] <= stopped_at.offset, "delivered again to the next builder"
        assert committed[(done_at.topic, done_at.partition)] > done_at.offset, "control: a handled request is committed"


async def test_aclose_cancels_and_awaits_every_build(tmp_path: Path) -> None:
    async with served(tmp_path) as h:
        url, ref = h.repo({"Dockerfile": "FROM 127.0.0.1:5000/kiln/base:latest\n"})
        image = "reg.example.org/closed:1"
        h.executor.gates[image] = asyncio.Event()
        await h.request(url, ref, image=image)
        await h.until(lambda: image in h.executor.started, "the build started")
        assert h.builder.builds.active == 1 and not h.executor.interrupted, "control: running until stopped"
        await h.builder.aclose()
        assert h.executor.interrupted == {image} and h.builder.builds.active == 0


async def test_the_reporters_send_queues_through_a_producer_and_publishes_at_once_on_a_bus() -> None:
    from kilnbus import MemoryBus, PhaseEvent, PhaseReporter

    from .fakes import LossyPublisher

    bus = MemoryBus()
    await bus.start()
    direct = PhaseReporter(bus, bus.topics, "builder")  # a MemoryBus cannot queue: published before send returns
    sent = await direct.send("r1", Phase.BUILDING, message="one\n")
    assert sent.done() and [e.message for e in bus.records(bus.topics.phase_events) if isinstance(e, PhaseEvent)] == ["one\n"]
    lossy = LossyPublisher(bus)
    lossy.lose_for.add("r2")
    queued = PhaseReporter(lossy, bus.topics, "builder")  # one with send(): its future is the acknowledgement
    lost = await queued.send("r2", Phase.BUILDING, message="lost\n")
    kept = await queued.send("r2", Phase.BUILDING, message="kept\n")
    with pytest.raises(ConnectionResetError):
        await lost
    await kept  # control: the next one is acknowledged


@pytest.mark.parametrize(("repo", "text"), [
    # Counted, not listed: messages never repeat a repository file's content.
    ("julia", "This repository needs Julia (Project.toml), which this Binder cannot build"),
    ("environment_bad", "environment.yml is not valid YAML at line 5"),
    ("runtime_bad", "asks for Python 2.7; this Binder offers Python 3.11"),
])
async def test_an_environment_kiln_cannot_build_is_refused_before_building(tmp_path: Path, repo: str, text: str) -> None:
    async with served(tmp_path) as h:
        url, ref = h.repo({p.relative_to(REPOS / repo).as_posix(): p.read_text() for p in (REPOS / repo).rglob("*")
                           if p.is_file()})
        refused = await h.request(url, ref)
        good = await h.request(*h.repo(REQUIREMENTS))  # control: a request beside it builds
        outcome = await h.outcome(refused.request_id)
        assert (outcome.phase, outcome.failure_cause) == (Phase.FAILED, "unsupported_environment")
        assert text in outcome.message, outcome.message
        assert (await h.outcome(good.request_id)).phase is Phase.BUILT
        assert {b.tag for b in h.executor.builds if b.tag == refused.image_name} == set()
        assert any(b.tag == good.image_name for b in h.executor.builds)
