"""How far behind each service's consumer group is, read through Kafka's public admin API.

``/health`` asks this port, which the composition root (``kiln_gateway.bootstrap``) builds; tests
pass a fake. The committed offsets come from the admin client, the ends of their partitions from a
group-less consumer's ``end_offsets`` (the admin client of aiokafka 0.14 has no ListOffsets). Both
clients are long-lived: each new client fetches the cluster's metadata, which on a broker with
thousands of topics takes seconds. After an error they are dropped (``reset``) and made again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from typing import Protocol

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from kilnbus import BusSettings

log = logging.getLogger(__name__)


class GroupLag(Protocol):
    """The lag of consumer groups: records on their topics they have not handled yet."""

    async def lags(self, groups: Sequence[str]) -> dict[str, int]:
        """The lag of each group in ``groups`` that the cluster knows (unknown ones are left out)."""
        ...

    async def reset(self) -> None:
        """Forget the clients after an error; the next call makes new ones."""
        ...

    async def aclose(self) -> None: ...


class KafkaGroupLag:
    """``GroupLag`` over Kafka: an admin client for groups and offsets, a consumer for end offsets."""

    def __init__(self, settings: BusSettings, request_timeout_ms: int = 3000) -> None:
        self._settings = settings
        self._request_timeout_ms = request_timeout_ms
        self._admin: AIOKafkaAdminClient | None = None
        self._ends: AIOKafkaConsumer | None = None

    async def lags(self, groups: Sequence[str]) -> dict[str, int]:
        admin, ends = await self._clients()
        known = {g[0] for g in await admin.list_consumer_groups()}
        names = [g for g in groups if g in known]
        committed = await asyncio.gather(*(admin.list_consumer_group_offsets(g) for g in names))
        end = await ends.end_offsets(list({tp for c in committed for tp in c}))
        return {name: sum(max(0, end[tp] - meta.offset) for tp, meta in offsets.items() if meta.offset >= 0)
                for name, offsets in zip(names, committed, strict=True)}

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        # A client whose start() fails or is cancelled (``/health`` gives the check a few seconds) is
        # closed here: it is not kept yet, so ``reset`` would not know of it, and its connections leak.
        if self._admin is None:
            admin = AIOKafkaAdminClient(**self._settings.client_kwargs(), request_timeout_ms=self._request_timeout_ms)
            try:
                await admin.start()
            except BaseException:
                await _quietly(admin.close())
                raise
            self._admin = admin
        if self._ends is None:
            consumer = AIOKafkaConsumer(**self._settings.client_kwargs(), group_id=None)
            try:
                await consumer.start()
            except BaseException:
                await _quietly(consumer.stop())
                raise
            self._ends = consumer
        return self._admin, self._ends

    async def reset(self) -> None:
        admin, ends, self._admin, self._ends = self._admin, self._ends, None, None
        if admin is not None:
            await admin.close()
        if ends is not None:
            await ends.stop()

    async def aclose(self) -> None:
        await self.reset()


async def _quietly(closing: Awaitable[object]) -> None:
    """Close a client that failed to start; the close goes on even if the caller is cancelled again."""
    try:
        await asyncio.shield(closing)
    except Exception as exc:  # noqa: BLE001 - the start's own error is the one to raise
        log.debug("closing a Kafka client that did not start: %r", exc)
