"""The resolver's handling of launch requests, served as the service serves them, on the in-memory bus.

No broker and no registry: ``kiln_resolver.bootstrap.run_on`` runs the resolver on a ``MemoryBus``
(the same dispatcher, failed events and projection as on Kafka), its providers resolve real
repositories on the loopback git host (tests/support/githost.py), and the registry is a set of
image names. The real registry and broker are in test_resolver_bus.py.
"""

from __future__ import annotations

import uuid

import pytest

from kiln_resolver.settings import Settings
from kilnbus import LaunchRequested, MemoryBus, Phase, PhaseEvent

from ..bus.helpers import wait_until
from ..support.githost import GitHost, git
from .harness import FakeRegistry, Resolving


async def test_uncached_repository_goes_to_the_builder_keyed_by_image(resolving: Resolving, githost: GitHost) -> None:
    rid = await resolving.launch("gh", "org/demo/main", launch_host="http://127.0.0.1:8585/", hub_user="ada",
                                 client_ip="198.51.100.7")
    resolved = resolving.outcome(rid)
    sha = git(githost.root / "org" / "demo", "rev-parse", "main")
    assert resolved.phase is Phase.RESOLVED and resolved.ref == sha and resolved.service == "resolver"
    assert (resolved.provider, resolved.spec) == ("gh", "org/demo/main")
    [(key, build)] = resolving.builds()
    assert key == build.image_name == resolved.image_name
    assert build.image_name.startswith("127.0.0.1:5000/kiln/binder-org-2ddemo-") and build.image_name.endswith(":" + sha)
    assert (build.request_id, build.repo_url, build.ref, build.resolved_spec, build.launch) == (
        rid, f"{githost.url}/org/demo", sha, f"org/demo/{sha}", True)
    assert (build.launch_host, build.hub_user, build.client_ip) == ("http://127.0.0.1:8585/", "ada", "198.51.100.7")
    assert resolving.launches() == []


async def test_cached_image_is_launched_directly(resolving: Resolving, registry: FakeRegistry) -> None:
    await resolving.launch("gh", "org/demo/main")
    [(_, build)] = resolving.builds()
    registry.push(build.image_name)
    rid = await resolving.launch("gh", "org/demo/main", launch_host="http://127.0.0.1:8585/", hub_user="ada",
                                 client_ip="198.51.100.7")
    built = resolving.outcome(rid)
    assert (built.phase, built.image_name, built.message) == (Phase.BUILT, build.image_name, "Found built image, launching...\n")
    [launch] = resolving.launches()
    expected = {"request_id": rid, "image_name": build.image_name, "repo_url": build.repo_url, "ref": build.ref,
                "provider": "gh", "spec": "org/demo/main", "ref_url": build.ref_url, "resolved_spec": build.resolved_spec,
                "launch_host": "http://127.0.0.1:8585/", "hub_user": "ada", "client_ip": "198.51.100.7"}
    assert {name: getattr(launch, name) for name in expected} == expected
    assert len(resolving.builds()) == 1, "nothing more to build"


async def test_a_build_only_request_for_a_cached_image_is_ready_without_a_launch(resolving: Resolving,
                                                                                  registry: FakeRegistry) -> None:
    await resolving.launch("gh", "org/demo/main")
    [(_, build)] = resolving.builds()
    # Control: not cached, a build-only request is a build request that asks for no launch.
    await resolving.launch("gh", "org/demo/main", build_only=True)
    assert [b.launch for _, b in resolving.builds()] == [True, False]
    registry.push(build.image_name)
    ready = resolving.outcome(await resolving.launch("gh", "org/demo/main", build_only=True))
    assert (ready.phase, ready.image_name, ready.message, ready.url) == (Phase.READY, build.image_name,
                                                                         "Done! Found built image\n", None)
    assert resolving.launches() == [] and len(resolving.builds()) == 2


