"""Which servers are running, per repository: a projection of the phase-event log.

Rebuilt from the beginning of the log at start-up and kept current from then on, so quotas need no
shared database: a ``ready`` event with a URL counts a server, its ``stopped`` event uncounts it.
Repositories are keyed by image name without tag, so all refs of a repository count together.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from kilnbus import BusSettings, DecodeError, Phase, PhaseEvent, Topic, default_codec

log = logging.getLogger(__name__)


def repo_key(image_name: str) -> str:
    return image_name.rsplit(":", 1)[0] if ":" in image_name.rsplit("/", 1)[-1] else image_name


class RunningServers:
    def __init__(self, settings: BusSettings, topic: Topic) -> None:
        self._settings = settings
        self._topic = topic
        self._servers: dict[str, str] = {}  # request id -> repo key
        self._counts: Counter[str] = Counter()
        self.caught_up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    def apply(self, event: PhaseEvent) -> None:
        if event.phase is Phase.READY and event.url and event.image_name and event.request_id not in self._servers:
            key = repo_key(event.image_name)
            self._servers[event.request_id] = key
            self._counts[key] += 1
        elif event.phase is Phase.STOPPED and event.request_id in self._servers:
            key = self._servers.pop(event.request_id)
            self._counts[key] -= 1
            if self._counts[key] <= 0:
                del self._counts[key]

    def count(self, image_name: str) -> int:
        return self._counts.get(repo_key(image_name), 0)

    @property
    def total(self) -> int:
        return len(self._servers)

    async def start(self) -> None:
        self._consumer = consumer = AIOKafkaConsumer(**self._settings.client_kwargs(), group_id=None, enable_auto_commit=False)
        await consumer.start()
        parts = consumer.partitions_for_topic(self._topic.name)
        while not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(self._topic.name)
        tps = [TopicPartition(self._topic.name, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)

        async def follow() -> None:
            pending = {tp for tp in tps if ends[tp] > 0}
            if not pending:
                self.caught_up.set()
            while True:
                try:
                    batches = await consumer.getmany(timeout_ms=1000)
                except KafkaError as exc:
                    log.warning("running-servers projection: %r; retrying", exc)
                    await asyncio.sleep(1)
                    continue
                for tp, records in batches.items():
                    for record in records:
                        try:
                            self.apply(default_codec().decode(record.value, expect=PhaseEvent))  # type: ignore[arg-type]
                        except DecodeError:
                            continue  # set aside by the services' own consumers; nothing to count here
                    if records and records[-1].offset + 1 >= ends[tp]:
                        pending.discard(tp)
                if pending and not self.caught_up.is_set():
                    for tp in list(pending):
                        if await consumer.position(tp) >= ends[tp]:
                            pending.discard(tp)
                if not pending and not self.caught_up.is_set():
                    log.info("running-servers projection rebuilt: %d server(s) running", self.total)
                    self.caught_up.set()

        self._task = asyncio.create_task(follow(), name="running-servers")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer:
            await self._consumer.stop()
