"""The authenticated mode against a real JupyterHub (DummyAuthenticator) acting as OAuth provider.

A second hub instance of the local stack runs on ports of its own with ``KILN_HUB_AUTH=dummy``,
which registers the gateway as an OAuth client; the test logs in through the hub's own login form.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest

from kilnbus import Phase, PhaseEvent

from ..support.stack import user_gateway
from .conftest import Gateway, free_port

pytestmark = [pytest.mark.kafka, pytest.mark.hub, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gateway_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def auth_hub(gateway_port: int) -> Iterator[dict[str, str]]:
    ports = {"KILN_HUB_PORT": str(free_port()), "KILN_HUB_API_PORT": str(free_port()), "KILN_PROXY_API_PORT": str(free_port())}
    env = {**os.environ, **ports, "KILN_HUB_INSTANCE": "auth-test", "KILN_HUB_AUTH": "dummy",
           "KILN_GATEWAY_OAUTH_CALLBACK": f"http://127.0.0.1:{gateway_port}/oauth_callback"}
    script = str(ROOT / "deploy" / "local" / "hub.sh")
    started = subprocess.run(["bash", script, "start"], env=env, capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stdout + started.stderr
    yield ports
    subprocess.run(["bash", script, "stop"], env=env, capture_output=True, timeout=120)


@pytest.fixture
def gateway_settings(gateway_settings: Any, auth_hub: dict[str, str], gateway_port: int) -> Any:
    return gateway_settings.model_copy(update={
        "gateway_port": gateway_port, "auth_enabled": True,
        "hub_public_url": f"http://127.0.0.1:{auth_hub['KILN_HUB_PORT']}",
        "hub_api_url": f"http://{user_gateway()}:{auth_hub['KILN_HUB_API_PORT']}/hub/api",
        "hub_api_token": (ROOT / ".state" / "hub" / "gateway-token").read_text().strip(),
        "oauth_callback_url": f"http://127.0.0.1:{gateway_port}/oauth_callback",
        "rate_limit": 1,
    })


async def log_in(client: httpx.AsyncClient, start: str, user: str) -> httpx.Response:
    """Follow the OAuth dance a browser would, filling in the hub's login form."""
    r = await client.get(start)
    for _ in range(10):
        if r.status_code in (301, 302, 303):
            r = await client.get(urljoin(str(r.url), r.headers["location"]))
            continue
        if "/hub/login" in str(r.url) and r.request.method == "GET":
            xsrf = re.search(r'name="_xsrf" value="([^"]+)"', r.text)
            form = {"username": user, "password": "any"} | ({"_xsrf": xsrf.group(1)} if xsrf else {})
            r = await client.post(str(r.url), data=form)
            continue
        return r
    raise AssertionError(f"login did not finish: {r.status_code} {r.url}")


async def test_pages_and_launches_need_a_hub_login(gateway: Gateway, scripted: Any) -> None:
    services = await scripted(lambda req: [PhaseEvent(request_id=req.request_id, phase=Phase.FAILED, service="t")])
    # Not logged in: pages send the browser to the hub, the API refuses.
    r = await gateway.client.get("/v2/gh/org/repo/main")
    assert r.status_code == 302 and "/hub/api/oauth2/authorize?client_id=service-kiln-gateway" in r.headers["location"]
    status, events, _ = await gateway.events("/build/gh/org/repo/main")
    assert status == 403 and "Authentication required" in events[0]["data"]["message"]
    assert services.requests == []

    async with httpx.AsyncClient() as browser:
        page = await log_in(browser, f"{gateway.url}/v2/gh/org/repo/main", "ada")
        assert page.status_code == 200 and str(page.url) == f"{gateway.url}/v2/gh/org/repo/main"
        assert "Launching your Binder" in page.text
        # Logged in, the launch belongs to that hub user, and is not rate limited (limit is 1 here).
        for _ in range(2):
            async with browser.stream("GET", f"{gateway.url}/build/gh/org/repo/main",
                                      headers={"Accept": "text/event-stream"}) as r:
                assert r.status_code == 200
                async for _line in r.aiter_lines():
                    pass
    assert [req.hub_user for req in services.requests] == ["ada", "ada"]


async def test_forged_oauth_callback_is_refused(gateway: Gateway) -> None:
    r = await gateway.client.get("/oauth_callback?code=abc&state=forged")
    assert r.status_code == 400 and "OAuth state" in r.text
