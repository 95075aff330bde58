"""The gateway's security checks without any infrastructure (issue 13).

Paths to open that a browser would resolve off the server, event ids with a tampered position or
past their lifetime, ready events whose sealed token belongs to another request or whose URL was
swapped, and client addresses behind trusted and untrusted proxies. The HTTP-level tests drive
the real application with Starlette's test client and no lifespan, so nothing connects to Kafka;
the producer is replaced by one that records what would have been published.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiokafka.errors import KafkaConnectionError

from kiln_gateway.clientaddr import ClientAddresses
from kiln_gateway.eventids import EventIdError, EventIds
from kiln_gateway.projection import project
from kiln_gateway.settings import Settings
from kiln_gateway.specs import SpecError, launch_path
from kilnbus import Phase, PhaseEvent
from kilnbus.sealing import Sealer, new_key

from .memory import memory_app

# Every way issue 13 (and the WHATWG URL parser) found to leave the server, as the gateway receives
# the value after the query string's own decoding.
HOSTILE_PATHS = [
    "\\\\evil.example",            # \\evil.example: a browser reads backslashes as slashes
    "\\evil.example",
    "/\\evil.example",
    "\\/evil.example",
    " //evil.example",             # leading space, dropped by the browser
    "\t//evil.example",
    "\n//evil.example",
    "\x00//evil.example",
    "\x0b//evil.example",
    "//evil.example",
    "///evil.example",
    "//evil.example/x?token=",
    "javascript:alert(document.cookie)",
    "JaVaScRiPt:alert(1)",
    " javascript:alert(1)",
    "java\tscript:alert(1)",       # tabs vanish in the parser
    "http://evil.example/",
    "https:evil.example",
    "data:text/html,<script>alert(1)</script>",
    "%5C%5Cevil.example",          # the encoded forms: \\, space-//, /\, //
    "%5c%5cevil.example",
    "%20//evil.example",
    "%20%2F%2Fevil.example",
    "/%5Cevil.example",
    "%2F%2Fevil.example",
    "/%2Fevil.example",
    "%09//evil.example",
    "%0a//evil.example",
    "%00",
    "javascript%3Aalert(1)",
    "%6Aavascript:alert(1)",
    "%255C%255Cevil.example",      # double encoding
    "%2520//evil.example",
    "/%255Cevil.example",
    "%252F%252Fevil.example",
    "%25255C%25255Cevil.example",  # triple
    "%2525252525255C",             # deeper than any honest link
    "../../etc/passwd",
    "a/../../b",
    "%2e%2e/%2e%2e/hub/admin",
    ".%2e/x",
    "%252e%252e/x",
    "a%0d%0aSet-Cookie:x",
]

GOOD_PATHS = [
    ("urlpath", "lab/tree/a b.ipynb", "lab/tree/a b.ipynb"),
    ("urlpath", "/lab", "lab"),
    ("urlpath", "lab", "lab"),
    ("urlpath", "/lab/tree/notebooks/index.ipynb", "lab/tree/notebooks/index.ipynb"),
    ("urlpath", "lab?reset", "lab?reset"),
    ("urlpath", "voila/render/app.ipynb", "voila/render/app.ipynb"),
    ("urlpath", "tree/100%.ipynb", "tree/100%.ipynb"),
    ("urlpath", "lab/tree/a%20b.ipynb", "lab/tree/a%20b.ipynb"),
    ("urlpath", "", ""),
    ("labpath", "notebooks/index.ipynb", "doc/tree/notebooks/index.ipynb"),
    ("labpath", "/notebooks/index.ipynb", "doc/tree/notebooks/index.ipynb"),
    ("labpath", "a b/c:d.ipynb", "doc/tree/a b/c:d.ipynb"),
    ("labpath", "...hidden/x.ipynb", "doc/tree/...hidden/x.ipynb"),
    ("filepath", "notebooks/index.ipynb", "tree/notebooks/index.ipynb"),
    ("filepath", "data/é.csv", "tree/data/é.csv"),
]


def path_of(kind: str, value: str) -> str:
    return launch_path(**{"urlpath": None, "labpath": None, "filepath": None, kind: value})


@pytest.mark.parametrize("kind", ["urlpath", "labpath", "filepath"])
@pytest.mark.parametrize("value", HOSTILE_PATHS)
def test_paths_a_browser_resolves_off_the_server_are_refused(kind: str, value: str) -> None:
    with pytest.raises(SpecError) as refused:
        path_of(kind, value)
    assert refused.value.status == 400 and str(refused.value)


@pytest.mark.parametrize("kind, value, expected", GOOD_PATHS)
def test_paths_inside_the_server_are_kept(kind: str, value: str, expected: str) -> None:
    assert path_of(kind, value) == expected


# Event ids ---------------------------------------------------------------------------------------

RID = "ab" * 16
NOW = 1_800_000_000


def replace_part(value: str, index: int, new: str) -> str:
    parts = value.split(".")
    parts[index] = new
    return ".".join(parts)


def test_event_id_wire_format_and_positive_control() -> None:
    ids = EventIds("s", lifetime_s=3600)
    value = ids.format(RID, 2, 41, now=NOW)
    rid, partition, offset, issued, holder, signature = value.split(".")
    assert (rid, partition, offset, issued) == (RID, "2", "41", str(NOW)) and len(signature) == 32 and len(holder) == 16
    parsed = ids.check(value, now=NOW + 3599)
    assert (parsed.request_id, parsed.partition, parsed.offset) == (RID, 2, 41)


@pytest.mark.parametrize("index, new", [(0, "cd" * 16), (1, "3"), (1, "0"), (2, "0"), (2, "40"), (2, "42"),
                                        (3, str(NOW + 10)), (3, str(NOW - 10)), (4, "0" * 16), (5, "0" * 32)],
                         ids=["request", "partition", "partition-0", "offset-0", "offset-1", "offset+1",
                              "issued-later", "issued-earlier", "holder", "signature"])
def test_tampered_event_id_is_refused(index: int, new: str) -> None:
    ids = EventIds("s")
    value = ids.format(RID, 2, 41, now=NOW)
    assert ids.parse(value, now=NOW) is not None  # the untampered id is good at the same moment
    with pytest.raises(EventIdError, match="not an event id this Kiln issued"):
        ids.check(replace_part(value, index, new), now=NOW)


def test_event_id_from_another_secret_or_malformed_is_refused() -> None:
    value = EventIds("other").format(RID, 2, 41, now=NOW)
    assert EventIds("other").parse(value, now=NOW) is not None
    five_parts = f"{RID}.2.41.{NOW}." + "f" * 32  # the format before ids were bound to their holder
    for bad in (value, RID + ".2.41." + "f" * 32, five_parts, "not-an-id", "../../etc", value + ".1", " " * 3):
        with pytest.raises(EventIdError, match="not an event id this Kiln issued"):
            EventIds("s").check(bad, now=NOW)


def test_event_id_expires() -> None:
    ids = EventIds("s", lifetime_s=86400)
    value = ids.format(RID, 0, 7, now=NOW)
    assert ids.check(value, now=NOW + 86400).offset == 7  # the last second of its life
    with pytest.raises(EventIdError, match="expired") as expired:
        ids.check(value, now=NOW + 86401)
    assert "Traceback" not in str(expired.value) and "start a new launch" in str(expired.value)
    with pytest.raises(EventIdError):  # not issued yet: no gateway wrote this
        ids.check(ids.format(RID, 0, 7, now=NOW + 3600), now=NOW)
    assert ids.check(ids.format(RID, 0, 7, now=NOW + 60), now=NOW).offset == 7  # clocks a minute apart


# Sealed tokens in ready events -------------------------------------------------------------------

SERVER = "http://127.0.0.1:8000/user/u/binder-1/"
CONTEXT = {"binder_launch_host": "http://g/", "binder_request": "v2/gh/o/r/main", "binder_client_ip": "192.0.2.1"}


def ready(request_id: str, sealed: bytes | None, url: str | None = SERVER) -> PhaseEvent:
    return PhaseEvent(request_id=request_id, phase=Phase.READY, service="launcher", url=url, sealed_token=sealed,
                      image_name="img", provider="gh", resolved_spec="o/r/abc")


def test_ready_hands_over_the_token_sealed_for_this_request() -> None:
    sealer = Sealer([new_key()])
    out = project(ready("r1", sealer.seal("tok", request_id="r1", url=SERVER)), sealer, CONTEXT, "r1")
    assert out is not None and (out["phase"], out["token"], out["url"]) == ("ready", "tok", SERVER)


def test_token_sealed_for_another_request_is_not_handed_over() -> None:
    """A forged or replayed ready event routed into r1's stream, carrying r2's sealed token."""
    sealer = Sealer([new_key()])
    theirs = sealer.seal("their-token", request_id="r2", url=SERVER)
    for event in (ready("r1", theirs), ready("r2", theirs)):  # the event's own request id is not believed
        out = project(event, sealer, CONTEXT, "r1")
        assert out is not None and out["phase"] == "failed" and "their-token" not in str(out)
        assert "not sealed for this launch" in out["message"]
    assert project(ready("r2", theirs), sealer, CONTEXT, "r2")["token"] == "their-token"  # type: ignore[index]


def test_swapped_server_url_is_refused() -> None:
    sealer = Sealer([new_key()])
    sealed = sealer.seal("tok", request_id="r1", url=SERVER)
    out = project(ready("r1", sealed, url="https://evil.example/"), sealer, CONTEXT, "r1")
    assert out is not None and out["phase"] == "failed" and "tok" not in str(out.get("token", ""))
    assert "does not match" in out["message"]


def test_ready_with_a_url_but_no_seal_is_refused() -> None:
    sealer = Sealer([new_key()])
    out = project(ready("r1", None, url="https://evil.example/"), sealer, CONTEXT, "r1")
    assert out is not None and out["phase"] == "failed" and "evil" not in str(out)
    # The resolver's build-only ready (an image, no server) carries no seal and needs none.
    out = project(ready("r1", None, url=None), sealer, CONTEXT, "r1")
    assert out is not None and out["phase"] == "ready" and "token" not in out


def test_token_sealed_by_an_older_launcher_is_bound_to_nothing_and_refused() -> None:
    from cryptography.fernet import Fernet

    key = new_key()
    bare = Fernet(key.encode()).encrypt(b"tok")  # how tokens were sealed before the binding
    out = project(ready("r1", bare), Sealer([key]), CONTEXT, "r1")
    assert out is not None and out["phase"] == "failed" and "tok" != out.get("token")


def test_key_rotation_still_opens_tokens_sealed_with_the_previous_key() -> None:
    old, new = new_key(), new_key()
    sealed_by_old_launcher = Sealer([old]).seal("tok", request_id="r1", url=SERVER)
    gateway = Sealer([new, old])  # step two of the rotation: the new key first, the old one kept
    assert project(ready("r1", sealed_by_old_launcher), gateway, CONTEXT, "r1")["token"] == "tok"  # type: ignore[index]
    assert project(ready("r1", sealed_by_old_launcher), Sealer([new]), CONTEXT, "r1")["phase"] == "failed"  # type: ignore[index]


# Client addresses behind proxies -----------------------------------------------------------------


def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() -> None:
    none = ClientAddresses([])
    assert none.resolve("203.0.113.9", ["198.51.100.1"]) == "203.0.113.9"
    proxies = ClientAddresses(["10.0.0.0/8"])
    assert proxies.resolve("203.0.113.9", ["198.51.100.1"]) == "203.0.113.9", "an untrusted peer's header is ignored"
    assert proxies.resolve("10.1.2.3", ["198.51.100.1"]) == "198.51.100.1", "a trusted proxy's header is believed"
    assert proxies.resolve("10.1.2.3", []) == "10.1.2.3", "no header: the proxy itself"


def test_forwarded_for_is_read_from_the_right_skipping_trusted_hops() -> None:
    proxies = ClientAddresses(["10.0.0.0/8", "fd00::/8"])
    # The client wrote a fake left part; the ingress appended the real peer, then an inner proxy.
    assert proxies.resolve("10.0.0.2", ["6.6.6.6, 198.51.100.7, 10.0.0.1"]) == "198.51.100.7"
    assert proxies.resolve("10.0.0.2", ["6.6.6.6", "198.51.100.7,10.0.0.1"]) == "198.51.100.7", "several header lines"
    assert proxies.resolve("10.0.0.2", ["10.9.9.9, 10.0.0.1"]) == "10.9.9.9", "all trusted: the furthest hop"
    assert proxies.resolve("10.0.0.2", ["garbage, 10.0.0.1"]) == "10.0.0.1", "nothing left of garbage is believed"
    assert proxies.resolve("10.0.0.2", ["198.51.100.7:4321"]) == "198.51.100.7"
    assert proxies.resolve("fd00::1", ["[2001:db8::5]:443"]) == "2001:db8::5"
    assert proxies.resolve("::ffff:10.0.0.2", ["198.51.100.7"]) == "198.51.100.7", "IPv4-mapped peers match v4 CIDRs"


def test_bad_trusted_proxy_cidr_stops_start_up() -> None:
    with pytest.raises(ValueError):
        Settings(trusted_proxies=["10.0.0.0/33"])
    assert Settings(trusted_proxies=["10.0.0.0/8"]).trusted_proxies == ["10.0.0.0/8"]
    assert Settings().trusted_proxies == []


# Through the application (no Kafka: no lifespan, a recording producer) ----------------------------


class RecordingProducer:
    """Records publishes and answers as an unreachable bus would, so an accepted launch ends at once (503)."""

    def __init__(self) -> None:
        self.published: list[tuple[Any, str, Any]] = []

    async def publish(self, topic: Any, key: str, value: Any) -> None:
        self.published.append((topic, key, value))
        raise KafkaConnectionError("no bus in this test")


@pytest.fixture
def app_settings(request: pytest.FixtureRequest) -> Settings:
    return Settings(**{"rate_limit": 0, "token_seal_keys": [new_key()], **getattr(request, "param", {})})


@pytest.fixture
def app(app_settings: Settings) -> Iterator[tuple[Any, RecordingProducer]]:
    application = memory_app(app_settings)
    recorder = RecordingProducer()
    application.state.streams.producer = recorder
    yield application, recorder


class Client:
    """Requests to the application in process, from ``peer``; the lifespan never runs, so no Kafka."""

    def __init__(self, application: Any, peer: str) -> None:
        self._transport = httpx.ASGITransport(app=application, client=(peer, 40000))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            async with httpx.AsyncClient(transport=self._transport, base_url="http://testserver") as c:
                return await c.get(url, **kwargs)

        return asyncio.run(go())


def client(application: Any, peer: str = "203.0.113.50") -> Client:
    return Client(application, peer)


SSE = {"Accept": "text/event-stream"}


@pytest.mark.parametrize("value", [p for p in HOSTILE_PATHS if "\x00" not in p])
@pytest.mark.parametrize("kind", ["urlpath", "labpath", "filepath"])
def test_v2_page_refuses_hostile_paths_clearly(app: tuple[Any, RecordingProducer], kind: str, value: str) -> None:
    application, recorder = app
    r = client(application).get("/v2/gh/org/repo/main", params={kind: value})
    assert r.status_code == 400 and "Traceback" not in r.text
    assert "build_token" not in r.text  # no loading page, no stream started
    assert recorder.published == []


@pytest.mark.parametrize("kind, value, expected", [g for g in GOOD_PATHS if g[1]])
def test_v2_page_keeps_good_paths(app: tuple[Any, RecordingProducer], kind: str, value: str, expected: str) -> None:
    import html
    import json

    application, _ = app
    r = client(application).get("/v2/gh/org/repo/main", params={kind: value})
    assert r.status_code == 200
    assert f'"urlpath": {json.dumps(expected)}' in html.unescape(r.text.replace("\\u0026", "&").replace("\\u003c", "<"))


@pytest.mark.parametrize("value", ["%5C%5Cevil.example", "%20//evil.example", "/%5Cevil.example", "%255C%255Cevil.example",
                                   "//evil.example", "javascript:alert(1)", "http://evil.example"])
@pytest.mark.parametrize("kind", ["urlpath", "labpath", "filepath"])
def test_build_stream_refuses_hostile_paths_and_publishes_nothing(
    app: tuple[Any, RecordingProducer], kind: str, value: str
) -> None:
    application, recorder = app
    # The raw query, so the encoded variants arrive encoded once more, as a browser would send them.
    from urllib.parse import quote

    r = client(application).get(f"/build/gh/org/repo/main?{kind}={quote(value, safe='')}", headers=SSE)
    assert r.status_code == 400 and r.text.startswith("data: ")
    assert '"phase":"failed"' in r.text and "path to open" in r.text and "Traceback" not in r.text
    assert recorder.published == []


def test_build_stream_with_a_good_path_is_accepted(app: tuple[Any, RecordingProducer]) -> None:
    application, recorder = app
    r = client(application).get("/build/gh/org/repo/main?urlpath=lab/tree/a%20b.ipynb", headers=SSE)
    assert r.status_code == 503  # it got as far as publishing (to this test's unreachable bus)
    assert [type(v).__name__ for _, _, v in recorder.published] == ["LaunchRequested", "PhaseEvent"]


def test_resume_with_a_tampered_or_expired_id_is_refused_clearly(app: tuple[Any, RecordingProducer],
                                                                  app_settings: Settings) -> None:
    application, recorder = app
    ids = EventIds(app_settings.resume_secret, app_settings.event_id_lifetime_s)
    genuine = ids.format(RID, 1, 100)
    for bad, message in ((replace_part(genuine, 2, "0"), "not an event id this Kiln issued"),
                         (replace_part(genuine, 1, "0"), "not an event id this Kiln issued"),
                         (ids.format(RID, 1, 100, now=1_000_000), "has expired")):
        r = client(application).get("/build/gh/org/repo/main", headers={**SSE, "Last-Event-ID": bad})
        assert r.status_code == 400 and message in r.text and "Traceback" not in r.text
    assert recorder.published == []


@pytest.mark.parametrize("app_settings", [{"rate_limit": 1, "trusted_proxies": ["10.0.0.0/8"]}], indirect=True)
def test_rate_limit_counts_real_clients_behind_a_trusted_proxy(app: tuple[Any, RecordingProducer]) -> None:
    application, _ = app
    ingress = client(application, peer="10.0.0.7")

    def launch(forwarded: str) -> int:
        return ingress.get("/build/gh/org/repo/main", headers={**SSE, "X-Forwarded-For": forwarded}).status_code

    assert launch("198.51.100.1") == 503  # allowed (and then met this test's absent bus)
    assert launch("198.51.100.1") == 429  # the same client again
    assert launch("198.51.100.2") == 503, "another client behind the same proxy has its own window"
    assert launch("6.6.6.6, 198.51.100.2") == 429, "a spoofed left part changes nothing"


@pytest.mark.parametrize("app_settings", [{"rate_limit": 1, "trusted_proxies": ["10.0.0.0/8"]}], indirect=True)
def test_untrusted_peers_forwarded_for_is_ignored(app: tuple[Any, RecordingProducer]) -> None:
    application, _ = app
    direct = client(application, peer="203.0.113.77")

    def launch(forwarded: str) -> int:
        return direct.get("/build/gh/org/repo/main", headers={**SSE, "X-Forwarded-For": forwarded}).status_code

    assert launch("198.51.100.1") == 503
    assert launch("198.51.100.2") == 429, "a client cannot dodge the limit by inventing X-Forwarded-For"


@pytest.mark.parametrize("app_settings", [{"ban_networks": {"198.51.100.0/24": "a banned network"},
                                           "trusted_proxies": ["10.0.0.0/8"]}], indirect=True)
def test_ban_networks_see_the_real_client(app: tuple[Any, RecordingProducer]) -> None:
    application, _ = app
    ingress = client(application, peer="10.0.0.7")
    assert ingress.get("/", headers={"X-Forwarded-For": "198.51.100.9"}).status_code == 403
    assert ingress.get("/", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 200
    banned_direct = client(application, peer="198.51.100.9")
    assert banned_direct.get("/", headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 403, \
        "a banned client cannot unban itself with X-Forwarded-For"
    assert client(application, peer="203.0.113.9").get("/", headers={"X-Forwarded-For": "198.51.100.9"}).status_code == 200


# The launch budget: the token-issuing page and token launches are charged (issue 13, item 7) ------

def token_of(page: httpx.Response) -> str:
    """The build token the loading page hands its own stream."""
    import re

    found = re.search(r'build_token=([A-Za-z0-9._-]+)', page.text)
    assert found is not None, page.text[:500]
    return found.group(1)


def launch_status(c: Client, token: str | None = None, spec: str = "org/repo/main") -> int:
    """503: the launch passed every check and was published (to this test's absent bus); else the refusal."""
    query = f"?build_token={token}" if token else ""
    return c.get(f"/build/gh/{spec}{query}", headers=SSE).status_code


def launches(recorder: RecordingProducer) -> int:
    return sum(type(v).__name__ == "LaunchRequested" for _, _, v in recorder.published)


@pytest.mark.parametrize("app_settings", [{"rate_limit": 1}], indirect=True)
def test_a_browser_launch_is_charged_once_and_the_next_is_refused_on_the_page(app: tuple[Any, RecordingProducer]) -> None:
    application, recorder = app
    browser = client(application)
    page = browser.get("/v2/gh/org/repo/main")
    assert page.status_code == 200 and page.headers["x-ratelimit-remaining"] == "0"
    token = token_of(page)
    assert launch_status(browser, token) == 503, "the page paid for its token's launch: a limit of 1 still launches"
    assert launches(recorder) == 1
    # Over the limit: the next page says so in words a browser shows (its EventSource could not).
    refused = browser.get("/v2/gh/org/repo/main")
    assert refused.status_code == 429 and "Rate limit exceeded. Try again in" in refused.text
    assert int(refused.headers["retry-after"]) >= 1 and refused.headers["x-ratelimit-limit"] == "1"
    assert "build_token=" not in refused.text, "no token is issued over the limit"
    assert launch_status(browser) == 429, "nor does /build without a token launch: page and stream share one budget"
    assert launch_status(browser, token) == 429, "nor a second launch with the spent token"
    assert launches(recorder) == 1
    other = client(application, peer="203.0.113.51")
    assert other.get("/v2/gh/org/repo/main").status_code == 200, "another client has its own budget"


@pytest.mark.parametrize("app_settings", [{"rate_limit": 3}], indirect=True)
def test_one_token_cannot_launch_faster_than_the_limit(app: tuple[Any, RecordingProducer]) -> None:
    application, recorder = app
    script = client(application)
    token = token_of(script.get("/v2/gh/org/repo/main"))  # 1 of 3
    assert [launch_status(script, token) for _ in range(4)] == [503, 503, 503, 429]  # free, 2 of 3, 3 of 3, refused
    assert launches(recorder) == 3, "one page load and its token launched exactly the limit"
    assert script.get("/v2/gh/org/repo/main").status_code == 429, "and fetching tokens is charged too"


@pytest.mark.parametrize("app_settings", [{"rate_limit": 2}], indirect=True)
def test_fetching_many_tokens_is_limited_by_the_page(app: tuple[Any, RecordingProducer]) -> None:
    application, recorder = app
    script = client(application)
    pages = [script.get("/v2/gh/org/repo/main") for _ in range(3)]
    assert [p.status_code for p in pages] == [200, 200, 429]
    tokens = [token_of(p) for p in pages[:2]]
    assert len(set(tokens)) == 2, "each page load issues a token of its own"
    assert [launch_status(script, t) for t in tokens] == [503, 503], "each issued token launches once, paid for"
    assert launches(recorder) == 2


@pytest.mark.parametrize("app_settings", [{"rate_limit": 1}], indirect=True)
def test_a_page_refused_for_its_spec_or_path_costs_nothing(app: tuple[Any, RecordingProducer]) -> None:
    application, _ = app
    browser = client(application)
    assert browser.get("/v2/gh/org").status_code in (400, 404)
    assert browser.get("/v2/gh/org/repo/main", params={"urlpath": "//evil.example"}).status_code == 400
    assert browser.get("/v2/gh/org/repo/main").status_code == 200, "the typos did not use up the budget"


@pytest.mark.parametrize("app_settings", [{"rate_limit": 1}], indirect=True)
def test_ipv6_clients_are_counted_per_64(app: tuple[Any, RecordingProducer]) -> None:
    application, _ = app
    assert client(application, peer="2001:db8::1").get("/v2/gh/org/repo/main").status_code == 200
    assert client(application, peer="2001:db8::2").get("/v2/gh/org/repo/main").status_code == 429, \
        "another address of the same /64 is the same client"
    assert client(application, peer="2001:db8:0:1::1").get("/v2/gh/org/repo/main").status_code == 200


def test_with_the_limit_off_pages_and_tokens_are_not_counted(app: tuple[Any, RecordingProducer]) -> None:
    application, recorder = app  # rate_limit 0
    c = client(application)
    token = token_of(c.get("/v2/gh/org/repo/main"))
    assert [c.get("/v2/gh/org/repo/main").status_code for _ in range(5)] == [200] * 5
    assert [launch_status(c, token) for _ in range(3)] + [launch_status(c)] == [503] * 4
    assert launches(recorder) == 4


def test_an_invalid_token_is_refused_before_anything_is_charged() -> None:
    application = memory_app(Settings(rate_limit=1))
    application.state.streams.producer = recorder = RecordingProducer()
    c = client(application)
    token = token_of(c.get("/v2/gh/org/repo/main"))
    assert launch_status(c, token, spec="org/other/main") == 403, "a token is for its own spec"
    assert launch_status(c, token[:-2] + "xx") == 403
    assert launch_status(c, token) == 503 and launches(recorder) == 1, "the genuine token still launches once"


def session_cookie(secret: str, user: str) -> str:
    """The signed cookie Starlette's SessionMiddleware sets after a hub login (auth.py's callback)."""
    import base64
    import json

    import itsdangerous

    data = base64.b64encode(json.dumps({"hub_user": user}).encode())
    return itsdangerous.TimestampSigner(secret).sign(data).decode()


@pytest.mark.parametrize("app_settings", [{"rate_limit": 1, "auth_enabled": True}], indirect=True)
def test_logged_in_users_are_not_charged_on_the_page_either(app: tuple[Any, RecordingProducer], app_settings: Settings) -> None:
    application, recorder = app
    anonymous = client(application).get("/v2/gh/org/repo/main")
    assert anonymous.status_code == 302, "auth is on: the page asks for a login"
    ada = {"Cookie": f"kiln-session={session_cookie(app_settings.session_secret, 'ada')}"}
    c = client(application)
    assert [c.get("/v2/gh/org/repo/main", headers=ada).status_code for _ in range(3)] == [200] * 3
    assert [c.get("/build/gh/org/repo/main", headers={**SSE, **ada}).status_code for _ in range(2)] == [503, 503]
    assert launches(recorder) == 2


# Build tokens, spent tokens and client keys, alone -----------------------------------------------


def test_build_tokens_carry_an_id_of_their_own() -> None:
    import time

    import jwt

    from kiln_gateway.buildtokens import BuildTokenError, BuildTokens

    secret = "s" * 32
    tokens = BuildTokens(secret, expires_s=300, check_origin=True)
    a, b = tokens.issue("gh", "o/r/main", "host"), tokens.issue("gh", "o/r/main", "host")
    ca, cb = tokens.check(a, "gh", "o/r/main", "host"), tokens.check(b, "gh", "o/r/main", "host")
    assert ca.token_id and cb.token_id and ca.token_id != cb.token_id
    # A token without an id (an older gateway's) is still valid, but gets no free launch.
    bare = jwt.encode({"exp": int(time.time()) + 60, "aud": "gh/o/r/main", "origin": "host"}, secret,
                      algorithm="HS256")
    assert tokens.check(bare, "gh", "o/r/main", "host").token_id is None
    forever = jwt.encode({"aud": "gh/o/r/main", "origin": "host", "jti": "x"}, secret, algorithm="HS256")
    with pytest.raises(BuildTokenError):  # no expiry: not one this gateway issued
        tokens.check(forever, "gh", "o/r/main", "host")


def test_spent_tokens_are_spent_once_and_forgotten_when_they_expire() -> None:
    from kiln_gateway.ratelimit import SpentTokens

    spent = SpentTokens(max_entries=3)
    assert spent.spend("a", expires_at=100, now=0) and not spent.spend("a", expires_at=100, now=1)
    assert spent.spend("b", expires_at=100, now=2), "another token has its own free launch"
    assert spent.spend("c", expires_at=500, now=3) and len(spent) == 3
    assert not spent.spend("d", expires_at=500, now=4), "a full ledger charges rather than remembering more"
    assert spent.spend("e", expires_at=500, now=101) and len(spent) == 2, "expired tokens were forgotten"


def test_client_key_is_the_address_or_its_64() -> None:
    from kiln_gateway.clientaddr import client_key

    assert client_key("198.51.100.7") == "198.51.100.7"
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert client_key("2001:db8:0:1::1") != client_key("2001:db8::1")
    assert client_key("::ffff:198.51.100.7") == "198.51.100.7"
    assert client_key("") == "" and client_key("not-an-address") == "not-an-address"


# Resumes belong to the client that started the launch (issue 13) ---------------------------------


def test_event_id_is_bound_to_its_holder() -> None:
    from kiln_gateway.eventids import EventIdNotYours, holder_name

    ids = EventIds("s")
    mine, theirs = holder_name(None, "198.51.100.7"), holder_name(None, "198.51.100.8")
    value = ids.format(RID, 2, 41, holder=mine, now=NOW)
    assert ids.check(value, mine, now=NOW).offset == 41  # the holder resumes
    for other in (theirs, holder_name("ada", "198.51.100.7"), "", holder_name(None, "")):
        with pytest.raises(EventIdNotYours, match="another client"):
            ids.check(value, other, now=NOW)
    ada = ids.format(RID, 2, 41, holder=holder_name("ada", "x"), now=NOW)
    assert ids.check(ada, holder_name("ada", "y"), now=NOW).offset == 41, "a login is bound to the user, not the address"
    with pytest.raises(EventIdNotYours):
        ids.check(ada, holder_name("bob", "x"), now=NOW)
    assert holder_name("198.51.100.7", "") != holder_name(None, "198.51.100.7"), "no user name poses as an address"
    # Per request: one client's ids for two launches do not share a holder field.
    assert ids.format(RID, 0, 1, holder=mine, now=NOW).split(".")[4] != ids.format("cd" * 16, 0, 1, holder=mine, now=NOW).split(".")[4]


class FakeLog:
    """The phase log in memory: each launch request is answered at once with a scripted launch, live
    to the streams open for it, and kept so that a resume replays it (EventRouter.replay's contract)."""

    def __init__(self, application: Any, seal_key: str) -> None:
        self.streams = application.state.streams
        self.sealer = Sealer([seal_key])
        self.log: dict[str, list[Any]] = {}
        self.streams.producer = self
        self.streams.router.replay = self.replay

    async def publish(self, topic: Any, key: str, value: Any) -> None:
        from kiln_gateway.router import Routed
        from kilnbus import LaunchRequested

        if not isinstance(value, LaunchRequested):
            return
        def e(phase: Phase, **kw: Any) -> PhaseEvent:
            return PhaseEvent(request_id=key, phase=phase, service="test", message=f"{phase.value}\n", **kw)

        events = [e(Phase.WAITING), e(Phase.BUILDING), e(Phase.LAUNCHING),
                  e(Phase.READY, url=SERVER, sealed_token=self.sealer.seal(f"token-{key}", request_id=key, url=SERVER))]
        self.log[key] = [Routed(0, 100 + i, event) for i, event in enumerate(events)]
        for sub in list(self.streams.router._routes.get(key, ())):  # what the router's reader would do
            for item in self.log[key]:
                sub.push(item)

    async def replay(self, sub: Any, partition: int, after_offset: int) -> Phase | None:
        seen = None
        for item in self.log.get(sub.request_id, []):
            if item.offset == after_offset:
                seen = item.event.phase
            elif item.offset > after_offset:
                sub.push(item, replayed=True)
        return seen


def sse(response: httpx.Response) -> list[tuple[str | None, dict[str, Any]]]:
    import json

    out = []
    for block in response.text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in lines:
            out.append((lines.get("id"), json.loads(lines["data"])))
    return out


def test_only_the_address_that_launched_resumes_in_the_anonymous_mode(app: tuple[Any, RecordingProducer],
                                                                        app_settings: Settings) -> None:
    application, _ = app
    fake = FakeLog(application, app_settings.token_seal_keys[0])
    launcher = client(application, peer="198.51.100.7")
    first = sse(launcher.get("/build/gh/org/repo/main", headers=SSE))
    assert [d["phase"] for _, d in first] == ["waiting", "building", "launching", "ready"]
    (rid,) = fake.log
    building_id = first[1][0]
    assert building_id is not None
    # Another address holding the id (a copied HAR, a shared screenshot of devtools): refused, no token.
    for thief in (client(application, peer="198.51.100.8"), client(application, peer="2001:db8::7")):
        r = thief.get("/build/gh/org/repo/main", headers={**SSE, "Last-Event-ID": building_id})
        assert r.status_code == 403 and "another network address" in r.text
        assert f"token-{rid}" not in r.text and "url" not in sse(r)[0][1]
    # The browser that launched, reconnecting after a blip from its own address, resumes and gets the token.
    again = launcher.get("/build/gh/org/repo/main", headers={**SSE, "Last-Event-ID": building_id})
    resumed = sse(again)
    assert again.status_code == 200 and [d["phase"] for _, d in resumed] == ["launching", "ready"]
    assert resumed[-1][1]["token"] == f"token-{rid}"
    # The ids of the resumed stream are the launcher's too: they resume from it, and only from it.
    launching_id = resumed[0][0]
    assert launching_id is not None
    assert client(application, peer="198.51.100.8").get(
        "/build/gh/org/repo/main", headers={**SSE, "Last-Event-ID": launching_id}).status_code == 403
    assert sse(launcher.get("/build/gh/org/repo/main", headers={**SSE, "Last-Event-ID": launching_id}))[-1][1]["token"] \
        == f"token-{rid}"


@pytest.mark.parametrize("app_settings", [{"trusted_proxies": ["10.0.0.0/8"]}], indirect=True)
def test_behind_a_proxy_the_resume_is_bound_to_the_real_client(app: tuple[Any, RecordingProducer],
                                                                app_settings: Settings) -> None:
    application, _ = app
    FakeLog(application, app_settings.token_seal_keys[0])
    ingress = client(application, peer="10.0.0.7")
    alice, mallory = {"X-Forwarded-For": "198.51.100.7"}, {"X-Forwarded-For": "198.51.100.8"}
    event_id = sse(ingress.get("/build/gh/org/repo/main", headers={**SSE, **alice}))[0][0]
    assert event_id is not None
    r = ingress.get("/build/gh/org/repo/main", headers={**SSE, **mallory, "Last-Event-ID": event_id})
    assert r.status_code == 403, "the same proxy in front of both does not make them one client"
    r = ingress.get("/build/gh/org/repo/main", headers={**SSE, **alice, "Last-Event-ID": event_id})
    assert r.status_code == 200 and sse(r)[-1][1]["phase"] == "ready"


@pytest.mark.parametrize("app_settings", [{"auth_enabled": True}], indirect=True)
def test_only_the_hub_user_who_launched_resumes_when_auth_is_on(app: tuple[Any, RecordingProducer],
                                                                 app_settings: Settings) -> None:
    application, _ = app
    FakeLog(application, app_settings.token_seal_keys[0])
    ada = {"Cookie": f"kiln-session={session_cookie(app_settings.session_secret, 'ada')}"}
    bob = {"Cookie": f"kiln-session={session_cookie(app_settings.session_secret, 'bob')}"}
    first = sse(client(application, peer="198.51.100.7").get("/build/gh/org/repo/main", headers={**SSE, **ada}))
    event_id = first[0][0]
    assert event_id is not None and first[-1][1]["phase"] == "ready"
    same_address = client(application, peer="198.51.100.7")
    r = same_address.get("/build/gh/org/repo/main", headers={**SSE, **bob, "Last-Event-ID": event_id})
    assert r.status_code == 403 and "another hub user" in r.text and "token-" not in r.text, \
        "another login is refused even from the launch's own address"
    r = same_address.get("/build/gh/org/repo/main", headers={**SSE, "Last-Event-ID": event_id})
    assert r.status_code == 403 and "Authentication required" in r.text and "token-" not in r.text
    # Ada's browser moved networks (laptop from Wi-Fi to a phone's hotspot): her login still resumes.
    roamed = client(application, peer="203.0.113.99").get("/build/gh/org/repo/main",
                                                          headers={**SSE, **ada, "Last-Event-ID": event_id})
    assert roamed.status_code == 200 and sse(roamed)[-1][1]["token"].startswith("token-")
