"""Gateway fixtures: a real uvicorn server on a free loopback port, against the real broker.

Until the resolver, builder and launcher exist, tests stand in for them with ``ScriptedServices``:
a consumer of launch-requested events that plays the phase events a test scripts into Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn

from kiln_gateway.bootstrap import build_app
from kiln_gateway.settings import Settings
from kilnbus import BusProducer, BusSettings, Delivery, LaunchRequested, PhaseEvent, Topics, ensure_topics
from kilnbus.sealing import new_key

from ..bus.helpers import Running, start_consumer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Gateway:
    url: str
    settings: Settings
    app: Any
    client: httpx.AsyncClient

    async def events(self, path: str, headers: dict[str, str] | None = None, limit: int = 100,
                     timeout: float = 30) -> tuple[int, list[dict[str, Any]], httpx.Headers]:
        """Read a /build stream to its end (or ``limit`` events); return (status, events as ``read_events``, headers)."""
        from .memory import read_events  # the SSE parsing is the in-memory tests' own: one parser for both

        async with self.client.stream("GET", path, headers={"Accept": "text/event-stream", **(headers or {})},
                                      timeout=timeout) as r:
            return r.status_code, await read_events(r, limit), r.headers


@pytest.fixture
def seal_key() -> str:
    return new_key()


@pytest.fixture
def gateway_settings(bus_settings: BusSettings, seal_key: str) -> Settings:
    return Settings(**bus_settings.model_dump(), gateway_port=free_port(), rate_limit=0,
                    token_seal_keys=[seal_key], heartbeat_interval_s=30)


@contextlib.asynccontextmanager
async def serving(app: Any, port: int, lifespan: str = "on") -> AsyncIterator[str]:
    """``app`` served by uvicorn on 127.0.0.1:``port`` until the block ends; yields its URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan=lifespan))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


@pytest.fixture
async def gateway(gateway_settings: Settings) -> AsyncIterator[Gateway]:
    await ensure_topics(gateway_settings)
    app = build_app(gateway_settings)
    async with serving(app, gateway_settings.gateway_port) as url, httpx.AsyncClient(base_url=url) as client:
        yield Gateway(url, gateway_settings, app, client)


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
async def browser() -> Any:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_FLAGS)
        yield b
        await b.close()


Script = Callable[[LaunchRequested], Awaitable[list[PhaseEvent]] | list[PhaseEvent]]


@dataclass
class ScriptedServices:
    """Stands in for resolver/builder/launcher: answers each launch request with scripted phase events."""

    producer: BusProducer
    topics: Topics
    script: Script
    requests: list[LaunchRequested] = field(default_factory=list)
    running: Running | None = None

    async def handle(self, delivery: Delivery[LaunchRequested]) -> None:
        self.requests.append(delivery.value)
        events = self.script(delivery.value)
        if asyncio.iscoroutine(events):
            events = await events
        for event in events:  # type: ignore[union-attr]
            await self.producer.publish(self.topics.phase_events, event.request_id, event)


@pytest.fixture
async def scripted(bus_settings: BusSettings, topics: Topics, producer: BusProducer) -> AsyncIterator[Callable[[Script], Awaitable[ScriptedServices]]]:
    made: list[ScriptedServices] = []

    async def make(script: Script) -> ScriptedServices:
        services = ScriptedServices(producer, topics, script)
        services.running = await start_consumer(bus_settings, topics, [topics.launch_requested], services.handle,
                                                producer, group="scripted-services")
        made.append(services)
        return services

    yield make
    for s in made:
        assert s.running is not None
        await s.running.close()
