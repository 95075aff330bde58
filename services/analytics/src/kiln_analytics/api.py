"""The analytics JSON API and the launch-event export (``/api/v1/...``), answered from the index."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from kiln_analytics.export import launch_lines
from kiln_analytics.query import BadQuery, limit, period, window
from kiln_analytics.settings import Settings
from kiln_analytics.source import RequestSource

Question = Callable[[Request], dict[str, Any]]


def answer(question: Question) -> Callable[[Request], Any]:
    """An endpoint answering ``question`` as JSON, or 400 with what was wrong in the query."""
    # Async on purpose: the index is read on the event loop that updates it, never from a thread.
    async def endpoint(request: Request) -> Response:
        try:
            return JSONResponse(question(request))
        except BadQuery as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
    return endpoint


class Api:
    """The questions, each a method taking the request and returning its JSON body."""

    def __init__(self, settings: Settings, source: RequestSource) -> None:
        self._settings = settings
        self._source = source

    @property
    def _index(self) -> Any:
        return self._source.requests.index

    def summary(self, request: Request) -> dict[str, Any]:
        since, until = period(request)
        return {"since": since, "until": until, "totals": self._index.totals(),
                "by_provider": self._index.by_provider(since, until), "failures": self._index.failures(since, until),
                "warm_pool": self._index.warm_pool(since, until)}

    def launches(self, request: Request) -> dict[str, Any]:
        since, until = period(request)
        w = window(request)
        return {"window": w, "since": since, "until": until, "repo": request.query_params.get("repo"),
                "buckets": self._index.launches(w, since, until, request.query_params.get("repo"),
                                                request.query_params.get("provider"))}

    def repos(self, request: Request) -> dict[str, Any]:
        since, until = period(request)
        return {"since": since, "until": until,
                "repos": self._index.by_repo(since, until, limit(request, self._settings.analytics_top_repos))}

    def phases(self, request: Request) -> dict[str, Any]:
        since, until = period(request)
        return {"since": since, "until": until, "repo": request.query_params.get("repo"),
                "phases": self._index.phase_timings(since, until, request.query_params.get("repo"))}

    def failures(self, request: Request) -> dict[str, Any]:
        since, until = period(request)
        return {"since": since, "until": until, "failures": self._index.failures(since, until)}

    def running(self, request: Request) -> dict[str, Any]:
        return {"servers": [{"request_id": s.request_id, "provider": s.provider, "repo": s.repo, "since": s.ended}
                            for s in self._index.running()]}

    async def one_request(self, request: Request) -> Response:
        record = self._source.requests.record(request.path_params["request_id"])
        if record is None:
            return JSONResponse({"error": "no such request in the log"}, status_code=404)
        shown = record.to_json()
        if record.shown_repo is None or not record.shown_repo:
            # Not shown until the resolver says the repository is public (see RequestRecord.shown_repo).
            shown.update(spec="", repo="", ref="")
        return JSONResponse({**shown, "spans": record.spans()})

    async def export(self, request: Request) -> Response:
        try:
            since, until = period(request)
        except BadQuery as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return StreamingResponse(_iterate(launch_lines(self._source.requests.records(), since, until)),
                                 media_type="application/x-ndjson",
                                 headers={"content-disposition": 'attachment; filename="kiln-launches.jsonl"'})

    async def health(self, request: Request) -> Response:
        body = {"ready": self._source.ready, "requests": len(self._index)}
        return JSONResponse(body, status_code=200 if self._source.ready else 503)


async def _iterate(lines: Iterable[str]) -> AsyncIterator[str]:
    for line in lines:
        yield line
