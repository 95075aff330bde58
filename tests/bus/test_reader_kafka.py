"""The Kafka log reader's own edges: a topic that never appears is a clear error after a bounded wait."""

from __future__ import annotations

import pytest

from kilnbus import BusSettings, KafkaLogReader, PartitionsNotFound, Phase, PhaseEvent, Topics
from kilnbus.bus import KafkaBus

pytestmark = pytest.mark.kafka


async def test_a_missing_topic_fails_after_the_wait_and_an_existing_one_is_read(bus_settings: BusSettings,
                                                                                 topics: Topics) -> None:
    missing = KafkaLogReader(bus_settings, [bus_settings.topic_prefix + "never-created"], partition_timeout_s=1)
    with pytest.raises(PartitionsNotFound, match="never-created"):
        await missing.start()
    async with KafkaBus(bus_settings) as bus:  # creates the prefix's topics
        await bus.publish(topics.phase_events, "k", PhaseEvent(request_id="r", phase=Phase.READY, service="t"))
        async with KafkaLogReader(bus_settings, [topics.phase_events], partition_timeout_s=1) as reader:
            assert len(reader.end_offsets) == bus_settings.topic_partitions
            assert sum(reader.end_offsets.values()) == 1 and not reader.caught_up.is_set()
            entry = await anext(reader)
            assert entry.key == "k"
