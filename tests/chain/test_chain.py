"""A launch followed through every service, in memory: what a client sees and what the log says.

Read this file first to learn how a request travels through Kiln (chain.py shows how the services
are wired). Every wait is on a condition of the bus; every check that something did not happen
stands beside one showing the same chain does make it happen.
"""

from __future__ import annotations

import asyncio
import json

from kiln_analytics.table import RequestTable
from kiln_builder.errors import BuildFailed
from kilnbus import Phase
from kilnbus.sealing import Sealer
from kilnbus.servers import RunningServers

from .chain import HUB_PUBLIC, OWNER, PEER, REPO, Chain, Stream, collapsed, offset_of

LAUNCH = ["waiting", "fetching", "building", "pushing", "built", "launching", "ready"]
# The same launch in the log: the gateway's accepted opens it, the resolver's resolved follows;
# clients are shown neither (kiln_gateway.projection).
LOGGED = ["accepted", "resolved", *LAUNCH]
SERVICES = {"accepted": "gateway", "resolved": "resolver", "waiting": "builder", "fetching": "builder",
            "building": "builder", "pushing": "builder", "built": "builder", "launching": "launcher",
            "ready": "launcher"}


def server_of(stream: Stream) -> tuple[str, str]:
    """(hub user, server name) of a ready stream's URL: ``<hub>/user/<user>/<server>/``."""
    user, server = stream.last["url"].removeprefix(f"{HUB_PUBLIC}/user/").strip("/").split("/")
    return user, server


async def test_a_launch_goes_through_every_service_to_a_running_server(chain: Chain) -> None:
    image = chain.image()
    stream = await chain.launch()
    rid = stream.request_id
    assert stream.status == 200

    # What the client saw: BinderHub's phases in order, exactly the client's part of the request's log.
    assert collapsed(stream.phases) == LAUNCH
    assert [(d["phase"], d["message"]) for d in stream.data] == chain.client_view(rid)
    log = chain.events(rid)
    assert collapsed([e.phase.value for e in log]) == LOGGED
    assert {e.phase.value: e.service for e in log} == SERVICES
    resolved = next(e for e in log if e.phase is Phase.RESOLVED)
    assert (resolved.ref, resolved.image_name) == (chain.sha(), image)

    # The build: git's words from the real fetcher, then the fake executor's log lines, then the push.
    fetched = "".join(d["message"] for d in stream.data if d["phase"] == "fetching")
    built_log = "".join(d["message"] for d in stream.data if d["phase"] == "building")
    assert f"{chain.githost.url}/{OWNER}/{REPO}" in fetched
    assert built_log.count("".join(chain.executor.log_lines)) == 2, "the environment image, then the repository's"
    assert [b.tag for b in chain.executor.builds][-1] == image and chain.registry.pushes[0] == image
    assert next(d for d in stream.data if d["phase"] == "pushing")["message"] == f"Pushing {image}\n"
    assert next(d for d in stream.data if d["phase"] == "built")["imageName"] == image

    # Ready: the fake hub's server, and the token the hub minted for it, unsealed by the gateway.
    ready = stream.last
    user, server = server_of(stream)
    assert ready["url"] == f"{HUB_PUBLIC}/user/{user}/{server}/" and ready["token"] == f"token-for-{user}/{server}"
    assert (ready["image"], ready["binder_request"], ready["binder_client_ip"]) == (image, "v2/gh/org/demo/main", PEER)
    assert ready["binder_persistent_request"] == f"v2/gh/org/demo/{chain.sha()}"
    sealed = log[-1].sealed_token
    assert sealed is not None and sealed.decode() not in json.dumps(stream.events), "the sealed form stays on the bus"
    # Control: the bus did carry the token, sealed for this request and this URL.
    opened = Sealer([chain.seal_key]).open(sealed, request_id=rid)
    assert (opened.secret, opened.url) == (ready["token"], ready["url"])

    # The hub was asked to start that image, for the temporary user named for this launch.
    assert chain.hub.starts == 1
    options = chain.hub.users[user][server]["user_options"]
    assert (options["image"], options["binder_request"], options["binder_client_ip"]) == (
        image, "v2/gh/org/demo/main", PEER)
    assert chain.app.state.router.open_streams == 0, "the stream's route is gone with it"


