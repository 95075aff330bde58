"""What the gateway refuses, and the routes around the stream: pages, health, metrics, redirects."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from kilnbus import BusSettings, KafkaLogReader, LaunchRequested, Phase, PhaseEvent, Topics, default_codec

from .conftest import Gateway

pytestmark = pytest.mark.kafka


@pytest.fixture
def gateway_settings(gateway_settings: Any, request: pytest.FixtureRequest) -> Any:
    return gateway_settings.model_copy(update=getattr(request, "param", {}))


async def published_launches(bus_settings: BusSettings, topics: Topics) -> list[str]:
    """The specs of every launch request on the topic now. The gateway answers a launch only once its
    request was acknowledged, so reading to the topic's current end offsets misses none: no waiting."""
    seen: list[str] = []
    async with KafkaLogReader(bus_settings, [topics.launch_requested]) as reader:
        remaining = {tp for tp, end in reader.end_offsets.items() if end > 0}
        if not remaining:
            return seen
        async for record in reader:
            request = default_codec().decode(record.value, expect=LaunchRequested)
            assert isinstance(request, LaunchRequested)
            seen.append(request.spec)
            if record.offset + 1 >= reader.end_offsets[(record.topic, record.partition)]:
                remaining.discard((record.topic, record.partition))
            if not remaining:
                return seen
    return seen


BAD = [
    ("/build/nope/org/repo/main", 404, "No provider found for prefix 'nope'"),
    ("/build/gh/org/repo", 400, "has no ref"),
    ("/build/gh/just-one-part", 400, "is not a valid GitHub spec"),
    ("/build/gh/org/repo/bad..ref", 400, "is not a valid git ref"),
    ("/build/gh/org/repo/ref%20with%20space", 400, "is not a valid git ref"),
    ("/build/gh/org/repo/main%0AInjected:%20header", 400, "control characters"),
    ("/build/git/ftp%3A%2F%2Fexample.com%2Frepo.git/HEAD", 400, "not a git URL Kiln can clone"),
    ("/build/gh/org/repo/" + "x" * 2000, 400, "characters long"),
]


@pytest.mark.parametrize("path, status, message", BAD, ids=[b[2][:24] for b in BAD])
async def test_bad_spec_gets_a_clear_4xx_and_publishes_nothing(
    gateway: Gateway, bus_settings: BusSettings, topics: Topics, path: str, status: int, message: str
) -> None:
    got, events, _ = await gateway.events(path)
    assert got == status
    assert events[0]["data"]["phase"] == "failed" and events[0]["data"]["status_code"] == status
    assert message in events[0]["data"]["message"]
    assert await published_launches(bus_settings, topics) == []
    # Control: a launch the door lets through is seen by the same audit.
    async with gateway.client.stream("GET", "/build/gh/org/repo/main", headers={"Accept": "text/event-stream"}) as r:
        assert r.status_code == 200
    assert await published_launches(bus_settings, topics) == ["org/repo/main"]


async def test_build_without_event_stream_accept_is_refused(gateway: Gateway) -> None:
    r = await gateway.client.get("/build/gh/org/repo/main")
    assert r.status_code == 400 and "Accept: text/event-stream" in r.text


async def test_git_spec_keeps_its_encoded_slashes(gateway: Gateway, scripted: Any) -> None:
    services = await scripted(lambda req: [PhaseEvent(request_id=req.request_id, phase=Phase.FAILED, service="t")])
    status, _, _ = await gateway.events("/build/git/http%3A%2F%2F127.0.0.1%3A9%2Frepo.git/HEAD")
    assert status == 200
    assert services.requests[0].spec == "http%3A%2F%2F127.0.0.1%3A9%2Frepo.git/HEAD"


@pytest.mark.parametrize("gateway_settings", [{"rate_limit": 2}], indirect=True)
async def test_rate_limit_per_ip_counts_the_page_and_reused_build_tokens(gateway: Gateway, scripted: Any) -> None:
    await scripted(lambda req: [PhaseEvent(request_id=req.request_id, phase=Phase.FAILED, service="t")])
    # A browser: the /v2 page is charged (1 of 2), and its token's launch is the one it paid for.
    page = await gateway.client.get("/v2/gh/org/repo/main")
    assert page.status_code == 200 and page.headers["x-ratelimit-remaining"] == "1"
    token = re.search(r'build_token=([^"&]+)', page.text)
    assert token is not None
    status, _, headers = await gateway.events(f"/build/gh/org/repo/main?build_token={token.group(1)}")
    assert status == 200 and "x-ratelimit-remaining" not in headers
    # ... but only for that spec, and not once tampered with (refused before anything is charged).
    status, events, _ = await gateway.events(f"/build/gh/org/other/main?build_token={token.group(1)}")
    assert status == 403 and "Invalid build token" in events[0]["data"]["message"]
    status, _, _ = await gateway.events(f"/build/gh/org/repo/main?build_token={token.group(1)[:-2]}xx")
    assert status == 403
    # An API client without a token shares the budget (2 of 2); then the limit holds at every door.
    status, _, headers = await gateway.events("/build/gh/org/repo/main")
    assert status == 200 and headers["x-ratelimit-remaining"] == "0"
    status, events, headers = await gateway.events("/build/gh/org/repo/main")
    assert status == 429 and headers["x-ratelimit-limit"] == "2"
    assert re.match(r"Rate limit exceeded\. Try again in \d+ seconds\.", events[0]["data"]["message"])
    status, _, _ = await gateway.events(f"/build/gh/org/repo/main?build_token={token.group(1)}")
    assert status == 429, "a spent token's second launch is charged like one without a token"
    refused = await gateway.client.get("/v2/gh/org/repo/main")
    assert refused.status_code == 429 and "Rate limit exceeded" in refused.text and "build_token=" not in refused.text


