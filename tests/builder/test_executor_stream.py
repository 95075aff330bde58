"""The Docker executor's engine stream in the fast tier: a fake client, no engine."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from kiln_builder.errors import BuildFailed
from kiln_builder.executor import STREAM_READ_AHEAD, DockerExecutor


class FakeClient:
    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.closed = False

    def close(self) -> None:
        self.closed = True


async def test_the_engine_stream_is_read_ahead_only_so_far_while_its_consumer_is_slow(
        monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient()
    executor = DockerExecutor()
    monkeypatch.setattr(executor, "_client", lambda: client)
    total = STREAM_READ_AHEAD * 3
    taken = 0  # chunks the sink has started on
    leads: list[int] = []  # for each chunk the engine produced, how far ahead of the sink it was
    far_ahead = threading.Event()

    def chunks(_: Any) -> Iterator[dict[str, Any]]:
        for i in range(total):
            leads.append(i - taken)
            if i == STREAM_READ_AHEAD + 1:
                far_ahead.set()  # as far as the reader may get while the sink holds the first chunk
            yield {"stream": f"{i}\n"}

    async def sink(_: dict[str, Any]) -> None:
        nonlocal taken
        taken += 1
        if taken == 1:
            await asyncio.to_thread(far_ahead.wait, 10)  # the first chunk is slow: the reader runs ahead

    await executor._stream(chunks, sink, timeout_s=30)
    assert taken == total and client.closed
    assert max(leads) <= STREAM_READ_AHEAD + 1, "the reader waits for room instead of piling chunks up"
    assert max(leads) >= STREAM_READ_AHEAD, "control: it does read ahead while the sink is slow"


async def test_a_stopped_stream_lets_its_reader_end(monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient()
    executor = DockerExecutor()
    monkeypatch.setattr(executor, "_client", lambda: client)
    ended = threading.Event()

    def endless(_: Any) -> Iterator[dict[str, Any]]:
        try:
            while True:
                yield {"stream": "x\n"}
        finally:
            ended.set()

    seen = 0

    async def sink(_: dict[str, Any]) -> None:
        nonlocal seen
        seen += 1
        if seen == 3:
            raise BuildFailed("stop here")

    with pytest.raises(BuildFailed):
        await executor._stream(endless, sink, timeout_s=30)
    assert seen == 3 and client.closed  # control: it streamed until the sink stopped it
    assert await asyncio.to_thread(ended.wait, 10), "the reading thread, waiting for room, ended"



async def test_an_engine_refusal_is_told_without_the_engines_words(monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    from docker.errors import APIError

    executor = DockerExecutor()
    monkeypatch.setattr(executor, "_client", FakeClient)

    def refused(_: Any) -> Iterator[dict[str, Any]]:
        raise APIError("500 Server Error for http+docker://localhost/v1.45/build: mkdir /var/lib/docker/tmp: no space")

    async def sink(_: dict[str, Any]) -> None:
        raise AssertionError("nothing to pass on")

    with pytest.raises(BuildFailed) as failed:
        await executor._stream(refused, sink, timeout_s=30)
    assert failed.value.cause == "engine_error"
    assert str(failed.value).startswith("The build service's container engine refused the build.")
    assert "/var/lib/docker" not in str(failed.value) and "http+docker" not in str(failed.value)
    assert "/var/lib/docker/tmp" in caplog.text, "control: the details are in the log"
