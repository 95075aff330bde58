"""The static files: badges and favicons at BinderHub's paths, and /static."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
SVGS = ("badge.svg", "badge_logo.svg", "favicon.svg", "favicon_building.svg", "favicon_success.svg", "favicon_fail.svg")


class StaticFile:
    """One file under ``static/``, cached by browsers for an hour."""

    def __init__(self, name: str, media_type: str = "image/svg+xml", cache: bool = True) -> None:
        self._path = STATIC / name
        self._media_type = media_type
        self._headers = {"Cache-Control": "public, max-age=3600"} if cache else None

    async def respond(self, request: Request) -> Response:
        return FileResponse(self._path, media_type=self._media_type, headers=self._headers)


def static_routes(base: str) -> list[BaseRoute]:
    """The routes of the static files under ``base``."""
    return [
        Route(base + "assets/images/badge.svg", StaticFile("badge.svg", cache=False).respond),
        *(Route(base + name, StaticFile(name).respond) for name in SVGS),
        Route(base + "favicon.ico", StaticFile("favicon.svg", cache=False).respond),
        Mount(base + "static", StaticFiles(directory=STATIC), name="static"),
    ]
