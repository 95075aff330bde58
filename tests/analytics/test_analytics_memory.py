"""Analytics in memory: the fold into the requests table and its index in batches, as the faust
agent runs it, recovery from the table, and the JSON API, dashboard and export answering from it.
No Kafka: the table is a dict, and the web app is driven through httpx's ASGI transport."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from kiln_analytics.app import create_app
from kiln_analytics.bootstrap import faust_broker, faust_credentials
from kiln_analytics.settings import Settings
from kiln_analytics.table import RequestTable
from kilnbus import DecodeError, PhaseEvent, default_codec
from tests.analytics.events import ODD, history, month_of_requests, utc

SCHEMA = json.loads((Path(__file__).parent / "launch_v6.schema.json").read_text())
EXPECTED_TOTALS = {"requests": 30, "ready": 18, "failed": 12, "in_progress": 0, "running_servers": 12}


def numbers(table: RequestTable) -> dict[str, Any]:
    index = table.index
    since, until = utc(2026, 1, 1).timestamp(), utc(2027, 1, 1).timestamp()
    return {"totals": index.totals(), "days": index.launches("day", since, until),
            "repos": index.by_repo(since, until, 10), "failures": index.failures(since, until),
            "phases": index.phase_timings(since, until), "providers": index.by_provider(since, until)}


def fold_in_batches(table: RequestTable, events: list[PhaseEvent], seed: int) -> None:
    """The agent's way: batches of any size, each folded at once."""
    rng = random.Random(seed)
    i = 0
    while i < len(events):
        size = rng.randint(1, 50)
        table.fold(events[i:i + size])
        i += size


def the_log(seed: int = 0) -> list[PhaseEvent]:
    """The month's events interleaved across requests (as partitions deliver them), each request in order."""
    rng = random.Random(seed)
    queues = [list(events) for events in month_of_requests()]
    out: list[PhaseEvent] = []
    while queues:
        queue = rng.choice(queues)
        out.append(queue.pop(0))
        if not queue:
            queues.remove(queue)
    return out


