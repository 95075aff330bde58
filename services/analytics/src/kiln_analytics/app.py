"""The analytics web app: the JSON API and export (``kiln_analytics.api``), the dashboard
(``kiln_analytics.dashboard``) and /metrics, answered from a ``RequestSource`` it is given.

``kiln_analytics.bootstrap`` gives it the faust-backed ``Analytics``; the app's lifespan starts and
stops the source.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kiln_analytics.api import Api, answer
from kiln_analytics.dashboard import Dashboard
from kiln_analytics.settings import Settings
from kiln_analytics.source import RequestSource


async def metrics(request: Request) -> Response:
    """``/metrics``: this process's Prometheus metrics."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def create_app(settings: Settings, source: RequestSource) -> Starlette:
    """The web app over ``source``; its lifespan starts the source and stops it."""
    api = Api(settings, source)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await source.start()
        try:
            yield
        finally:
            await source.stop()

    routes = [
        Route("/", Dashboard(settings, source).page), Route("/health", api.health, methods=["GET", "HEAD"]),
        Route("/metrics", metrics),
        Route("/api/v1/summary", answer(api.summary)),
        Route("/api/v1/launches", answer(api.launches)),
        Route("/api/v1/repos", answer(api.repos)),
        Route("/api/v1/phases", answer(api.phases)),
        Route("/api/v1/failures", answer(api.failures)),
        Route("/api/v1/running", answer(api.running)),
        Route("/api/v1/requests/{request_id}", api.one_request),
        Route("/api/v1/export/launches.jsonl", api.export),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.analytics = source
    return app
