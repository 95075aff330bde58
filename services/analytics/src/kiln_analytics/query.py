"""The query parameters every question takes: the period (``since``, ``until``), ``window`` and ``limit``.

Periods are ISO 8601 times (``2026-05-01`` or ``2026-05-01T12:00:00Z``) or seconds since the epoch.
Without them a question covers the last 30 days up to now.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from starlette.requests import Request

from kiln_analytics.index import WINDOWS

DEFAULT_PERIOD_S = 30 * 86400


class BadQuery(ValueError):
    """A query parameter that cannot be understood; answered with 400 and what was wrong."""


def parse_time(value: str, name: str) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        # Kept as it was (every "Z" replaced), so exactly the same inputs are accepted as before.
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))  # noqa: FURB162
    except ValueError:
        raise BadQuery(f"{name} must be an ISO 8601 time or seconds since the epoch, not {value[:40]!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
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
