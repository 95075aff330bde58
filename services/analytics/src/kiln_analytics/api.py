"""The analytics HTTP API (JSON), the launch-event export, the dashboard page and /metrics.

Periods are given as ``since`` and ``until``: ISO 8601 times (``2026-05-01`` or
``2026-05-01T12:00:00Z``) or seconds since the epoch. Without them a question covers the last 30
days up to now.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from kiln_analytics import charts
from kiln_analytics.export import launch_lines
from kiln_analytics.index import WINDOWS
from kiln_analytics.settings import Settings
from kiln_analytics.stream import Analytics

log = logging.getLogger(__name__)
DEFAULT_PERIOD_S = 30 * 86400
PERIODS = (("last day", 1), ("last 7 days", 7), ("last 30 days", 30), ("last 6 months", 182))
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


class BadQuery(ValueError):
    """A query parameter that cannot be understood; answered with 400 and what was wrong."""


def parse_time(value: str, name: str) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadQuery(f"{name} must be an ISO 8601 time or seconds since the epoch, not {value[:40]!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def period(request: Request) -> tuple[float, float]:
    now = time.time()
    until = parse_time(request.query_params["until"], "until") if "until" in request.query_params else now
    since = (parse_time(request.query_params["since"], "since") if "since" in request.query_params
             else until - DEFAULT_PERIOD_S)
    if since > until:
        raise BadQuery("since must not be after until")
    return since, until


def window(request: Request, default: str = "hour") -> str:
    value = request.query_params.get("window", default)
    if value not in WINDOWS:
        raise BadQuery(f"window must be one of {sorted(WINDOWS)}, not {value[:20]!r}")
    return value


def limit(request: Request, default: int) -> int:
    raw = request.query_params.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise BadQuery("limit must be a whole number from 1 to 1000")
    return int(raw)


def create_app(settings: Settings, analytics: Analytics | None = None) -> Starlette:
    """The analytics service's web app; its lifespan starts and stops the faust application."""
    if analytics is None:
        # services.sh waits for this line: the table is recovered and the log is being read.
        analytics = Analytics(settings, on_ready=lambda: log.info("kiln-analytics: consuming the phase events"))
    index = analytics.index

    def answer(compute: Any) -> Any:
        # Async on purpose: the index is read on the event loop that updates it, never from a thread.
        async def endpoint(request: Request) -> Response:
            try:
                return JSONResponse(compute(request))
            except BadQuery as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        return endpoint

    def summary(request: Request) -> dict[str, Any]:
        since, until = period(request)
        return {"since": since, "until": until, "totals": index.totals(), "by_provider": index.by_provider(since, until),
                "failures": index.failures(since, until)}

    def launches(request: Request) -> dict[str, Any]:
        since, until = period(request)
        w = window(request)
        return {"window": w, "since": since, "until": until, "repo": request.query_params.get("repo"),
                "buckets": index.launches(w, since, until, request.query_params.get("repo"),
                                          request.query_params.get("provider"))}

    def repos(request: Request) -> dict[str, Any]:
        since, until = period(request)
        return {"since": since, "until": until, "repos": index.by_repo(since, until, limit(request, settings.analytics_top_repos))}

    def phases(request: Request) -> dict[str, Any]:
        since, until = period(request)
        return {"since": since, "until": until, "repo": request.query_params.get("repo"),
                "phases": index.phase_timings(since, until, request.query_params.get("repo"))}

    def failures(request: Request) -> dict[str, Any]:
        since, until = period(request)
        return {"since": since, "until": until, "failures": index.failures(since, until)}

    def running(request: Request) -> dict[str, Any]:
        return {"servers": [{"request_id": s.request_id, "provider": s.provider, "repo": s.repo, "since": s.ended}
                            for s in index.running()]}

    async def one_request(request: Request) -> Response:
        record = analytics.record(request.path_params["request_id"])
        if record is None:
            return JSONResponse({"error": "no such request in the log"}, status_code=404)
        return JSONResponse({**record.to_json(), "spans": record.spans()})

    async def export(request: Request) -> Response:
        try:
            since, until = period(request)
        except BadQuery as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return StreamingResponse(_iterate(launch_lines(analytics.records(), since, until)),
                                 media_type="application/x-ndjson",
                                 headers={"content-disposition": 'attachment; filename="kiln-launches.jsonl"'})

    async def dashboard(request: Request) -> Response:
        try:
            since, until = period(request)
            w = window(request, "day" if until - since > 3 * 86400 else "hour")
        except BadQuery as exc:
            return templates.TemplateResponse(request, "error.html", {"message": str(exc)}, status_code=400)
        timings = index.phase_timings(since, until)
        top = index.by_repo(since, until, settings.analytics_top_repos)
        causes = index.failures(since, until)
        context = {
            "since": _day(since), "until": _day(until), "window": w, "totals": index.totals(),
            "periods": [(label, int(time.time() - days * 86400)) for label, days in PERIODS],
            "launches_svg": charts.launches_over_time(index.launches(w, since, until), WINDOWS[w], since, until),
            "phases_svg": charts.phase_bars(timings), "timings": timings,
            "repos_svg": charts.count_bars([(f'{r["provider"]}: {r["repo"]}', int(r["launches"])) for r in top],
                                           "Most launched repositories"),
            "top": top,
            "failures_svg": charts.count_bars(list(causes.items()), "Failures by cause"),
        }
        return templates.TemplateResponse(request, "dashboard.html", context)

    async def health(request: Request) -> Response:
        body = {"ready": analytics.ready, "requests": len(index)}
        return JSONResponse(body, status_code=200 if analytics.ready else 503)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await analytics.app.start()
        try:
            yield
        finally:
            await analytics.app.stop()

    routes = [
        Route("/", dashboard), Route("/health", health, methods=["GET", "HEAD"]), Route("/metrics", metrics),
        Route("/api/v1/summary", answer(summary)),
        Route("/api/v1/launches", answer(launches)),
        Route("/api/v1/repos", answer(repos)),
        Route("/api/v1/phases", answer(phases)),
        Route("/api/v1/failures", answer(failures)),
        Route("/api/v1/running", answer(running)),
        Route("/api/v1/requests/{request_id}", one_request),
        Route("/api/v1/export/launches.jsonl", export),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.analytics = analytics
    return app


async def _iterate(lines: Any) -> AsyncIterator[str]:
    for line in lines:
        yield line


def _day(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
