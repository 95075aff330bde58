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

from kilnbus import Phase, PhaseEvent
from kilnbus.sealing import Sealer, new_key

from kiln_gateway.app import create_app
from kiln_gateway.clientaddr import ClientAddresses
from kiln_gateway.eventids import EventIdError, EventIds
from kiln_gateway.projection import project
from kiln_gateway.settings import Settings
from kiln_gateway.specs import SpecError, launch_path

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
    rid, partition, offset, issued, signature = value.split(".")
    assert (rid, partition, offset, issued) == (RID, "2", "41", str(NOW)) and len(signature) == 32
    parsed = ids.check(value, now=NOW + 3599)
    assert (parsed.request_id, parsed.partition, parsed.offset) == (RID, 2, 41)


@pytest.mark.parametrize("index, new", [(0, "cd" * 16), (1, "3"), (1, "0"), (2, "0"), (2, "40"), (2, "42"),
                                        (3, str(NOW + 10)), (3, str(NOW - 10)), (4, "0" * 32)],
                         ids=["request", "partition", "partition-0", "offset-0", "offset-1", "offset+1",
                              "issued-later", "issued-earlier", "signature"])
def test_tampered_event_id_is_refused(index: int, new: str) -> None:
    ids = EventIds("s")
    value = ids.format(RID, 2, 41, now=NOW)
    assert ids.parse(value, now=NOW) is not None  # the untampered id is good at the same moment
    with pytest.raises(EventIdError, match="not an event id this Kiln issued"):
        ids.check(replace_part(value, index, new), now=NOW)


def test_event_id_from_another_secret_or_malformed_is_refused() -> None:
    value = EventIds("other").format(RID, 2, 41, now=NOW)
    assert EventIds("other").parse(value, now=NOW) is not None
    for bad in (value, RID + ".2.41." + "f" * 32, "not-an-id", "../../etc", value + ".1", " " * 3):
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
    application = create_app(app_settings)
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
