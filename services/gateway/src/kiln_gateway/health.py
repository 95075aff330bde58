"""``/health``: is Kafka reachable, how far behind is each service, which services were heard from.

A service's lag is what its consumer group has not yet handled; "heard from" is how long ago this
gateway saw its latest phase event. Results are cached briefly so monitoring cannot load the broker.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from kiln_gateway.router import EventRouter
from kiln_gateway.settings import Settings


class Health:
    """Runs the checks, at most once per ``health_cache_s``, with long-lived Kafka clients.

    Every new Kafka client fetches the cluster's metadata, which on a broker with thousands of
    topics takes seconds; the clients are made once and remade only after an error.
    """

    def __init__(self, settings: Settings, router: EventRouter) -> None:
        self._settings = settings
        self._router = router
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()
        self._admin: AIOKafkaAdminClient | None = None
        self._offsets: AIOKafkaConsumer | None = None

    async def report(self) -> dict[str, Any]:
        async with self._lock:  # concurrent callers share one check
            if self._cached and time.monotonic() - self._cached[0] < self._settings.health_cache_s:
                return self._cached[1]
            kafka, hub = await asyncio.gather(self._kafka(), self._hub())
            now = time.monotonic()
            checks = [kafka, hub, {"service": "Phase router", "ok": self._router.healthy, "open_streams": self._router.open_streams,
                                   "heard_from_s_ago": {svc: round(now - t, 1) for svc, t in self._router.last_seen.items()}}]
            report = {"ok": all(c["ok"] for c in checks if not c.get("_ignore_failure")), "checks": checks}
            self._cached = (time.monotonic(), report)
            return report

    async def close(self) -> None:
        if self._admin is not None:
            await self._admin.close()
        if self._offsets is not None:
            await self._offsets.stop()
        self._admin = self._offsets = None

    async def _kafka(self) -> dict[str, Any]:
        # Membership would say more than lag, but aiokafka 0.14 cannot decode Kafka 4's DescribeGroups
        # answer; the router's "heard from" times stand in for it (docs/decisions.md).
        try:
            groups = await asyncio.wait_for(self._groups(), 4)
            return {"service": "Kafka", "ok": True, "bootstrap": self._settings.kafka_bootstrap, "groups": groups}
        except (KafkaError, TimeoutError, OSError) as exc:
            await self.close()
            return {"service": "Kafka", "ok": False, "bootstrap": self._settings.kafka_bootstrap, "error": repr(exc)}

    async def _groups(self) -> dict[str, Any]:
        if self._admin is None:
            self._admin = AIOKafkaAdminClient(**self._settings.client_kwargs(), request_timeout_ms=3000)
            await self._admin.start()
        if self._offsets is None:
            self._offsets = AIOKafkaConsumer(**self._settings.client_kwargs(), group_id=None)
            await self._offsets.start()
        known = {g[0] for g in await self._admin.list_consumer_groups()}
        names = [n for n in self._settings.service_groups if self._settings.group_id(n) in known]
        committed = await asyncio.gather(*(self._admin.list_consumer_group_offsets(self._settings.group_id(n)) for n in names))
        ends = await self._offsets.end_offsets(list({tp for c in committed for tp in c}))
        groups: dict[str, Any] = {n: {"lag": None, "known": False} for n in self._settings.service_groups}
        for name, offsets in zip(names, committed):
            groups[name] = {"known": True, "lag": sum(max(0, ends[tp] - m.offset) for tp, m in offsets.items() if m.offset >= 0)}
        return groups

    async def _hub(self) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(timeout=3) as client:
                r = await client.get(self._settings.hub_api_url.rstrip("/") + "/")
            return {"service": "JupyterHub API", "ok": r.status_code < 400}
        except httpx.HTTPError as exc:
            return {"service": "JupyterHub API", "ok": False, "error": repr(exc)}