def test_the_log_folds_into_the_numbers_whatever_the_batches() -> None:
    store: dict[bytes, bytes] = {}
    table = RequestTable(store)
    fold_in_batches(table, the_log(), seed=1)
    expected = numbers(table)
    assert expected["totals"] == EXPECTED_TOTALS
    assert expected["failures"] == {"build_failed": 6, "repo_not_found": 6}
    assert expected["phases"]["building"]["count"] == 6 and expected["phases"]["total"]["count"] == 30
    assert expected["providers"] == {"gh": 18, "gl": 6, "git": 6}
    # Another interleaving, other batches, and at-least-once duplicates: the same numbers.
    again = RequestTable({})
    log = the_log(seed=2)
    fold_in_batches(again, log + log[: len(log) // 3], seed=3)
    assert numbers(again) == expected
    # Recovered from the table alone (faust's changelog), the index comes back the same.
    recovered = RequestTable(dict(store))
    assert recovered.index.totals()["requests"] == 0, "control: nothing is known before the recovery"
    recovered.recovered()
    assert numbers(recovered) == expected


def test_a_batch_writes_each_request_once() -> None:
    table = RequestTable({})
    events = month_of_requests()[1]  # a build: many log lines of one request
    assert table.fold(events) == 1
    assert table.fold(events[3:6]) == 0, "events already folded change nothing, so nothing is written"


def test_what_does_not_decode_is_refused_for_setting_aside() -> None:
    table = RequestTable({})
    event = month_of_requests()[0][0]
    assert table.decode(default_codec().encode(event)) == event  # control: a real event decodes
    with pytest.raises(DecodeError):
        table.decode(b"\x00not avro at all")


class MemorySource:
    """A ``RequestSource`` over a dict: ready at once; counts its starts and stops."""

    def __init__(self) -> None:
        self.requests = RequestTable({})
        self.ready = True
        self.started = self.stopped = 0

    async def start(self) -> None:
        self.started += 1

    async def stop(self) -> None:
        self.stopped += 1


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    source = MemorySource()
    fold_in_batches(source.requests, the_log(), seed=4)
    app = create_app(Settings(), source)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://analytics") as c:
        yield c


async def test_the_api_answers_from_the_index(client: httpx.AsyncClient) -> None:
    period = {"since": "2026-04-01", "until": "2027-01-01T00:00:00Z"}
    summary = (await client.get("/api/v1/summary", params=period)).json()
    assert summary["totals"]["ready"] == 18 and summary["by_provider"] == {"gh": 18, "gl": 6, "git": 6}
    repo = (await client.get("/api/v1/launches", params={**period, "window": "day", "repo": ODD})).json()
    assert sum(b["success"] for b in repo["buckets"]) == 6 and repo["repo"] == ODD
    phases = (await client.get("/api/v1/phases", params=period)).json()["phases"]
    assert phases["pushing"]["p50"] == pytest.approx(3.0)
    one = (await client.get("/api/v1/requests/req-1")).json()
    assert one["spans"] == pytest.approx({"resolving": 1, "queued": 2, "building": 15, "pushing": 3,
                                          "launching": 4.3, "total": 25.3}, abs=0.01)
    assert (await client.get("/api/v1/requests/nope")).status_code == 404
    running = (await client.get("/api/v1/running")).json()["servers"]
    assert len(running) == 12
    assert (await client.get("/health")).json() == {"ready": True, "requests": 30}


async def test_bad_queries_are_answered_with_what_was_wrong(client: httpx.AsyncClient) -> None:
    bad = await client.get("/api/v1/launches", params={"window": "fortnight"})
    assert bad.status_code == 400 and "window" in bad.json()["error"]
    assert (await client.get("/api/v1/summary", params={"since": "yesterday-ish"})).status_code == 400
    assert (await client.get("/api/v1/repos", params={"limit": "0"})).status_code == 400
    assert (await client.get("/", params={"since": "2027-01-01", "until": "2026-01-01"})).status_code == 400
    assert (await client.get("/api/v1/repos", params={"limit": "5"})).status_code == 200, "control"


async def test_the_dashboard_escapes_what_it_shows(client: httpx.AsyncClient) -> None:
    page = await client.get("/", params={"since": "2026-04-01", "until": "2027-01-01T00:00:00Z"})
    assert page.status_code == 200
    assert '<script>alert("x")' not in page.text and "&lt;script&gt;" in page.text
    assert "ünï cödé" in page.text and page.text.count("<svg") == 4


async def test_the_export_is_binderhubs_launch_schema(client: httpx.AsyncClient) -> None:
    export = await client.get("/api/v1/export/launches.jsonl", params={"since": "2026-04-01", "until": "2027-01-01"})
    lines = export.text.splitlines()
    assert len(lines) == 18
    for line in lines:
        jsonschema.validate(json.loads(line), SCHEMA)


async def test_the_app_starts_and_stops_its_source() -> None:
    source = MemorySource()
    app = create_app(Settings(), source)
    async with app.router.lifespan_context(app):
        assert (source.started, source.stopped) == (1, 0)
    assert (source.started, source.stopped) == (1, 1)


@pytest.mark.parametrize("bus", [
    {},
    {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "SCRAM-SHA-512",
     "kafka_sasl_username": "analytics", "kafka_sasl_password": "pw"},
    {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "PLAIN", "kafka_sasl_username": "a",
     "kafka_sasl_password": "pw"},
    {"kafka_security_protocol": "SSL"},
], ids=["plaintext", "sasl", "sasl-ssl", "ssl"])
def test_faust_connects_as_every_other_kiln_client(bus: dict[str, Any]) -> None:
    """Faust's credentials, turned back into aiokafka options as faust does, are the bus's own."""
    # Every security field given, so the test's own environment (the local stack's SASL) plays no part.
    unset = {"kafka_security_protocol": "PLAINTEXT", "kafka_sasl_mechanism": None, "kafka_sasl_username": None,
             "kafka_sasl_password": None}
    settings = Settings(kafka_bootstrap="a:9092,b:9093", **{**unset, **bus})
    kafka = settings.client_kwargs()
    assert faust_broker(kafka) == ["kafka://a:9092", "kafka://b:9093"]
    auth = {k: v for k, v in credentials_to_aiokafka_auth(faust_credentials(kafka)).items()
            if not (k == "ssl_context" and v is None)}  # faust names "no TLS context" explicitly
    assert auth == {k: v for k, v in kafka.items() if k != "bootstrap_servers"}


async def test_warm_pool_hits_and_misses_are_counted_with_their_launch_times() -> None:
    source = MemorySource()
    start = utc(2026, 6, 1)
    log: list[PhaseEvent] = []
    for i, (warm, seconds) in enumerate([(True, 0.1), (True, 0.3), (False, 1.5), (None, 2.0)]):
        log += history(f"pool-{i}", start, warm=warm, launch_s=seconds)
    log += history("pool-failed", start, warm=False, outcome="failed")
    fold_in_batches(source.requests, log, seed=1)
    app = create_app(Settings(), source)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://analytics") as client:
        period = {"since": "2026-05-01", "until": "2026-07-01"}
        pool = (await client.get("/api/v1/summary", params=period)).json()["warm_pool"]
        # The launching span runs from "built" (0.3 s before the launching event in each history) to ready.
        assert pool == {"hits": 2, "misses": 1, "hit_launching_p50": pytest.approx(0.5), "hit_launching_p95": pytest.approx(0.59),
                        "miss_launching_p50": pytest.approx(1.8), "miss_launching_p95": pytest.approx(1.8)}
        page = (await client.get("/", params=period)).text
        assert "Warm servers" in page and "<td>warm server</td><td>2</td>" in page
