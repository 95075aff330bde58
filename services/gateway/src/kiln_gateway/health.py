"""``/health``: is Kafka reachable, how far behind is each service, which services were heard from.

A service's lag is what its consumer group has not yet handled (``kiln_gateway.groupoffsets``);
"heard from" is how long ago this gateway saw its latest phase event. Results are cached briefly so
monitoring cannot load the broker. The clients it asks (the group-lag port, the hub's HTTP client)
are the composition root's, which closes them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from aiokafka.errors import KafkaError

from kiln_gateway.groupoffsets import GroupLag
from kiln_gateway.router import EventRouter
from kiln_gateway.settings import Settings


class Health:
    """Runs the checks, at most once per ``health_cache_s``."""

    def __init__(self, settings: Settings, router: EventRouter, group_lag: GroupLag, hub: httpx.AsyncClient) -> None:
        self._settings = settings
        self._router = router
        self._group_lag = group_lag
        self._hub = hub
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()

    async def report(self) -> dict[str, Any]:
        async with self._lock:  # concurrent callers share one check
            if self._cached and time.monotonic() - self._cached[0] < self._settings.health_cache_s:
                return self._cached[1]
            kafka, hub = await asyncio.gather(self._kafka(), self._hub_check())
            now = time.monotonic()
            checks = [kafka, hub, {"service": "Phase router", "ok": self._router.healthy, "open_streams": self._router.open_streams,
                                   "heard_from_s_ago": {svc: round(now - t, 1) for svc, t in self._router.last_seen.items()}}]
            report = {"ok": all(c["ok"] for c in checks if not c.get("_ignore_failure")), "checks": checks}
            self._cached = (time.monotonic(), report)
            return report

    async def _kafka(self) -> dict[str, Any]:
        # Membership would say more than lag, but aiokafka 0.14 cannot decode Kafka 4's DescribeGroups
        # answer; the router's "heard from" times stand in for it (docs/decisions.md).
        try:
            groups = await asyncio.wait_for(self._groups(), 4)
            return {"service": "Kafka", "ok": True, "bootstrap": self._settings.kafka_bootstrap, "groups": groups}
        except (KafkaError, TimeoutError, OSError) as exc:
            await self._group_lag.reset()
            return {"service": "Kafka", "ok": False, "bootstrap": self._settings.kafka_bootstrap, "error": repr(exc)}

    async def _groups(self) -> dict[str, Any]:
        s = self._settings
        lags = await self._group_lag.lags([s.group_id(n) for n in s.service_groups])
        groups: dict[str, Any] = {}
        for name in s.service_groups:
            lag = lags.get(s.group_id(name))
            groups[name] = {"known": True, "lag": lag} if lag is not None else {"lag": None, "known": False}
        return groups

    async def _hub_check(self) -> dict[str, Any]:
        try:
            r = await self._hub.get(self._settings.hub_api_url.rstrip("/") + "/", timeout=3)
            return {"service": "JupyterHub API", "ok": r.status_code < 400}
        except httpx.HTTPError as exc:
            return {"service": "JupyterHub API", "ok": False, "error": repr(exc)}
