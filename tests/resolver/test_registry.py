"""Registry checks: the real local registry with htpasswd auth, and the bearer-token flow.

The token flow runs against a small registry-and-token server this test starts (a real registry
with token auth needs a PKI the local stack does not have); it answers with the same challenge and
token shapes Docker Hub and GCR use.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kiln_resolver.registry import Registry, RegistryError

from ..stack.test_local_stack import free_port, script

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second real registry, with htpasswd auth, holding one tiny image kiln/binder-probe:abc."""
    port = free_port()
    env = {"KILN_REGISTRY_INSTANCE": "resolver-auth", "KILN_REGISTRY_PORT": str(port),
           "KILN_REGISTRY_HTPASSWD_USER": "kiln", "KILN_REGISTRY_HTPASSWD_PASSWORD": "s3cret"}
    assert script("registry.sh", "start", env=env).returncode == 0
    docker_env = {**os.environ, "DOCKER_CONFIG": str(tmp_path_factory.mktemp("docker-config"))}
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    name = f"127.0.0.1:{port}/kiln/binder-probe:abc"
    run = lambda *a, **kw: subprocess.run(a, env=docker_env, check=True, capture_output=True, timeout=120, **kw)
    run("docker", "import", "-", name, input=layer.getvalue())
    run("docker", "login", "-u", "kiln", "--password-stdin", f"127.0.0.1:{port}", input=b"s3cret")
    run("docker", "push", name)
    run("docker", "rmi", name)
    yield f"http://127.0.0.1:{port}"
    script("registry.sh", "stop", env=env)


async def test_htpasswd_registry(auth_registry: str) -> None:
    registry = Registry(auth_registry, "kiln", "s3cret")
    assert await registry.image_exists("kiln/binder-probe", "abc") is True
    assert await registry.image_exists("kiln/binder-probe", "def") is False
    assert await registry.image_exists("kiln/binder-other", "abc") is False
    with pytest.raises(RegistryError, match="refused Kiln's credentials"):
        await Registry(auth_registry, "kiln", "wrong").image_exists("kiln/binder-probe", "abc")


async def test_unreachable_registry_is_an_error_not_a_miss() -> None:
    with pytest.raises(RegistryError, match="could not be reached"):
        await Registry(f"http://127.0.0.1:{free_port()}").image_exists("kiln/x", "y")


@pytest.fixture
def token_registry() -> Iterator[dict[str, Any]]:
    """Registry API answering a Bearer challenge, plus its token server (basic auth kiln:pw)."""
    state: dict[str, Any] = {"token_requests": [], "images": {"kiln/binder-a:1"}}

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
                return self._send(200, json.dumps({"token": "granted"}).encode())
            self._send(404)

        def do_HEAD(self) -> None:
            parts = self.path.split("/")  # /v2/<repo...>/manifests/<tag>
            repo, tag = "/".join(parts[2:-2]), parts[-1]
            if self.headers.get("Authorization") != "Bearer granted":
                realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
                return self._send(401, headers={"WWW-Authenticate":
                                                f'Bearer realm="{realm}",service="test-registry",scope="repository:{repo}:pull"'})
            self._send(200 if f"{repo}:{tag}" in state["images"] else 404)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
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


async def test_docker_hub_401_means_not_found(token_registry: dict[str, Any]) -> None:
    """Docker Hub answers 401 for repositories that do not exist; with not_found_401 that is a miss."""
    token_url = token_registry["url"] + "/token?service=x"
    assert await Registry(token_registry["url"], not_found_401=True, token_url=token_url).image_exists("kiln/none", "1") is False
    with pytest.raises(RegistryError, match="refused"):
        await Registry(token_registry["url"], not_found_401=False, token_url=token_url).image_exists("kiln/none", "1")
