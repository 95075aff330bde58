"""The gateway's group-lag reader keeps no Kafka client that did not finish starting. In memory: fake clients."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import pytest

from kiln_gateway import groupoffsets
from kiln_gateway.groupoffsets import KafkaGroupLag
from kilnbus import BusSettings


class FakeClient:
    made: ClassVar[list[FakeClient]] = []
    hang_start = False
    entered: asyncio.Event  # set when a start() begins

    def __init__(self, **_: Any) -> None:
        self.started = self.closed = False
        type(self).made.append(self)

    async def start(self) -> None:
        type(self).entered.set()
        if type(self).hang_start:
            await asyncio.Event().wait()  # a broker that never answers
        self.started = True

    async def close(self) -> None:
        self.closed = True

    async def stop(self) -> None:
        self.closed = True

    async def list_consumer_groups(self) -> list[tuple[str, str]]:
        return []

    async def end_offsets(self, _: Any) -> dict[Any, int]:
        return {}


class FakeAdmin(FakeClient):
    made: ClassVar[list[FakeClient]] = []


class FakeConsumer(FakeClient):
    made: ClassVar[list[FakeClient]] = []


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    for fake in (FakeAdmin, FakeConsumer):
        monkeypatch.setattr(fake, "made", [])
        monkeypatch.setattr(fake, "hang_start", False)
        monkeypatch.setattr(fake, "entered", asyncio.Event(), raising=False)
    monkeypatch.setattr(groupoffsets, "AIOKafkaAdminClient", FakeAdmin)
    monkeypatch.setattr(groupoffsets, "AIOKafkaConsumer", FakeConsumer)


async def cancelled_while_starting(lag: KafkaGroupLag, client: type[FakeClient]) -> None:
    client.entered.clear()
    task = asyncio.create_task(lag.lags(["kiln-resolver"]))
    await asyncio.wait_for(client.entered.wait(), 5)
    task.cancel()  # as /health's wait_for does when the check runs out of time
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_client_cancelled_while_starting_is_closed(fakes: None) -> None:
    lag = KafkaGroupLag(BusSettings())
    FakeAdmin.hang_start = True
    await cancelled_while_starting(lag, FakeAdmin)
    [admin] = FakeAdmin.made
    assert admin.closed and not admin.started, "the half-started admin client does not leak"

    FakeAdmin.hang_start = False
    FakeConsumer.hang_start = True
    await cancelled_while_starting(lag, FakeConsumer)
    kept, = (a for a in FakeAdmin.made if a.started)
    [consumer] = FakeConsumer.made
    assert consumer.closed, "the half-started consumer does not leak"
    assert not kept.closed, "control: the admin client that did start is kept for the next check"

    FakeConsumer.hang_start = False
    assert await lag.lags(["kiln-resolver"]) == {}
    assert [a.closed for a in FakeAdmin.made] == [True, False] and not FakeConsumer.made[-1].closed
    await lag.aclose()
    assert all(c.closed for c in FakeAdmin.made + FakeConsumer.made)
