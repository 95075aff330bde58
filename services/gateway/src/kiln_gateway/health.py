"""``/health``: is Kafka reachable, how far behind is each service, which services were heard from.

A service's lag is what its consumer group has not yet handled; "heard from" is how long ago this
gateway saw its latest phase event. Results are cached briefly so monitoring cannot load the broker.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from kiln_gateway.router import EventRouter
from kiln_gateway.settings import Settings


class Health:
    def __init__(self, settings: Settings, router: EventRouter) -> None:
        self._settings = settings
        self._router = router
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()

    async def report(self) -> dict[str, Any]:
        async with self._lock:  # concurrent callers share one check
            if self._cached and time.monotonic() - self._cached[0] < self._settings.health_cache_s:
                return self._cached[1]
            checks = [await self._kafka(), await self._hub()]
            now = time.monotonic()
            checks.append({"service": "Phase router", "ok": self._router.healthy, "open_streams": self._router.open_streams,
                           "heard_from_s_ago": {svc: round(now - t, 1) for svc, t in self._router.last_seen.items()}})
            report = {"ok": all(c["ok"] for c in checks if not c.get("_ignore_failure")), "checks": checks}
            self._cached = (time.monotonic(), report)
            return report

    async def _kafka(self) -> dict[str, Any]:
        # Membership would say more than lag, but aiokafka 0.14 cannot decode Kafka 4's DescribeGroups
        # answer; the router's "heard from" times stand in for it (docs/decisions.md).
        admin = AIOKafkaAdminClient(**self._settings.client_kwargs(), request_timeout_ms=3000)
        try:
            await asyncio.wait_for(admin.start(), 5)
            known = {g[0] for g in await asyncio.wait_for(admin.list_consumer_groups(), 5)}
            groups = {name: {"lag": await self._lag(admin, name) if name in known else None, "known": name in known}
                      for name in self._settings.service_groups}
            return {"service": "Kafka", "ok": True, "bootstrap": self._settings.kafka_bootstrap, "groups": groups}
        except (KafkaError, TimeoutError, OSError) as exc:
            return {"service": "Kafka", "ok": False, "bootstrap": self._settings.kafka_bootstrap, "error": repr(exc)}
        finally:
            await admin.close()

    async def _lag(self, admin: AIOKafkaAdminClient, group: str) -> int | None:
        try:
            committed = await admin.list_consumer_group_offsets(group)
            if not committed:
                return None
            from aiokafka import AIOKafkaConsumer

            consumer = AIOKafkaConsumer(**self._settings.client_kwargs(), group_id=None)
            await consumer.start()
            try:
                ends = await consumer.end_offsets(list(committed))
            finally:
                await consumer.stop()
            return sum(max(0, ends[tp] - meta.offset) for tp, meta in committed.items() if meta.offset >= 0)
        except KafkaError:
            return None

    async def _hub(self) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(timeout=3) as client:
                r = await client.get(self._settings.hub_api_url.rstrip("/") + "/")
            return {"service": "JupyterHub API", "ok": r.status_code < 400}
        except httpx.HTTPError as exc:
            return {"service": "JupyterHub API", "ok": False, "error": repr(exc)}