async def test_a_second_launch_of_the_same_commit_is_a_cache_hit(chain: Chain) -> None:
    first = await chain.launch()
    builds = len(chain.executor.builds)
    assert builds == 2 and collapsed(first.phases) == LAUNCH, "control: the first launch built its image"

    second = await chain.launch()
    assert collapsed(second.phases) == ["built", "launching", "ready"]
    assert second.data[0] == {"phase": "built", "message": "Found built image, launching...\n",
                              "imageName": chain.image()}
    assert len(chain.executor.builds) == builds, "the executor was not called again"
    topics = chain.bus.topics
    assert chain.request_ids(topics.build_requested) == [first.request_id]
    assert chain.request_ids(topics.hub_launch_requested) == [first.request_id, second.request_id]
    assert {e.service for e in chain.events(second.request_id)} == {"gateway", "resolver", "launcher"}
    assert server_of(first) != server_of(second) and chain.hub.starts == 2


async def test_two_launches_of_an_uncached_image_share_one_build(chain: Chain) -> None:
    image = chain.image()
    gate = chain.executor.gates[image] = asyncio.Event()  # the repository's build holds here
    first = asyncio.create_task(chain.launch())
    await chain.until(lambda: image in chain.executor.started, "the first launch's build to run")
    second = asyncio.create_task(chain.launch())
    b_id = await chain.follower()
    a_id = next(r for r in chain.request_ids(chain.bus.topics.build_requested) if r != b_id)

    def caught_up() -> bool:  # the log so far replayed to the second (the build holds: the first's is complete)
        return chain.client_view(b_id)[1:] == chain.client_view(a_id)

    await chain.until(caught_up, "the second launch to be sent the build's log so far")
    gate.set()
    a, b = await asyncio.gather(first, second)

    assert a.last["phase"] == b.last["phase"] == "ready" and server_of(a) != server_of(b)
    assert len(chain.executor.built(image)) == 1 and chain.registry.pushes.count(image) == 1
    assert len(chain.request_ids(chain.bus.topics.build_requested)) == 2, "control: both asked the builder"
    # The second is told it follows, then gets every event of the same build; the launches part after it.
    assert b.data[0]["message"] == "Another launch is already building this image; following its build.\n"
    assert collapsed(b.phases) == LAUNCH
    view_a, view_b = chain.client_view(a.request_id), chain.client_view(b.request_id)
    built = [p for p, _ in view_a].index("built")
    assert view_b[1:built + 2] == view_a[:built + 1]


async def test_a_follower_gets_the_builds_log_in_order_while_the_build_goes_on(chain: Chain) -> None:
    image = chain.image()
    gate = chain.executor.gates[image] = asyncio.Event()
    first = asyncio.create_task(chain.launch())
    await chain.until(lambda: image in chain.executor.started, "the first launch's build to run")
    second = asyncio.create_task(chain.launch())
    await chain.follower()
    gate.set()  # the build goes on while the second is still being sent its log so far
    a, b = await asyncio.gather(first, second)
    assert a.last["phase"] == b.last["phase"] == "ready", "control: both launched"
    assert collapsed(b.phases) == LAUNCH


async def test_a_failing_build_ends_the_stream_with_the_builders_failure(chain: Chain) -> None:
    image = chain.image()
    chain.executor.fail[image] = BuildFailed("The command '/bin/sh -c make' returned a non-zero code: 2")
    stream = await chain.launch()
    failed = chain.events(stream.request_id)[-1]
    assert (failed.phase, failed.service, failed.failure_cause) == (Phase.FAILED, "builder", "build_failed")
    assert stream.last == {"phase": "failed", "message": failed.message}, "as BinderHub's build failures: no status"
    assert failed.message.startswith("The build failed: The command '/bin/sh -c make' returned a non-zero code: 2")
    assert "Step 2/2 : RUN make" in failed.message, "the log's last lines"
    assert collapsed(stream.phases) == ["waiting", "fetching", "building", "failed"]
    assert chain.hub.starts == 0 and chain.request_ids(chain.bus.topics.hub_launch_requested) == []

    # Control: the same chain, the build no longer failing, gets to the hub.
    del chain.executor.fail[image]
    assert (await chain.launch()).last["phase"] == "ready" and chain.hub.starts == 1


