"""What stands in front of the routes: the ``ban_networks`` refusal and the login requirement."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from kiln_gateway.auth import HubAuth
from kiln_gateway.clientaddr import ClientAddresses
from kiln_gateway.settings import Settings
from kiln_gateway.stream import banned

Endpoint = Callable[[Request], Awaitable[Response]]


class BanMiddleware:
    """Refuses clients from ``ban_networks`` everywhere but /health and /versions (as BinderHub)."""

    def __init__(self, app: ASGIApp, settings: Settings, addresses: ClientAddresses) -> None:
        self.app = app
        self.settings = settings
        self.addresses = addresses
        self.open_paths = {settings.base_url + "health", settings.base_url + "versions"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.open_paths:
            label = banned(self.settings, self.addresses.of(Request(scope)))
            if label:
                response = Response(f"Requests from {label} are not allowed.\n", status_code=403, media_type="text/plain")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class LoginRequired:
    """``page``, once the visitor has logged in at the hub (when the authenticated mode is on)."""

    def __init__(self, auth: HubAuth, page: Endpoint) -> None:
        self._auth = auth
        self._page = page

    async def respond(self, request: Request) -> Response:
        if self._auth.enabled and self._auth.user(request) is None:
            return self._auth.login(request)
        return await self._page(request)
