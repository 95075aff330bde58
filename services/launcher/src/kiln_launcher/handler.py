"""Placeholder handler until the launcher is built: every request ends in a clear `failed` event, none hangs."""

from __future__ import annotations

from kilnbus import BusProducer, Delivery, HubLaunchRequested, Phase, PhaseEvent, Topics
from kilnbus.consumer import Handler


def make_handler(producer: BusProducer, topics: Topics) -> Handler:
    async def handle(delivery: Delivery[HubLaunchRequested]) -> None:
        request = delivery.value
        await producer.publish(topics.phase_events, request.request_id, PhaseEvent(
            request_id=request.request_id, phase=Phase.FAILED, service="launcher",
            message="Kiln's launcher is not available yet on this installation.\n", failure_cause="not_implemented",
        ))

    return handle
