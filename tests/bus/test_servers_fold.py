"""The one definition of "a running server" (kilnbus.servers): which phase events start and stop one.

Pure and in memory: no broker. Every "not counted" case sits beside the same case that is counted.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kilnbus import Phase, PhaseEvent
from kilnbus.servers import RunningServers, repo_key, server_started, server_stopped

IMAGE = "127.0.0.1:5000/kiln/binder-org-2ddemo-abc123:0123abcd"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def ready(rid: str, image: str = IMAGE, user: str = "alice", url: str | None = "auto", at: int = 0) -> PhaseEvent:
    """The launcher's ready event (url="auto"), or a build-only ready (url=None)."""
    return PhaseEvent(request_id=rid, phase=Phase.READY, service="launcher", timestamp=T0 + timedelta(seconds=at),
                      url=f"http://hub/user/{user}/binder-{rid}/" if url == "auto" else url, image_name=image,
                      server_name=f"{user}/binder-{rid}" if url else None, provider="gh", spec="org/demo/main",
                      repo_url="https://github.com/org/demo")


def stopped(rid: str) -> PhaseEvent:
    return PhaseEvent(request_id=rid, phase=Phase.STOPPED, service="launcher", server_name=f"x/binder-{rid}")


def fold(*events: PhaseEvent) -> RunningServers:
    servers = RunningServers()
    for event in events:
        servers.apply(event)
    return servers


def test_repo_key_drops_the_tag_but_not_a_registry_port() -> None:
    assert repo_key(IMAGE) == "127.0.0.1:5000/kiln/binder-org-2ddemo-abc123"
    assert repo_key("127.0.0.1:5000/kiln/binder-x") == "127.0.0.1:5000/kiln/binder-x"
    assert repo_key("binder-x:latest") == "binder-x"


def test_a_ready_with_a_url_starts_a_server_and_says_which() -> None:
    servers = fold(ready("r1"))
    assert (servers.total, len(servers), "r1" in servers) == (1, 1, True)
    server = servers.get("r1")
    assert server is not None
    assert (server.url, server.server_name, server.hub_user, server.since) == (
        "http://hub/user/alice/binder-r1/", "alice/binder-r1", "alice", T0)
    assert (server.image_name, server.repo, server.provider, server.spec, server.repo_url) == (
        IMAGE, repo_key(IMAGE), "gh", "org/demo/main", "https://github.com/org/demo")
    assert servers.count_for_repo(IMAGE) == 1 and servers.count_for_user("alice") == 1


def test_a_build_only_ready_without_a_url_is_no_server() -> None:
    assert server_started(ready("r1", url=None)) is None
    assert server_started(ready("r1", url="")) is None
    assert fold(ready("b1", url=None), ready("b2", url="")).total == 0
    # Control: the same event with a URL is one.
    assert server_started(ready("r1")) is not None and fold(ready("b1")).total == 1


def test_other_phases_start_and_stop_nothing() -> None:
    others = [PhaseEvent(request_id="r1", phase=p, service="launcher", url="http://hub/user/a/s/", image_name=IMAGE)
              for p in Phase if p not in (Phase.READY, Phase.STOPPED)]
    servers = fold(*others)
    assert servers.total == 0 and not any(server_stopped(e) for e in others)
    servers.apply(ready("r1"))
    for event in others:  # a failed or log line after ready does not end the server
        servers.apply(event)
    assert servers.total == 1


def test_stopped_stops_the_server_of_its_request_only() -> None:
    servers = fold(ready("r1"), ready("r2", user="bob"), stopped("r1"))
    assert [s.request_id for s in servers.servers()] == ["r2"]
    assert (servers.count_for_repo(IMAGE), servers.count_for_user("alice"), servers.count_for_user("bob")) == (1, 0, 1)
    assert servers.get("r1") is None and "r1" not in servers
    # Stopping what never ran, or stopping twice, changes nothing.
    servers.apply(stopped("nope"))
    servers.apply(stopped("r1"))
    assert servers.total == 1


def test_redelivered_events_count_once() -> None:
    once = fold(ready("r1"), ready("r2"), stopped("r2"))
    twice = fold(ready("r1"), ready("r1", at=5), ready("r2"), ready("r2"), stopped("r2"), stopped("r2"))
    assert (once.total, once.per_repo(), once.servers()) == (twice.total, twice.per_repo(), twice.servers())
    assert twice.get("r1") is not None and twice.get("r1").since == T0  # type: ignore[union-attr]  # the first ready's


def test_replaying_a_suffix_of_the_log_again_changes_nothing() -> None:
    log = [ready("r1"), ready("r2"), stopped("r1"), ready("r3", user="bob"), stopped("r3"), ready("r4")]
    servers = fold(*log)
    before = (servers.servers(), servers.per_repo(), servers.count_for_user("alice"), servers.count_for_user("bob"))
    for event in log[2:]:  # a consumer redelivers from its last committed offset
        servers.apply(event)
    assert (servers.servers(), servers.per_repo(), servers.count_for_user("alice"), servers.count_for_user("bob")) == before
    assert [s.request_id for s in servers.servers()] == ["r2", "r4"]


def test_a_ready_after_stopped_runs_again() -> None:
    """The launcher started the server anew for a redelivered request: it is running."""
    servers = fold(ready("r1"), stopped("r1"), ready("r1", at=60))
    assert servers.total == 1 and servers.get("r1").since == T0 + timedelta(seconds=60)  # type: ignore[union-attr]


def test_counts_per_repository_ignore_the_tag_and_forget_stopped_repositories() -> None:
    other_commit = IMAGE.rsplit(":", 1)[0] + ":fedcba98"
    other_repo = "127.0.0.1:5000/kiln/binder-org-2dother-def456:0123abcd"
    servers = fold(ready("r1"), ready("r2", image=other_commit), ready("r3", image=other_repo, user="bob"))
    assert (servers.count_for_repo(IMAGE), servers.count_for_repo(other_repo), servers.total) == (2, 1, 3)
    assert servers.count_for_repo(IMAGE.rsplit(":", 1)[0]) == 2  # asked by key without a tag
    assert (servers.count_for_user("alice"), servers.count_for_user("bob"), servers.count_for_user("carol")) == (2, 1, 0)
    for rid in ("r1", "r2", "r3"):
        servers.apply(stopped(rid))
    assert (servers.total, servers.per_repo(), servers.count_for_repo(IMAGE), servers.count_for_user("alice")) == (0, {}, 0, 0)


def test_a_server_without_image_or_hub_name_still_counts_in_the_total() -> None:
    event = PhaseEvent(request_id="r1", phase=Phase.READY, service="launcher", url="http://hub/user/a/s/")
    servers = fold(event)
    server = servers.get("r1")
    assert servers.total == 1 and server is not None and (server.repo, server.hub_user) == (None, None)
    assert servers.per_repo() == {}
    servers.apply(stopped("r1"))
    assert servers.total == 0
