"""What the gateway refuses, and the routes around the stream: pages, versions, metrics, redirects.

In memory: the real application over a ``MemoryBus``. The health check that needs a real broker
is in test_door_kafka.py.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from ipaddress import ip_network

import httpx
import pytest

from kiln_gateway.settings import Settings
from kilnbus import LaunchRequested, Phase, PhaseEvent

from .memory import PEER, SSE, MemoryGateway, answer, memory_app, memory_settings, scripted_services


@pytest.fixture
def settings(seal_key: str, request: pytest.FixtureRequest) -> Settings:
    return memory_settings(seal_key, **getattr(request, "param", {}))


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[MemoryGateway]:
    async with MemoryGateway(settings).started() as gw:
        yield gw


@pytest.fixture
async def client(gateway: MemoryGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway.client() as c:
        yield c


def failed(req: LaunchRequested) -> list[PhaseEvent]:
    return [PhaseEvent(request_id=req.request_id, phase=Phase.FAILED, service="resolver")]


BAD = [
    ("/build/nope/org/repo/main", 404, "No provider found for prefix 'nope'"),
    ("/build/gh/org/repo", 400, "has no ref"),
    ("/build/git/http%3A%2F%2Fgit.example.org%2Frepo.git", 400,
     "'http://git.example.org/repo.git' has no ref; add one after the encoded URL, e.g. http%3A%2F%2Fgit.example.org%2Frepo.git/HEAD"),
    ("/build/gh/just-one-part", 400, "is not a valid GitHub spec"),
    ("/build/gh/org/repo/bad..ref", 400, "is not a valid git ref"),
    ("/build/gh/org/repo/ref%20with%20space", 400, "is not a valid git ref"),
    ("/build/gh/org/repo/main%0AInjected:%20header", 400, "control characters"),
    ("/build/git/ftp%3A%2F%2Fexample.com%2Frepo.git/HEAD", 400, "not a git URL Kiln can clone"),
    ("/build/gh/org/repo/" + "x" * 2000, 400, "characters long"),
]


@pytest.mark.parametrize("path, status, message", BAD, ids=[b[2][:24] for b in BAD])
async def test_bad_spec_gets_a_clear_4xx_and_publishes_nothing(
    gateway: MemoryGateway, client: httpx.AsyncClient, path: str, status: int, message: str
) -> None:
    got, events = await gateway.events(path)
    assert got == status
    assert events[0]["data"]["phase"] == "failed" and events[0]["data"]["status_code"] == status
    assert message in events[0]["data"]["message"]
    assert gateway.launches() == []
    # Control: a launch the door lets through is seen by the same audit.
    async with client.stream("GET", "/build/gh/org/repo/main", headers=SSE) as r:
        assert r.status_code == 200
    assert gateway.launches() == ["org/repo/main"]


async def test_build_without_event_stream_accept_is_refused(client: httpx.AsyncClient) -> None:
    r = await client.get("/build/gh/org/repo/main")
    assert r.status_code == 400 and "Accept: text/event-stream" in r.text


async def test_git_spec_keeps_its_encoded_slashes(gateway: MemoryGateway) -> None:
    async with scripted_services(gateway.bus, answer(failed)) as services:
        status, _ = await gateway.events("/build/git/http%3A%2F%2F127.0.0.1%3A9%2Frepo.git/HEAD")
    assert status == 200
    assert services.requests[0].spec == "http%3A%2F%2F127.0.0.1%3A9%2Frepo.git/HEAD"


@pytest.mark.parametrize("settings", [{"rate_limit": 2}], indirect=True)
async def test_rate_limit_per_ip_counts_the_page_and_reused_build_tokens(
        gateway: MemoryGateway, client: httpx.AsyncClient) -> None:
    async with scripted_services(gateway.bus, answer(failed)):
        # A browser: the /v2 page is charged (1 of 2), and its token's launch is the one it paid for.
        page = await client.get("/v2/gh/org/repo/main")
        assert page.status_code == 200 and page.headers["x-ratelimit-remaining"] == "1"
        token = re.search(r'build_token=([^"&]+)', page.text)
        assert token is not None
        status, _, headers = await gateway.stream(f"/build/gh/org/repo/main?build_token={token.group(1)}")
        assert status == 200 and "x-ratelimit-remaining" not in headers
        # ... but only for that spec, and not once tampered with (refused before anything is charged).
        status, events = await gateway.events(f"/build/gh/org/other/main?build_token={token.group(1)}")
        assert status == 403 and "Invalid build token" in events[0]["data"]["message"]
        status, _ = await gateway.events(f"/build/gh/org/repo/main?build_token={token.group(1)[:-2]}xx")
        assert status == 403
        # An API client without a token shares the budget (2 of 2); then the limit holds at every door.
        status, _, headers = await gateway.stream("/build/gh/org/repo/main")
        assert status == 200 and headers["x-ratelimit-remaining"] == "0"
        status, events, headers = await gateway.stream("/build/gh/org/repo/main")
        assert status == 429 and headers["x-ratelimit-limit"] == "2"
        assert re.match(r"Rate limit exceeded\. Try again in \d+ seconds\.", events[0]["data"]["message"])
        status, _ = await gateway.events(f"/build/gh/org/repo/main?build_token={token.group(1)}")
        assert status == 429, "a spent token's second launch is charged like one without a token"
        refused = await client.get("/v2/gh/org/repo/main")
        assert refused.status_code == 429 and "Rate limit exceeded" in refused.text and "build_token=" not in refused.text


# In memory the client's address is the transport's peer, so the peer's network is the one banned.
@pytest.mark.parametrize("settings", [{"ban_networks": {str(ip_network(f"{PEER}/24", strict=False)):
                                                        "the documentation test network"}}], indirect=True)
async def test_banned_networks_are_refused_except_health_and_versions(
        gateway: MemoryGateway, client: httpx.AsyncClient) -> None:
    status, _ = await gateway.events("/build/gh/org/repo/main")
    assert status == 403
    r = await client.get("/")
    assert r.status_code == 403 and "Requests from the documentation test network are not allowed" in r.text
    assert (await client.get("/versions")).status_code == 200
    # In memory the bus and the hub are up, so health answers 200: not refused, and not failing either.
    assert (await client.get("/health")).status_code == 200
    # Control: the ban is by network, not for everyone.
    async with gateway.client(peer="198.51.100.7") as elsewhere:
        assert (await elsewhere.get("/")).status_code == 200


@pytest.mark.parametrize("settings", [{"cors_allow_origin": "https://example.org"}], indirect=True)
async def test_cors_allow_origin(client: httpx.AsyncClient) -> None:
    r = await client.options("/build/gh/org/repo/main", headers={
        "Origin": "https://example.org", "Access-Control-Request-Method": "GET"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://example.org"
    r = await client.get("/versions", headers={"Origin": "https://example.org"})
    assert r.headers["access-control-allow-origin"] == "https://example.org"


@pytest.mark.parametrize("query", ["labpath=../../etc/passwd", "filepath=a/../../b", "urlpath=https://evil.example/x",
                                   "urlpath=javascript:alert(1)", "labpath=%2e%2e%2fsecret", "urlpath=a%0d%0aSet-Cookie:x",
                                   "urlpath=%5C%5Cevil.example", "urlpath=%20//evil.example", "urlpath=/%5Cevil.example",
                                   "urlpath=%255C%255Cevil.example"])
async def test_v2_page_refuses_paths_that_leave_the_server(client: httpx.AsyncClient, query: str) -> None:
    r = await client.get(f"/v2/gh/org/repo/main?{query}")
    assert r.status_code == 400
    assert "Traceback" not in r.text


async def test_leading_double_slash_is_refused_and_one_slash_kept(client: httpx.AsyncClient) -> None:
    """``//host/x`` is another host to a browser, so it is refused; ``/lab`` is the server's /lab."""
    r = await client.get("/v2/gh/org/repo/main?urlpath=//evil.example/x")
    assert r.status_code == 400 and "Traceback" not in r.text
    r = await client.get("/v2/gh/org/repo/main?urlpath=/lab")
    assert r.status_code == 200 and '"urlpath": "lab"' in r.text


