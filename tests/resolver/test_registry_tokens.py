"""The registry client's bearer-token flow against a small local HTTP server standing in for a token-auth registry.

The server (started here) answers the Docker Registry API's manifest HEAD with a Bearer challenge
and issues tokens from /token, as Docker Hub or a token-auth distribution registry does; the real
registry with token auth is exercised by the stack and end-to-end suites.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import kiln_resolver.registry as registry_module
from kiln_resolver.registry import Registry, RegistryError


@pytest.fixture
def token_registry() -> Iterator[dict[str, Any]]:
    """Registry API answering a Bearer challenge, plus its token server (basic auth kiln:pw)."""
    state: dict[str, Any] = {"token_requests": [], "heads": 0, "images": {"kiln/binder-a:1"}, "valid": "granted",
                             "expires_in": 300, "hiding": set()}

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.startswith("/token"):
                state["token_requests"].append(self.path)
                auth = self.headers.get("Authorization", "")
                if not auth:  # as Docker Hub: anyone gets a token, good only for public repositories
                    return self._send(200, json.dumps({"access_token": "anonymous"}).encode())
                if auth != "Basic " + base64.b64encode(b"kiln:pw").decode():
                    return self._send(401)
                expires = state["expires_in"]
                body = json.dumps({"token": state["valid"]})[:-1] + f', "expires_in": {expires}}}'  # any JSON number
                return self._send(200, body.encode())
            self._send(404)

        def do_HEAD(self) -> None:
            parts = self.path.split("/")  # /v2/<repo...>/manifests/<tag>
            repo, tag = "/".join(parts[2:-2]), parts[-1]
            state["heads"] += 1
            if self.headers.get("Authorization", "").removeprefix("Bearer ") in state["hiding"]:
                return self._send(404)  # as registries that hide what a token may not see
            if self.headers.get("Authorization") != f"Bearer {state['valid']}":
                realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
                return self._send(401, headers={"WWW-Authenticate":
                                                f'Bearer realm="{realm}",service="test-registry",scope="repository:{repo}:pull"'})
            self._send(200 if f"{repo}:{tag}" in state["images"] else 404)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()


@pytest.mark.parametrize("configured", [False, True], ids=["challenge", "token_url"])
async def test_bearer_token_flow(token_registry: dict[str, Any], configured: bool) -> None:
    token_url = token_registry["url"] + "/token?service=test-registry" if configured else ""
    registry = Registry(token_registry["url"], "kiln", "pw", token_url=token_url)
    assert await registry.image_exists("kiln/binder-a", "1") is True
    assert await registry.image_exists("kiln/binder-a", "2") is False
    assert all("service=test-registry" in r and "scope=repository%3Akiln%2Fbinder-a%3Apull" in r
               for r in token_registry["token_requests"])
    with pytest.raises(RegistryError, match="token server refused"):
        await Registry(token_registry["url"], "kiln", "bad", token_url=token_url).image_exists("kiln/binder-a", "1")


@pytest.mark.parametrize("configured", [False, True], ids=["challenge", "token_url"])
async def test_a_token_is_kept_per_scope_until_it_expires_or_is_refused(token_registry: dict[str, Any], configured: bool,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    token_url = token_registry["url"] + "/token?service=test-registry" if configured else ""
    registry = Registry(token_registry["url"], "kiln", "pw", token_url=token_url)
    assert await registry.image_exists("kiln/binder-a", "1") is True
    first_heads = token_registry["heads"]
    assert len(token_registry["token_requests"]) == 1
    # Kept: the same repository again is one request to the registry and none to the token server.
    assert await registry.image_exists("kiln/binder-a", "1") is True
    assert len(token_registry["token_requests"]) == 1 and token_registry["heads"] == first_heads + 1
    # Another repository is another scope: a token of its own.
    assert await registry.image_exists("kiln/binder-b", "1") is False
    assert len(token_registry["token_requests"]) == 2
    # Refused (the server's key changed): asked for again, and the answer is still right.
    token_registry["valid"] = "rotated"
    assert await registry.image_exists("kiln/binder-a", "1") is True
    assert len(token_registry["token_requests"]) == 3
    # Past its lifetime (less the margin) a kept token is not sent.
    clock = time.monotonic()
    monkeypatch.setattr(registry_module.time, "monotonic", lambda: clock + 300)
    assert await registry.image_exists("kiln/binder-a", "1") is True
    assert len(token_registry["token_requests"]) == 4
    await registry.aclose()


async def test_a_token_server_without_a_token_is_a_registry_error(token_registry: dict[str, Any]) -> None:
    token_registry["valid"] = ""  # {"token": ""}: nothing usable
    with pytest.raises(RegistryError, match="without a token"):
        await Registry(token_registry["url"], "kiln", "pw").image_exists("kiln/binder-a", "1")


async def test_docker_hub_401_means_not_found(token_registry: dict[str, Any]) -> None:
    """Docker Hub answers 401 for repositories that do not exist; with not_found_401 that is a miss."""
    token_url = token_registry["url"] + "/token?service=x"
    assert await Registry(token_registry["url"], not_found_401=True, token_url=token_url).image_exists("kiln/none", "1") is False
    with pytest.raises(RegistryError, match="refused"):
        await Registry(token_registry["url"], not_found_401=False, token_url=token_url).image_exists("kiln/none", "1")


async def test_a_miss_answered_to_a_kept_token_is_asked_again_with_a_fresh_one(token_registry: dict[str, Any]) -> None:
    """A registry that answers 404 to a token whose grants changed: the image is there for a fresh token."""
    registry = Registry(token_registry["url"], "kiln", "pw")
    assert await registry.image_exists("kiln/binder-a", "1") is True
    token_registry["hiding"].add("granted")
    token_registry["valid"] = "regranted"
    assert await registry.image_exists("kiln/binder-a", "1") is True
    assert len(token_registry["token_requests"]) == 2
    # Control: a miss for a fresh token is a miss.
    assert await registry.image_exists("kiln/binder-a", "9") is False
    await registry.aclose()


@pytest.mark.parametrize("expires_in", ["1" + "0" * 400, "-5", "0", "1e400", '"soon"'])
async def test_a_token_server_naming_any_lifetime_still_answers(token_registry: dict[str, Any], expires_in: str) -> None:
    """Whatever lifetime the token server names (huge, negative, zero, not a number), the answer is right."""
    token_registry["expires_in"] = expires_in
    registry = Registry(token_registry["url"], "kiln", "pw")
    assert await registry.image_exists("kiln/binder-a", "1") is True
    assert await registry.image_exists("kiln/binder-a", "2") is False
    await registry.aclose()
