"""Wiring shared by every consuming service: topics ensured, a producer, one consumer group, run until stopped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from kilnbus.consumer import BusConsumer, Handler
from kilnbus.metrics import serve_metrics
from kilnbus.producer import BusProducer
from kilnbus.settings import BusSettings
from kilnbus.topics import Topic, Topics, ensure_topics

log = logging.getLogger(__name__)


async def serve_consumer(
    settings: BusSettings,
    group: str,
    watch: Callable[[Topics], list[Topic]],
    make_handler: Callable[[BusProducer, Topics], Handler],
    stop: asyncio.Event,
    **consumer_options: Any,
) -> None:
    """Consume ``watch(topics)`` as member of ``group`` with the handler ``make_handler`` builds, until ``stop``."""
    topics = Topics(settings.topic_prefix)
    serve_metrics(settings)
    await ensure_topics(settings)
    async with BusProducer(settings) as producer:
        # Requests set aside (a bug, a crash loop) become failed events their users see at once.
        options = {"failure_events": topics.phase_events, "max_crashes": settings.handler_max_crashes, **consumer_options}
        group = settings.group_id(group)
        consumer = BusConsumer(settings, group, watch(topics), make_handler(producer, topics),
                               producer=producer, dead_letter=topics.dead_letter, **options)
        await consumer.start()
        log.info("%s: consuming %s", group, [t.name for t in watch(topics)])
        await consumer.run(stop)
