"""BinderHub's HTTP API beside the pages: /build's entry, /health, /versions, /metrics, /api/repoproviders.

Each endpoint is a small callable made once with what it needs; ``kiln_gateway.app`` routes to them.
"""

from __future__ import annotations

from importlib.metadata import version

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from kiln_gateway.health import Health
from kiln_gateway.pages import raw_tail
from kiln_gateway.settings import Settings
from kiln_gateway.stream import LaunchStreams
from kilnbus.providers import PROVIDERS


class BuildEndpoint:
    """``/build/<provider>/<spec>``: the spec as sent (undecoded, so ``%2F`` survives), then the stream."""

    def __init__(self, settings: Settings, streams: LaunchStreams) -> None:
        self._base = settings.base_url
        self._streams = streams

    async def respond(self, request: Request) -> Response:
        request.path_params["spec"] = raw_tail(request, f"{self._base}build/{request.path_params['provider']}/")
        return await self._streams.handle(request)


class HealthEndpoint:
    """``/health``: the report as JSON, 503 when a check failed; HEAD gets the status alone."""

    def __init__(self, health: Health) -> None:
        self._health = health

    async def respond(self, request: Request) -> Response:
        report = await self._health.report()
        status = 200 if report["ok"] else 503
        if request.method == "HEAD":
            return Response(status_code=status)
        return JSONResponse(report, status_code=status)


class VersionsEndpoint:
    """``/versions`` as BinderHub answers it, readable from any origin."""

    def __init__(self, settings: Settings) -> None:
        kiln_version = version("kiln-gateway")  # read once: a metadata lookup costs milliseconds
        self._body = {"binderhub": kiln_version, "kiln": kiln_version, "builder_info": {"kiln": kiln_version}}
        self._headers = {"Access-Control-Allow-Origin": settings.cors_allow_origin or "*"}

    async def respond(self, request: Request) -> Response:
        return JSONResponse(self._body, headers=self._headers)


async def metrics(request: Request) -> Response:
    """``/metrics``: this process's Prometheus metrics."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def repoproviders(request: Request) -> Response:
    """``/api/repoproviders``: the providers Kiln launches (``kilnbus.providers``), in BinderHub's shape."""
    return JSONResponse([p.display_config() for p in PROVIDERS.values()])
