"""Kiln's topics, declared in one place, and their creation at start-up.

Keys decide partitions, and partitions decide which replica handles what:
- launch-requested, hub-launch-requested, phase-events: keyed by request id, so one request's
  events stay in order;
- build-requested: keyed by image name, so every request for one image reaches the same builder
  replica and deduplication needs no shared lock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from kilnbus.records import BuildRequested, DeadLetter, HubLaunchRequested, LaunchRequested, PhaseEvent, Record
from kilnbus.settings import BusSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Topic:
    """A topic: its full name, the record type it carries, and what its key is."""

    name: str
    record: type[Record]
    key: str


class Topics:
    """The topic names under one prefix (``kiln.`` unless KILN_TOPIC_PREFIX says otherwise)."""

    def __init__(self, prefix: str = "kiln.") -> None:
        self.launch_requested = Topic(prefix + "launch-requested", LaunchRequested, "request id")
        self.build_requested = Topic(prefix + "build-requested", BuildRequested, "image name")
        self.hub_launch_requested = Topic(prefix + "hub-launch-requested", HubLaunchRequested, "request id")
        self.phase_events = Topic(prefix + "phase-events", PhaseEvent, "request id")
        self.dead_letter = Topic(prefix + "dead-letter", DeadLetter, "source key")

    def all(self) -> list[Topic]:
        return [self.launch_requested, self.build_requested, self.hub_launch_requested, self.phase_events, self.dead_letter]


async def ensure_topics(settings: BusSettings, topics: list[Topic] | None = None) -> None:
    """Create any missing topic. Safe to call from every replica at every start."""
    topics = topics if topics is not None else Topics(settings.topic_prefix).all()
    admin = AIOKafkaAdminClient(**settings.client_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(t.name, num_partitions=settings.topic_partitions, replication_factor=settings.topic_replication)
            for t in topics
            if t.name not in existing
        ]
        if not wanted:
            return
        try:
            await admin.create_topics(wanted)
        except TopicAlreadyExistsError:
            pass  # another replica won the race; the topic is there, which is all we want
        log.info("created topics %s", [t.name for t in wanted])
    finally:
        await admin.close()
