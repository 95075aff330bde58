"""A resume (`Last-Event-ID`) with a tampered id replays nothing: against the running stack's gateway.

An attacker who has seen one of their own event ids edits its offset or partition to read another
launch's events (and its token) from the log. The ids are signed over every part, so the gateway
refuses the edit; the genuine id still resumes (positive control).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..support.stack import HUB_API

pytestmark = [pytest.mark.kafka, pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]
GATEWAY = "http://127.0.0.1:8585"
SAMPLE = "/build/git/http%3A%2F%2F127.0.0.1%3A8765%2Fkiln%2Fsample/HEAD"


def stream(headers: dict[str, str] | None = None, limit: int = 1000) -> tuple[int, list[dict[str, Any]]]:
    """The stream's status and its events (id and data line), up to ``limit`` events."""
    events: list[dict[str, Any]] = []
    with httpx.stream("GET", GATEWAY + SAMPLE, headers={"Accept": "text/event-stream", **(headers or {})},
                      timeout=httpx.Timeout(10, read=300)) as r:
        current: dict[str, Any] = {}
        for line in r.iter_lines():
            if line.startswith("id:"):
                current["id"] = line[3:].strip()
            elif line.startswith("data:"):
                current["data"] = line[5:].strip()
                events.append(current)
                current = {}
                if len(events) >= limit:
                    break
        return r.status_code, events


def test_a_tampered_event_id_is_refused_and_the_genuine_one_resumes() -> None:
    status, events = stream(limit=1)
    assert status == 200 and events and events[0]["id"], events
    rid, partition, offset, issued, holder, signature = events[0]["id"].split(".")
    for forged in (f"{rid}.{partition}.0.{issued}.{holder}.{signature}",  # from the start of the partition
                   f"{rid}.{partition}.{int(offset) + 1}.{issued}.{holder}.{signature}",
                   f"{rid}.{(int(partition) + 1) % 6}.{offset}.{issued}.{holder}.{signature}",  # another partition
                   f"{'0' * 32}.{partition}.{offset}.{issued}.{holder}.{signature}",  # another request
                   f"{rid}.{partition}.{offset}.{issued}.{'0' * 16}.{signature}"):  # another holder
        refused, body = stream({"Last-Event-ID": forged})
        assert refused == 400, (forged, body)
        assert all("token" not in e["data"] for e in body)
    resumed, rest = stream({"Last-Event-ID": events[0]["id"]})
    assert resumed == 200 and rest, rest
    ready = json.loads(rest[-1]["data"])
    assert ready["phase"] == "ready", ready
    token = (Path(__file__).resolve().parents[2] / ".state" / "hub" / "launcher-token").read_text().strip()
    user, name = ready["url"].rstrip("/").split("/")[-2:]
    httpx.request("DELETE", f"{HUB_API}/users/{user}/servers/{name}", json={"remove": True},
                  headers={"Authorization": f"token {token}"}, timeout=30)
