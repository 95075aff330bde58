"""The gateway's Starlette application: routes, middleware, and the start-up that wires them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from kilnbus import BusProducer, Topics, ensure_topics
from kilnbus.providers import PROVIDERS
from kilnbus.sealing import Sealer

from kiln_gateway.auth import HubAuth
from kiln_gateway.buildtokens import BuildTokens
from kiln_gateway.clientaddr import ClientAddresses
from kiln_gateway.eventids import EventIds
from kiln_gateway.health import Health
from kiln_gateway.pages import Pages, raw_tail
from kiln_gateway.ratelimit import RateLimiter
from kiln_gateway.router import EventRouter
from kiln_gateway.settings import Settings
from kiln_gateway.stream import LaunchStreams, banned

STATIC = Path(__file__).parent / "static"


class AnyPath(Convertor[str]):
    """Like Starlette's ``path``, but also matches newlines, so a spec with control characters reaches
    the spec check and gets its clear 400 instead of an unexplained 404."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anypath", AnyPath())


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


def create_app(settings: Settings) -> Starlette:
    topics = Topics(settings.topic_prefix)
    router = EventRouter(settings, topics.phase_events)
    producer = BusProducer(settings, delivery_timeout_s=settings.publish_timeout_s)
    build_tokens = BuildTokens(settings.build_token_secret, settings.build_token_expires_s, settings.build_token_check_origin)
    addresses = ClientAddresses(settings.trusted_proxies)
    rate_limiter = RateLimiter(settings.rate_limit, settings.rate_limit_period_s)  # the page's and /build's
    streams = LaunchStreams(
        settings=settings, router=router, producer=producer, topics=topics,
        sealer=Sealer(settings.token_seal_keys) if settings.token_seal_keys else None,
        event_ids=EventIds(settings.resume_secret, settings.event_id_lifetime_s), build_tokens=build_tokens,
        rate_limiter=rate_limiter, addresses=addresses,
    )
    auth = HubAuth(settings)
    streams.auth = auth
    pages = Pages(settings, build_tokens, rate_limiter, addresses)
    health = Health(settings, router)
    base = settings.base_url

    def login_required(page: Any) -> Any:
        async def guarded(request: Request) -> Response:
            if auth.enabled and auth.user(request) is None:
                return auth.login(request)
            return await page(request)
        return guarded

    async def build(request: Request) -> Response:
        request.path_params["spec"] = raw_tail(request, f"{base}build/{request.path_params['provider']}/")
        return await streams.handle(request)

    async def health_route(request: Request) -> Response:
        report = await health.report()
        status = 200 if report["ok"] else 503
        if request.method == "HEAD":
            return Response(status_code=status)
        return JSONResponse(report, status_code=status)

    kiln_version = version("kiln-gateway")  # read once: a metadata lookup costs milliseconds
    versions_body = {"binderhub": kiln_version, "kiln": kiln_version, "builder_info": {"kiln": kiln_version}}

    async def versions(request: Request) -> Response:
        return JSONResponse(versions_body, headers={"Access-Control-Allow-Origin": settings.cors_allow_origin or "*"})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def repoproviders(request: Request) -> Response:
        return JSONResponse([p.display_config() for p in PROVIDERS.values()])

    def static_file(name: str, media_type: str = "image/svg+xml") -> Route:
        async def serve(request: Request) -> Response:
            return FileResponse(STATIC / name, media_type=media_type, headers={"Cache-Control": "public, max-age=3600"})
        return Route(base + name, serve)

    routes: list[BaseRoute] = [
        Route(base + "health", health_route, methods=["GET", "HEAD"]),
        Route(base + "versions", versions),
        Route(base + "metrics", metrics),
        Route(base + "api/repoproviders", repoproviders),
        Route(base + "build/{provider}/{spec:anypath}", build),
    ]
    if not settings.enable_api_only_mode:
        routes += [
            Route(base, login_required(pages.home)),
            Route(base + "about", pages.about),
            Route(base + "v2/{provider}/{spec:anypath}", login_required(pages.loading)),
            Route(base + "oauth_callback", auth.callback, name="oauth_callback"),
            Route(base + "repo/{user}/{repo}", pages.legacy_repo),
            Route(base + "repo/{user}/{repo}/{path:path}", pages.legacy_repo),
            Route(base + "assets/images/badge.svg", lambda r: FileResponse(STATIC / "badge.svg", media_type="image/svg+xml")),
            *(static_file(n) for n in ("badge.svg", "badge_logo.svg", "favicon.svg", "favicon_building.svg",
                                      "favicon_success.svg", "favicon_fail.svg")),
            Route(base + "favicon.ico", lambda r: FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")),
            Mount(base + "static", StaticFiles(directory=STATIC), name="static"),
        ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await ensure_topics(settings)
        await producer.start()
        await router.start()
        try:
            yield
        finally:
            await health.close()
            await router.stop()
            await producer.stop()

    async def not_found(request: Request, exc: Exception) -> Response:
        if settings.enable_api_only_mode or request.url.path.startswith(base + "build/"):
            return JSONResponse({"status": 404, "message": "Not found"}, status_code=404)
        return pages.error(request, 404, f"There is no page at {request.url.path}.")

    middleware = [Middleware(BanMiddleware, settings=settings, addresses=addresses)]
    if settings.auth_enabled:
        middleware.append(Middleware(SessionMiddleware, secret_key=settings.session_secret, session_cookie="kiln-session",
                                     same_site="lax", https_only=settings.hub_public_url.startswith("https")))
    if settings.cors_allow_origin:
        middleware.insert(0, Middleware(CORSMiddleware, allow_origins=[settings.cors_allow_origin],
                                        allow_methods=["GET", "HEAD", "OPTIONS"], allow_headers=["cache-control", "last-event-id"]))
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan, exception_handlers={404: not_found})
    app.state.router = router
    app.state.streams = streams
    return app
