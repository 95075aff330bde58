"""The dashboard page: the numbers of a period as inline SVG charts (``kiln_analytics.charts``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from kiln_analytics import charts
from kiln_analytics.index import WINDOWS
from kiln_analytics.query import BadQuery, period, window
from kiln_analytics.settings import Settings
from kiln_analytics.source import RequestSource

PERIODS = (("last day", 1), ("last 7 days", 7), ("last 30 days", 30), ("last 6 months", 182))
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


class Dashboard:
    """``/``: totals, launches over time, phase timings, top repositories and failures of a period."""

    def __init__(self, settings: Settings, source: RequestSource) -> None:
        self._settings = settings
        self._source = source

    async def page(self, request: Request) -> Response:
        index = self._source.requests.index
        try:
            since, until = period(request)
            w = window(request, "day" if until - since > 3 * 86400 else "hour")
        except BadQuery as exc:
            return templates.TemplateResponse(request, "error.html", {"message": str(exc)}, status_code=400)
        timings = index.phase_timings(since, until)
        top = index.by_repo(since, until, self._settings.analytics_top_repos)
        causes = index.failures(since, until)
        context = {
            "since": _day(since), "until": _day(until), "window": w, "totals": index.totals(),
            "periods": [(label, int(time.time() - days * 86400)) for label, days in PERIODS],
            "launches_svg": charts.launches_over_time(index.launches(w, since, until), WINDOWS[w], since, until),
            "phases_svg": charts.phase_bars(timings), "timings": timings,
            "repos_svg": charts.count_bars([(f'{r["provider"]}: {r["repo"]}', cast(int, r["launches"])) for r in top],
                                           "Most launched repositories"),
            "top": top,
            "failures_svg": charts.count_bars(list(causes.items()), "Failures by cause"),
            "pool": index.warm_pool(since, until),
        }
        return templates.TemplateResponse(request, "dashboard.html", context)


def _day(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")