async def test_an_unknown_ref_ends_the_stream_with_the_resolvers_failure(chain: Chain) -> None:
    stream = await chain.launch(f"/build/gh/{OWNER}/{REPO}/no-such-ref")
    failed = chain.events(stream.request_id)[-1]
    assert (failed.phase, failed.service, failed.failure_cause, failed.status_code) == (
        Phase.FAILED, "resolver", "ref_not_found", 404)
    assert stream.data == [{"phase": "failed", "status_code": 404, "message": failed.message}]
    assert "no such branch, tag or commit" in failed.message
    assert chain.request_ids(chain.bus.topics.build_requested) == [] and chain.executor.builds == []

    # Control: a ref the git host has goes on to the builder.
    assert (await chain.launch()).last["phase"] == "ready"
    assert len(chain.request_ids(chain.bus.topics.build_requested)) == 1


async def test_a_hub_that_cannot_spawn_ends_the_stream_with_the_launchers_failure(chain: Chain) -> None:
    image = chain.image()
    chain.hub.refusals.append(f"image {image} not present")  # what DockerSpawner says of a missing image
    stream = await chain.launch()
    failed = chain.events(stream.request_id)[-1]
    assert (failed.phase, failed.service, failed.failure_cause, failed.status_code) == (
        Phase.FAILED, "launcher", "image_missing", 500)
    assert stream.last == {"phase": "failed", "status_code": 500,
                           "message": f"The server failed to start: image {image} not present\n"}
    assert collapsed(stream.phases)[-3:] == ["built", "launching", "failed"]
    assert (chain.hub.starts, chain.hub.stops) == (1, 1), "asked once (not retried), and the half-started server removed"
    assert not any(chain.hub.users.values())

    # Control: the next launch (the image is built by now) gets its server.
    again = await chain.launch()
    assert again.last["phase"] == "ready" and sum(len(s) for s in chain.hub.users.values()) == 1


async def test_a_client_that_reconnects_gets_exactly_what_it_missed(chain: Chain) -> None:
    image = chain.image()
    gate = chain.executor.gates[image] = asyncio.Event()
    before = await chain.launch(until=lambda d: d["phase"] == "building")  # then the client drops
    rid = before.request_id
    assert before.phases[-1] == "building" and "ready" not in before.phases

    # While it is away the build goes on and ends.
    await chain.until(lambda: image in chain.executor.started, "the repository's build to run")
    gate.set()
    await chain.until(lambda: any(e.phase is Phase.BUILT for e in chain.events(rid)), "the build's end")

    after = await chain.launch(headers={"Last-Event-ID": before.events[-1]["id"]})
    assert after.status == 200 and after.request_id == rid
    assert after.last["phase"] == "ready" and after.last["token"].startswith("token-for-")
    assert {"pushing", "built"} <= set(after.phases), "control: it did miss part of the launch"
    # Exactly the missed events: the two streams together are the client's view of the log, once each.
    assert [(d["phase"], d["message"]) for d in before.data + after.data] == chain.client_view(rid)
    offsets = [offset_of(e["id"]) for e in before.events + after.events]
    assert offsets == sorted(set(offsets))
    assert len(chain.request_ids(chain.bus.topics.launch_requested)) == 1, "resuming starts no second launch"


async def test_analytics_and_the_running_servers_fold_count_from_the_log(chain: Chain) -> None:
    built = await chain.launch()
    cached = await chain.launch()
    log = chain.events()

    table = RequestTable({})
    table.fold(log)
    index = table.index
    assert index.totals() == {"requests": 2, "ready": 2, "failed": 0, "in_progress": 0, "running_servers": 2}
    timings = index.phase_timings(0, 4e9)
    assert timings["building"]["count"] == 1, "one build"
    assert timings["launching"]["count"] == timings["total"]["count"] == 2
    hit = index.get(cached.request_id)
    assert hit is not None and "building" not in hit.spans and "launching" in hit.spans, "the cache hit"
    assert "building" in index.get(built.request_id).spans  # type: ignore[union-attr]
    assert index.by_repo(0, 4e9, 10) == [{"provider": "gh", "repo": f"{chain.githost.url}/{OWNER}/{REPO}",
                                         "launches": 2, "failures": 0}]

    servers = RunningServers()
    for event in log:
        servers.apply(event)
    assert [s.url for s in servers.servers()] == [built.last["url"], cached.last["url"]]
    assert [s.server_name for s in servers.servers()] == ["/".join(server_of(s)) for s in (built, cached)]
    assert servers.count_for_repo(chain.image()) == 2
    assert [s.server_name for s in servers.servers()] == [
        f"{user}/{name}" for user, models in chain.hub.users.items() for name in models], "the servers the hub runs"
