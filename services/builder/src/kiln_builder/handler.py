"""Placeholder handler until the builder is built: every request ends in a clear `failed` event, none hangs."""

from __future__ import annotations

from kilnbus import BusProducer, Delivery, BuildRequested, Phase, PhaseEvent, Topics
from kilnbus.consumer import Handler


def make_handler(producer: BusProducer, topics: Topics) -> Handler:
    async def handle(delivery: Delivery[BuildRequested]) -> None:
        request = delivery.value
        await producer.publish(topics.phase_events, request.request_id, PhaseEvent(
            request_id=request.request_id, phase=Phase.FAILED, service="builder",
            message="Kiln's builder is not available yet on this installation.\n", failure_cause="not_implemented",
        ))

    return handle
