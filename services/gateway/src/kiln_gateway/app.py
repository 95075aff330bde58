"""The gateway's Starlette application."""

from __future__ import annotations

from importlib.metadata import version

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kiln_gateway.settings import Settings


def create_app(settings: Settings) -> Starlette:
    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "checks": []})

    async def versions(request: Request) -> JSONResponse:
        return JSONResponse({"kiln": version("kiln-gateway"), "builder_info": {}})

    return Starlette(routes=[Route("/health", health), Route("/versions", versions)])
