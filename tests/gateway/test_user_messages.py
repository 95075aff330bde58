"""What the gateway's OAuth callback tells a browser when the hub does not confirm a login: a clear
message, and the hub's answer (its internal address, its error) only in the log. In memory."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from kiln_gateway.auth import HubAuth
from kiln_gateway.settings import Settings
from kilnbus.sealing import new_key

HUB_API = "http://hub.kiln.internal:8081/hub/api"


def hub(confirming: bool) -> httpx.AsyncClient:
    def answer(request: httpx.Request) -> httpx.Response:
        if not confirming:
            return httpx.Response(500, text="upstream oauth provider at 10.20.0.4 failed")
        if request.url.path.endswith("/oauth2/token"):
            return httpx.Response(200, json={"access_token": "t"})
        return httpx.Response(200, json={"name": "alice"})

    return httpx.AsyncClient(transport=httpx.MockTransport(answer))


async def login(confirming: bool) -> httpx.Response:
    settings = Settings(token_seal_keys=[new_key()], hub_api_url=HUB_API, rate_limit=0)
    auth = HubAuth(settings, hub(confirming))

    async def begin(request: Request) -> Response:
        request.session["oauth_state"] = "s1"
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/begin", begin), Route("/oauth_callback", auth.callback, name="oauth_callback")],
                    middleware=[Middleware(SessionMiddleware, secret_key="k" * 32)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as browser:
        await browser.get("/begin")
        return await browser.get("/oauth_callback?code=c&state=s1")


async def test_a_login_the_hub_does_not_confirm_is_told_without_the_hubs_details(
        caplog: pytest.LogCaptureFixture) -> None:
    refused = await login(confirming=False)
    assert refused.status_code == 502
    assert refused.text.startswith("JupyterHub did not confirm the login. Please try again")
    assert "hub.kiln.internal" not in refused.text and "10.20.0.4" not in refused.text
    assert "hub.kiln.internal" in caplog.text, "control: the details are in the log"
    confirmed: Any = await login(confirming=True)  # control: a confirmed login goes on
    assert confirmed.status_code == 302
