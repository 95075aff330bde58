"""The gateway's Starlette application, made from settings and the ports the composition root built.

``create_app(settings, ports)`` only assembles: the stream's door (``kiln_gateway.stream``), the
pages (``kiln_gateway.pages``), the small API endpoints (``kiln_gateway.api``), the static files
(``kiln_gateway.statics``) and the middleware (``kiln_gateway.middleware``). Clients come in
``ports`` (``kiln_gateway.bootstrap`` for production, a ``MemoryBus`` and fakes in tests); the
application's lifespan starts them and closes them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from kiln_gateway import api
from kiln_gateway.buildtokens import BuildTokens
from kiln_gateway.clientaddr import ClientAddresses
from kiln_gateway.eventids import EventIds
from kiln_gateway.health import Health
from kiln_gateway.middleware import BanMiddleware, LoginRequired
from kiln_gateway.pages import Pages
from kiln_gateway.ports import GatewayPorts
from kiln_gateway.ratelimit import RateLimiter
from kiln_gateway.settings import Settings
from kiln_gateway.statics import static_routes
from kiln_gateway.stream import LaunchStreams
from kilnbus.sealing import Sealer


class AnyPath(Convertor[str]):
    """Like Starlette's ``path``, but also matches newlines, so a spec with control characters reaches
    the spec check and gets its clear 400 instead of an unexplained 404."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anypath", AnyPath())


class NotFound:
    """404s: JSON on the API (and in API-only mode), the error page elsewhere."""

    def __init__(self, settings: Settings, pages: Pages) -> None:
        self._settings = settings
        self._pages = pages

    async def respond(self, request: Request, exc: Exception) -> Response:
        if self._settings.enable_api_only_mode or request.url.path.startswith(self._settings.base_url + "build/"):
            return JSONResponse({"status": 404, "message": "Not found"}, status_code=404)
        return self._pages.error(request, 404, f"There is no page at {request.url.path}.")


def create_app(settings: Settings, ports: GatewayPorts) -> Starlette:
    """The application over ``ports``; its lifespan starts them and closes them."""
    build_tokens = BuildTokens(settings.build_token_secret, settings.build_token_expires_s, settings.build_token_check_origin)
    addresses = ClientAddresses(settings.trusted_proxies)
    rate_limiter = RateLimiter(settings.rate_limit, settings.rate_limit_period_s)  # the page's and /build's
    streams = LaunchStreams(
        settings=settings, router=ports.router, producer=ports.bus, topics=ports.bus.topics,
        sealer=Sealer(settings.token_seal_keys) if settings.token_seal_keys else None,
        event_ids=EventIds(settings.resume_secret, settings.event_id_lifetime_s), build_tokens=build_tokens,
        rate_limiter=rate_limiter, addresses=addresses, auth=ports.auth,
    )
    pages = Pages(settings, build_tokens, rate_limiter, addresses)
    health = Health(settings, ports.router, ports.group_lag, ports.hub_http)
    base = settings.base_url

    routes: list[BaseRoute] = [
        Route(base + "health", api.HealthEndpoint(health).respond, methods=["GET", "HEAD"]),
        Route(base + "versions", api.VersionsEndpoint(settings).respond),
        Route(base + "metrics", api.metrics),
        Route(base + "api/repoproviders", api.repoproviders),
        Route(base + "build/{provider}/{spec:anypath}", api.BuildEndpoint(settings, streams).respond),
    ]
    if not settings.enable_api_only_mode:
        routes += [
            Route(base, LoginRequired(ports.auth, pages.home).respond),
            Route(base + "about", pages.about),
            Route(base + "v2/{provider}/{spec:anypath}", LoginRequired(ports.auth, pages.loading).respond),
            Route(base + "oauth_callback", ports.auth.callback, name="oauth_callback"),
            Route(base + "repo/{user}/{repo}", pages.legacy_repo),
            Route(base + "repo/{user}/{repo}/{path:path}", pages.legacy_repo),
            *static_routes(base),
        ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await ports.start()
            yield
        finally:
            await ports.aclose()

    middleware = [Middleware(BanMiddleware, settings=settings, addresses=addresses)]
    if settings.auth_enabled:
        middleware.append(Middleware(SessionMiddleware, secret_key=settings.session_secret, session_cookie="kiln-session",
                                     same_site="lax", https_only=settings.hub_public_url.startswith("https")))
    if settings.cors_allow_origin:
        middleware.insert(0, Middleware(CORSMiddleware, allow_origins=[settings.cors_allow_origin],
                                        allow_methods=["GET", "HEAD", "OPTIONS"], allow_headers=["cache-control", "last-event-id"]))
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={404: NotFound(settings, pages).respond})
    app.state.router = ports.router
    app.state.streams = streams
    app.state.ports = ports
    return app