@pytest.mark.parametrize("provider, spec, cause, status, text", [
    ("gh", "org/nope/main", "repo_not_found", 404, "Repository org/nope not found"),
    ("gh", "org/demo/no-such-ref", "ref_not_found", 404, "no such branch, tag or commit"),
    ("gh", "org/banned/main", "banned", 403, "not allowed to launch. It mines cryptocurrency."),
    ("git", "http%3A%2F%2F10.0.0.1%2Frepo.git/HEAD", "private_host", 403, "private network"),
    ("swhid", "swh:1:dir:0123", "unsupported_provider", 400, "cannot launch from 'swhid'"),
])
async def test_failures_say_what_to_do(resolving: Resolving, provider: str, spec: str, cause: str, status: int,
                                       text: str) -> None:
    rid = await resolving.launch(provider, spec)
    failed = resolving.outcome(rid)
    assert (failed.phase, failed.failure_cause, failed.status_code, failed.service) == (Phase.FAILED, cause, status,
                                                                                        "resolver")
    assert text in failed.message and failed.message.endswith("\n")
    assert (failed.provider, failed.spec) == (provider, spec)
    assert resolving.builds() == [] and resolving.launches() == []
    assert resolving.bus.records(resolving.bus.topics.dead_letter) == [], "an answer for the user, not poison"


async def test_an_unreachable_registry_fails_the_launch_after_resolving(resolving: Resolving, registry: FakeRegistry,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    registry.down = True
    rid = await resolving.launch("gh", "org/demo/main")
    phases = [e.phase for e in resolving.events(rid)]
    failed = resolving.outcome(rid)
    assert phases == [Phase.RESOLVED, Phase.FAILED], "the user heard the commit, then the failure, each once"
    assert (failed.failure_cause, failed.status_code) == ("registry_unreachable", 503)
    assert failed.message == "Kiln cannot reach its image registry right now; please try again shortly.\n"
    assert "could not be reached" in caplog.text, "control: the details are in the log"
    assert resolving.builds() == [] and resolving.bus.records(resolving.bus.topics.dead_letter) == []


async def test_master_falls_back_to_the_default_branch(resolving: Resolving, githost: GitHost) -> None:
    rid = await resolving.launch("gh", "org/demo/master")
    assert resolving.outcome(rid).ref == git(githost.root / "org" / "demo", "rev-parse", "main")
    [notice] = [e for e in resolving.events(rid) if e.phase is Phase.WAITING]
    assert "Please update your links" in notice.message


async def test_a_request_delivered_twice_is_handled_once(resolving: Resolving) -> None:
    rid = uuid.uuid4().hex
    bus = resolving.bus
    for _ in range(2):  # both in the log before the resolver takes either
        await bus.publish(bus.topics.launch_requested, rid, LaunchRequested(request_id=rid, provider="gh",
                                                                            spec="org/demo/main"))
    await bus.drained(resolving.settings.group_id("kiln-resolver"))
    assert len(resolving.builds()) == 1
    assert [e.phase for e in resolving.events(rid)] == [Phase.RESOLVED]
    # Control: another request for the same repository is handled.
    await resolving.launch("gh", "org/demo/main")
    assert len(resolving.builds()) == 2


async def test_quota_counts_running_servers_from_the_log_and_a_new_resolver_counts_the_same(
        settings: Settings, registry: FakeRegistry) -> None:
    bus = MemoryBus(settings)
    quota = settings.model_copy(update={"per_repo_quota": 1})
    async with Resolving(bus, quota, registry) as resolving:
        first = await resolving.launch("gh", "org/demo/main")
        image = resolving.outcome(first).image_name
        assert image is not None
        # The launcher would say this; here the test plays its ready event.
        await bus.publish(bus.topics.phase_events, first, PhaseEvent(
            request_id=first, phase=Phase.READY, service="launcher", url="http://127.0.0.1:8000/user/x/", image_name=image))
        await wait_until(lambda: resolving.resolver.running.count(image) == 1, 5, "the ready event folded in")
        refused = resolving.outcome(await resolving.launch("gh", "org/demo/main"))
        assert (refused.phase, refused.failure_cause, refused.status_code) == (Phase.FAILED, "repo_quota", 429)
        assert "Too many users running" in refused.message

    # A new resolver rebuilds the count from the log before it answers.
    async with Resolving(bus, quota, registry) as resolving:
        assert resolving.outcome(await resolving.launch("gh", "org/demo/main")).failure_cause == "repo_quota"
        # The server stops; the repository may launch again.
        await bus.publish(bus.topics.phase_events, first, PhaseEvent(request_id=first, phase=Phase.STOPPED,
                                                                     service="launcher"))
        await wait_until(lambda: resolving.resolver.running.count(image) == 0, 5, "the stopped event folded in")
        assert resolving.outcome(await resolving.launch("gh", "org/demo/main")).phase is Phase.RESOLVED
