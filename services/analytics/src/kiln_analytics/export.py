"""Launch events as BinderHub writes them: JSON Lines of schema ``binderhub.jupyter.org/launch`` v6.

mybinder.org's analytics tools read that archive format; Kiln's history exported this way can be
read by them unchanged. As in BinderHub, only successful launches are events; launches of private
repositories are left out, since the archive is meant to be published.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from kiln_analytics.requests import RequestRecord
from kilnbus.providers import PROVIDERS

SCHEMA = "binderhub.jupyter.org/launch"
VERSION = 6


def launch_event(record: RequestRecord) -> dict[str, Any] | None:
    """The v6 launch event for a request, or None when it is not a successful launch of a known provider."""
    if record.outcome != "ready" or record.ended is None or record.private:
        return None  # private repositories' launches are not published (the archive is public)
    known = PROVIDERS.get(record.provider)
    if known is None or known.schema_name is None:
        return None  # not a provider Kiln launches, or one the schema's enum has no name for (doi)
    provider = known.schema_name
    stamp = datetime.fromtimestamp(record.ended, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"timestamp": stamp, "schema": SCHEMA, "version": VERSION, "provider": provider, "spec": record.spec,
            "ref": record.ref, "status": "success", "build_token": record.build_token, "origin": record.origin,
            "request_origin": record.request_origin}


def launch_lines(records: Iterable[RequestRecord], since: float, until: float) -> Iterator[str]:
    """JSON lines of the launches that ended in [since, until), oldest first."""
    chosen = sorted((r for r in records if r.ended is not None and since <= r.ended < until), key=lambda r: r.ended or 0)
    for record in chosen:
        if (event := launch_event(record)) is not None:
            yield json.dumps(event, separators=(",", ":"), ensure_ascii=False) + "\n"
