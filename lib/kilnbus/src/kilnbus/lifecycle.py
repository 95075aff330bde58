"""Running a service until SIGTERM or SIGINT, then shutting it down cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


def run_service(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)`` in a new event loop; SIGTERM/SIGINT set ``stop``.

    ``main`` should finish the work in hand and return once ``stop`` is set; a second signal
    while it does so cancels it.
    """

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        task = asyncio.current_task()

        def on_signal(sig: signal.Signals) -> None:
            if stop.is_set():
                log.warning("second %s: cancelling", sig.name)
                assert task is not None
                task.cancel()
                return
            log.info("%s: finishing the work in hand, then stopping", sig.name)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        await main(stop)

    try:
        asyncio.run(runner())
    except asyncio.CancelledError:
        pass