@pytest.mark.parametrize("gateway_settings", [{"ban_networks": {"127.0.0.0/8": "the loopback test network"}}], indirect=True)
async def test_banned_networks_are_refused_except_health_and_versions(gateway: Gateway) -> None:
    status, _, _ = await gateway.events("/build/gh/org/repo/main")
    assert status == 403
    r = await gateway.client.get("/")
    assert r.status_code == 403 and "Requests from the loopback test network are not allowed" in r.text
    assert (await gateway.client.get("/versions")).status_code == 200
    assert (await gateway.client.get("/health")).status_code in (200, 503)


@pytest.mark.parametrize("gateway_settings", [{"cors_allow_origin": "https://example.org"}], indirect=True)
async def test_cors_allow_origin(gateway: Gateway) -> None:
    r = await gateway.client.options("/build/gh/org/repo/main", headers={
        "Origin": "https://example.org", "Access-Control-Request-Method": "GET"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://example.org"
    r = await gateway.client.get("/versions", headers={"Origin": "https://example.org"})
    assert r.headers["access-control-allow-origin"] == "https://example.org"


@pytest.mark.parametrize("query", ["labpath=../../etc/passwd", "filepath=a/../../b", "urlpath=https://evil.example/x",
                                   "urlpath=javascript:alert(1)", "labpath=%2e%2e%2fsecret", "urlpath=a%0d%0aSet-Cookie:x",
                                   "urlpath=%5C%5Cevil.example", "urlpath=%20//evil.example", "urlpath=/%5Cevil.example",
                                   "urlpath=%255C%255Cevil.example"])
async def test_v2_page_refuses_paths_that_leave_the_server(gateway: Gateway, query: str) -> None:
    r = await gateway.client.get(f"/v2/gh/org/repo/main?{query}")
    assert r.status_code == 400
    assert "Traceback" not in r.text


async def test_leading_double_slash_is_refused_and_one_slash_kept(gateway: Gateway) -> None:
    """``//host/x`` is another host to a browser, so it is refused; ``/lab`` is the server's /lab."""
    r = await gateway.client.get("/v2/gh/org/repo/main?urlpath=//evil.example/x")
    assert r.status_code == 400 and "Traceback" not in r.text
    r = await gateway.client.get("/v2/gh/org/repo/main?urlpath=/lab")
    assert r.status_code == 200 and '"urlpath": "lab"' in r.text


async def test_v2_page_carries_the_stream_and_path(gateway: Gateway) -> None:
    r = await gateway.client.get("/v2/gh/org/repo/main?labpath=notebooks/intro.ipynb")
    assert r.status_code == 200
    assert '"urlpath": "doc/tree/notebooks/intro.ipynb"' in r.text
    assert "/build/gh/org/repo/main?build_token=" in r.text
    assert (await gateway.client.get("/v2/nope/x/y")).status_code == 404


async def test_home_page_and_assets(gateway: Gateway) -> None:
    r = await gateway.client.get("/")
    assert r.status_code == 200 and "Build and launch a repository" in r.text
    for path in ("/badge_logo.svg", "/badge.svg", "/assets/images/badge.svg", "/favicon.ico", "/static/index.js"):
        assert (await gateway.client.get(path)).status_code == 200, path
    missing = await gateway.client.get("/no/such/page")
    assert missing.status_code == 404 and "There is no page at /no/such/page" in missing.text


async def test_legacy_repo_redirects(gateway: Gateway) -> None:
    r = await gateway.client.get("/repo/org/repo")
    assert r.status_code == 302 and r.headers["location"] == "/v2/gh/org/repo/master"
    r = await gateway.client.get("/repo/org/repo/notebooks/a.ipynb")
    assert r.headers["location"] == "/v2/gh/org/repo/master?urlpath=notebooks%2Fa.ipynb"


async def test_health_versions_metrics_repoproviders(gateway: Gateway, scripted: Any) -> None:
    await scripted(lambda req: [PhaseEvent(request_id=req.request_id, phase=Phase.FAILED, service="resolver")])
    await gateway.events("/build/gh/org/repo/main")
    health = (await gateway.client.get("/health")).json()
    kafka = next(c for c in health["checks"] if c["service"] == "Kafka")
    assert kafka["ok"] is True
    router = next(c for c in health["checks"] if c["service"] == "Phase router")
    assert "resolver" in router["heard_from_s_ago"]
    assert (await gateway.client.head("/health")).status_code in (200, 503)
    versions = (await gateway.client.get("/versions")).json()
    assert "binderhub" in versions and "builder_info" in versions
    metrics = (await gateway.client.get("/metrics")).text
    assert 'binderhub_launch_count_total{provider="gh",status="failure"}' in metrics
    providers = (await gateway.client.get("/api/repoproviders")).json()
    assert [p["id"] for p in providers][:4] == ["gh", "gist", "gl", "git"]


async def test_api_only_mode_serves_no_pages_and_allows_build_only(gateway_settings: Any) -> None:
    from .memory import memory_app

    app = memory_app(gateway_settings.model_copy(update={"enable_api_only_mode": True}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.get("/")).status_code == 404
        assert (await client.get("/v2/gh/org/repo/main")).status_code == 404
