"""The former wiring of a consuming service, kept while services move to ``kilnbus.bus.serve``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from kilnbus.bus import KafkaBus, Routes, serve
from kilnbus.dispatch import Handler
from kilnbus.producer import BusProducer
from kilnbus.settings import BusSettings
from kilnbus.topics import Topic, Topics


async def serve_consumer(
    settings: BusSettings,
    group: str,
    watch: Callable[[Topics], list[Topic]],
    make_handler: Callable[[BusProducer, Topics], Handler],
    stop: asyncio.Event,
    **consumer_options: Any,
) -> None:
    """Consume ``watch(topics)`` as member of ``group`` with the handler ``make_handler`` builds, until ``stop``.

    Deprecated: build a ``KafkaBus`` and call ``serve(bus, group, Routes(...), stop)``.
    """
    async with KafkaBus(settings) as bus:
        handler = make_handler(bus.producer, bus.topics)
        await serve(bus, group, Routes({topic: handler for topic in watch(bus.topics)}), stop, **consumer_options)
