"""The gateway's health check against the real broker: its "Kafka" check asks the broker for the
service groups' lag (``KafkaGroupLag``), which has no in-memory equivalent. The rest of the door
is tested in memory in test_door.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from kilnbus import Phase, PhaseEvent

from .conftest import Gateway

pytestmark = pytest.mark.kafka


async def test_health_reaches_kafka_and_hears_the_services(gateway: Gateway, scripted: Any) -> None:
    await scripted(lambda req: [PhaseEvent(request_id=req.request_id, phase=Phase.FAILED, service="resolver")])
    await gateway.events("/build/gh/org/repo/main")
    health = (await gateway.client.get("/health")).json()
    kafka = next(c for c in health["checks"] if c["service"] == "Kafka")
    assert kafka["ok"] is True
    router = next(c for c in health["checks"] if c["service"] == "Phase router")
    assert "resolver" in router["heard_from_s_ago"]
    # The hub may not be running here (its check then fails the report: 503); HEAD answers it like GET.
    assert (await gateway.client.head("/health")).status_code in (200, 503)
