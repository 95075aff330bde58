"""Analytics without Kafka: folding events into records, the questions the index answers, the
BinderHub launch-event export and the escaping of what the charts show."""

from __future__ import annotations

import json
import random
from pathlib import Path

import jsonschema
import pytest

from kiln_analytics import charts
from kiln_analytics.export import launch_event, launch_lines
from kiln_analytics.index import Index, percentile
from kiln_analytics.requests import RequestRecord, fold
from tests.analytics.events import history, utc

SCHEMA = json.loads((Path(__file__).parent / "launch_v6.schema.json").read_text())


def replay(events: list) -> RequestRecord:  # type: ignore[type-arg]
    record = None
    for event in events:
        record = fold(record, event) or record
    assert record is not None
    return record


def test_spans_of_a_build_and_of_a_cache_hit() -> None:
    built = replay(history("r1", utc(2026, 5, 1, 10), build=True))
    assert built.spans() == pytest.approx({"resolving": 1, "queued": 2, "building": 15, "pushing": 3,
                                           "launching": 4.3, "total": 25.3})
    hit = replay(history("r2", utc(2026, 5, 1, 10)))
    assert hit.spans() == pytest.approx({"resolving": 1, "launching": 4.3, "total": 5.5})
    assert hit.outcome == "ready" and hit.repo == "https://github.com/org/repo" and hit.running


def test_folding_is_idempotent_and_order_tolerant() -> None:
    """At-least-once delivery: duplicates and a shuffled replay give the same record."""
    events = history("r1", utc(2026, 5, 1, 10), build=True, stopped=True)
    once = replay(events)
    rng = random.Random(7)
    doubled = events + events[: len(events) // 2]
    rng.shuffle(doubled)
    again = replay(doubled)
    assert again == once
    assert not once.running and once.stopped
    # a log line of a phase already seen changes nothing, so nothing is written to the table
    assert fold(once, events[4]) is None


def test_a_private_repositorys_name_is_kept_nowhere_whatever_the_order() -> None:
    """The resolver marks a private repository's resolved event; its spec, URL and commit, which the
    gateway's accepted event and the launcher's ready event also carry, must not stay in the record,
    reach the index (dashboard, API) or the public export, whichever event comes first."""
    events = history("p1", utc(2026, 5, 1, 10), build=True, spec="lab/secret/main",
                     repo="https://github.com/lab/secret")
    for event in events:
        if event.phase.value == "resolved":
            event.private = True
    rng = random.Random(3)
    for _ in range(5):
        shuffled = events + events[:3]
        rng.shuffle(shuffled)
        record = replay(shuffled)
        assert record.private and (record.spec, record.repo, record.ref) == ("", "", ""), record
        assert "secret" not in record.dumps().decode() and "a" * 40 not in record.dumps().decode()
        assert (record.provider, record.outcome) == ("gh", "ready")
        index = Index()
        index.update(record)
        assert [s.repo for s in index.running()] == ["(a private repository)"]
        assert launch_event(record) is None, "not in the archive meant for publishing"
    public = replay(history("p2", utc(2026, 5, 1, 11)))
    assert not public.private and launch_event(public) is not None, "control: a public launch is exported"


def test_failures_keep_their_cause() -> None:
    record = replay(history("r1", utc(2026, 5, 1), outcome="failed", cause="repo_not_found"))
    assert (record.outcome, record.failure_cause) == ("failed", "repo_not_found")
    assert record.spans() == pytest.approx({"total": 0.5})


def make_index() -> Index:
    index = Index()
    for i in range(10):  # ten cache hits of one repository on the 1st of May, one an hour
        index.update(replay(history(f"a{i}", utc(2026, 5, 1, i))))
    for i in range(3):  # three builds of another repository on the 2nd, one failing
        outcome, cause = ("failed", "build_failed") if i == 0 else ("ready", None)
        index.update(replay(history(f"b{i}", utc(2026, 5, 2, i), provider="gl", spec="g/x/HEAD",
                                    repo="https://gitlab.com/g/x", build=True, outcome=outcome, cause=cause)))
    index.update(replay(history("c0", utc(2026, 5, 2, 5), outcome="failed", cause="repo_not_found")))
    return index


def test_launches_per_window_and_repository() -> None:
    index = make_index()
    since, until = utc(2026, 4, 1).timestamp(), utc(2026, 6, 1).timestamp()
    days = index.launches("day", since, until)
    assert [(b["success"], b["failure"]) for b in days] == [(10, 0), (2, 2)]
    hours = index.launches("hour", since, until, repo="https://github.com/org/repo")
    assert len(hours) == 10 and all(b["success"] == 1 for b in hours)
    assert index.launches("day", since, until, provider="gl") == [{"start": int(utc(2026, 5, 2).timestamp()),
                                                                     "success": 2, "failure": 1}]
    top = index.by_repo(since, until, 2)
    assert top[0] == {"provider": "gh", "repo": "https://github.com/org/repo", "launches": 10, "failures": 0}
    assert top[1]["launches"] == 3 and top[1]["failures"] == 1
    assert index.failures(since, until) == {"build_failed": 1, "repo_not_found": 1}
    # a period that covers only the first day
    assert index.failures(since, utc(2026, 5, 2).timestamp()) == {}


def test_phase_timings_are_percentiles_of_the_requests_in_the_period() -> None:
    index = make_index()
    timings = index.phase_timings(utc(2026, 4, 1).timestamp(), utc(2026, 6, 1).timestamp())
    assert timings["building"]["count"] == 2  # a build that failed never reached a push: no building span
    assert timings["pushing"]["count"] == 2
    assert timings["launching"]["p50"] == pytest.approx(4.5, abs=0.3)
    assert timings["total"]["count"] == 14
    empty = index.phase_timings(0, 1)
    assert empty["total"] == {"count": 0, "p50": None, "p95": None, "mean": None}


def test_percentile_interpolates() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 95) == 5.0


