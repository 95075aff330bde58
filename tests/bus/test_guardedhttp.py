"""The guarded HTTP client's redirects: each hop checked, and credentials kept to the origin they were for.

Two small HTTP servers on loopback (two ports: two origins) that record the Authorization header of
every request and redirect as the path says.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kilnbus.guardedhttp import GuardedHTTP


class _Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, str]]

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization") or ""))
        if self.path.startswith("/to/"):  # /to/<url-without-scheme>
            self.send_response(302)
            self.send_header("Location", "http://" + self.path[len("/to/"):])
        else:
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def servers() -> Iterator[tuple[str, str, list[tuple[str, str]]]]:
    seen: list[tuple[str, str]] = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    started = [ThreadingHTTPServer(("127.0.0.1", 0), handler) for _ in range(2)]
    for server in started:
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    a, b = (f"127.0.0.1:{s.server_address[1]}" for s in started)
    yield a, b, seen
    for server in started:
        server.shutdown()


async def test_authorization_follows_a_redirect_only_to_the_same_origin(servers: tuple[str, str, list[tuple[str, str]]]) -> None:
    a, b, seen = servers
    http = GuardedHTTP(["http"], ["127.0.0.1"], 5)
    async with http.get(f"http://{a}/to/{a}/same", {"Authorization": "Bearer s3cret"}) as answer:
        assert answer.response.status_code == 200
    async with http.get(f"http://{a}/to/{b}/other", {"Authorization": "Bearer s3cret"}) as answer:
        assert answer.response.status_code == 200
    await http.aclose()
    assert seen == [("/to/" + a + "/same", "Bearer s3cret"), ("/same", "Bearer s3cret"),
                    ("/to/" + b + "/other", "Bearer s3cret"), ("/other", "")], seen
