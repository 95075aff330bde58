"""Entry point: `kiln-analytics` or `python -m kiln_analytics`."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from kilnbus import BusProducer, Delivery, PhaseEvent, Topics, run_service, serve_consumer
from kilnbus.consumer import Handler

from kiln_analytics.settings import Settings

log = logging.getLogger("kiln_analytics")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s analytics %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    phases: Counter[str] = Counter()

    def make_handler(producer: BusProducer, topics: Topics) -> Handler:
        async def count(delivery: Delivery[PhaseEvent]) -> None:
            phases[delivery.value.phase.value] += 1

        return count

    async def serve(stop: asyncio.Event) -> None:
        await serve_consumer(settings, "kiln-analytics", lambda t: [t.phase_events], make_handler, stop)
        log.info("phases seen: %s", dict(phases))

    run_service(serve)


if __name__ == "__main__":
    main()