async def test_v2_page_carries_the_stream_and_path(client: httpx.AsyncClient) -> None:
    r = await client.get("/v2/gh/org/repo/main?labpath=notebooks/intro.ipynb")
    assert r.status_code == 200
    assert '"urlpath": "doc/tree/notebooks/intro.ipynb"' in r.text
    assert "/build/gh/org/repo/main?build_token=" in r.text
    assert (await client.get("/v2/nope/x/y")).status_code == 404


async def test_home_page_and_assets(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 200 and "Build and launch a repository" in r.text
    for path in ("/badge_logo.svg", "/badge.svg", "/assets/images/badge.svg", "/favicon.ico", "/static/index.js"):
        assert (await client.get(path)).status_code == 200, path
    missing = await client.get("/no/such/page")
    assert missing.status_code == 404 and "There is no page at /no/such/page" in missing.text


async def test_legacy_repo_redirects(client: httpx.AsyncClient) -> None:
    r = await client.get("/repo/org/repo")
    assert r.status_code == 302 and r.headers["location"] == "/v2/gh/org/repo/master"
    r = await client.get("/repo/org/repo/notebooks/a.ipynb")
    assert r.headers["location"] == "/v2/gh/org/repo/master?urlpath=notebooks%2Fa.ipynb"


FAILED_GH_LAUNCHES = 'binderhub_launch_count_total{provider="gh",status="failure"}'


def sample(metrics: str, name: str) -> float:
    """One sample's value on a /metrics page; 0 if absent (a labelled counter shows only once counted)."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_versions_metrics_repoproviders(gateway: MemoryGateway, client: httpx.AsyncClient) -> None:
    # The metrics are process-wide and other tests launch too: what this launch shows is the count going up by one.
    before = sample((await client.get("/metrics")).text, FAILED_GH_LAUNCHES)
    async with scripted_services(gateway.bus, answer(failed)):
        status, events = await gateway.events("/build/gh/org/repo/main")
    assert status == 200 and events[-1]["data"]["phase"] == "failed"
    versions = (await client.get("/versions")).json()
    assert "binderhub" in versions and "builder_info" in versions
    metrics = (await client.get("/metrics")).text
    assert FAILED_GH_LAUNCHES in metrics
    assert sample(metrics, FAILED_GH_LAUNCHES) == before + 1
    providers = (await client.get("/api/repoproviders")).json()
    assert [p["id"] for p in providers][:6] == ["gh", "gist", "gl", "gitea", "bb", "git"]
    [swh] = [p for p in providers if p["id"] == "swh"]
    assert swh["ref"] == {"enabled": False} and swh["spec"]["validateRegex"].startswith("swh:1:"), "a SWHID, no ref"


async def test_api_only_mode_serves_no_pages_and_allows_build_only(settings: Settings) -> None:
    app = memory_app(settings.model_copy(update={"enable_api_only_mode": True}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.get("/")).status_code == 404
        assert (await client.get("/v2/gh/org/repo/main")).status_code == 404