def test_export_matches_binderhub_launch_schema_v6() -> None:
    records = [replay(history(f"a{i}", utc(2026, 5, 1, i))) for i in range(3)]
    records.append(replay(history("f", utc(2026, 5, 1, 4), outcome="failed", cause="build_failed", build=True)))
    records.append(replay(history("odd", utc(2026, 5, 1, 5), provider="nosuch")))
    lines = list(launch_lines(records, 0, utc(2027, 1, 1).timestamp()))
    assert len(lines) == 3  # successes only, and only providers the schema's enum names
    for line in lines:
        event = json.loads(line)
        jsonschema.validate(event, SCHEMA)
        assert event["origin"] == "binder.example.org" and event["request_origin"] == "https://example.org"
    stamps = [json.loads(line)["timestamp"] for line in lines]
    assert stamps == sorted(stamps)
    assert launch_event(records[3]) is None


@pytest.mark.parametrize("name", ['<script>alert(1)</script>', 'a"b\'c&d', "ünï/cödé 🚀", "x" * 300])
def test_odd_repository_names_are_escaped_in_charts(name: str) -> None:
    svg = charts.count_bars([(name, 3)], "repos")
    assert "<script>" not in svg
    assert 'a"b' not in svg
    assert svg.count("<svg") == 1 and svg.endswith("</svg>")


def test_running_is_kilnbus_servers_definition() -> None:
    """A ready with a URL starts a server, stopped ends it; a build-only ready (no URL) is none."""
    from kilnbus import Phase, PhaseEvent
    from kilnbus.servers import RunningServers

    launched = history("r1", utc(2026, 5, 1, 10))
    # The resolver's "Done! Found built image": the same history, its ready without a URL or server.
    build_only = [e if e.phase is not Phase.READY else PhaseEvent(
        request_id="r2", phase=Phase.READY, service="resolver", timestamp=e.timestamp, image_name="img")
        for e in history("r2", utc(2026, 5, 1, 10))]
    stopped = history("r3", utc(2026, 5, 1, 10), stopped=True)
    fold_ = RunningServers()
    for event in launched + build_only + stopped:
        fold_.apply(event)
    records = {rid: replay(events) for rid, events in (("r1", launched), ("r2", build_only), ("r3", stopped))}
    assert {rid for rid, r in records.items() if r.running} == {s.request_id for s in fold_.servers()} == {"r1"}
    assert records["r2"].outcome == "ready" and not records["r2"].server  # finished, but no server
    assert records["r1"].server == "u-r1/binder-x"
