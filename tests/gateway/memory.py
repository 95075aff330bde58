"""The gateway in memory: its application over a ``MemoryBus``, fakes of its other ports, and an
httpx transport that streams (httpx's own ASGITransport returns a body only once the app is done,
so it cannot read a live event stream, nor disconnect from one).

``scripted_services`` stands in for the resolver, builder and launcher: a consumer of
launch-requested on the bus whose handler returns the phase events a test scripts, through the
handler contract every service uses (``kilnbus.serve`` over ``Routes``). ``MemoryGateway`` puts
them together: the application over its own bus, clients from any address, and what was published.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx
from starlette.applications import Starlette

from kiln_gateway.app import create_app
from kiln_gateway.auth import HubAuth
from kiln_gateway.ports import GatewayPorts
from kiln_gateway.router import EventRouter
from kiln_gateway.settings import Settings
from kilnbus import Delivery, LaunchRequested, MemoryBus, Outgoing, PhaseEvent, Routes, serve

SSE = {"Accept": "text/event-stream"}
PEER = "203.0.113.50"  # a documentation address (TEST-NET-3): the client's own, not a proxy's


class MemoryGroupLag:
    """``GroupLag`` read off a ``MemoryBus``: a group is known once it committed anything."""

    def __init__(self, bus: MemoryBus) -> None:
        self._bus = bus
        self.closed = False

    async def lags(self, groups: Sequence[str]) -> dict[str, int]:
        out = {}
        for group in groups:
            if committed := self._bus.committed(group):
                out[group] = sum(max(0, self._bus.end(tp) - offset) for tp, offset in committed.items())
        return out

    async def reset(self) -> None:
        pass

    async def aclose(self) -> None:
        self.closed = True


def hub_transport(request: httpx.Request) -> httpx.Response:
    """A hub that is up: its API root answers 200; nothing else is asked in these tests."""
    return httpx.Response(200, json={"version": "5"}) if request.url.path.endswith("/hub/api/") else httpx.Response(404)


def memory_ports(settings: Settings, bus: MemoryBus | None = None) -> GatewayPorts:
    bus = bus or MemoryBus(settings)
    hub = httpx.AsyncClient(transport=httpx.MockTransport(hub_transport))
    return GatewayPorts(bus=bus, router=EventRouter(bus, bus.topics.phase_events), group_lag=MemoryGroupLag(bus),
                        hub_http=hub, auth=HubAuth(settings, hub))


def memory_app(settings: Settings, bus: MemoryBus | None = None) -> Starlette:
    """The real application over in-memory ports (not started: drive it with ``running``)."""
    return create_app(settings, memory_ports(settings, bus))


@contextlib.asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[Starlette]:
    """``app`` with its lifespan run, as uvicorn would: ports started on entry and closed on exit."""
    async with app.router.lifespan_context(app):
        yield app


class StreamingASGITransport(httpx.AsyncBaseTransport):
    """Runs the app per request and hands its body over as it is sent; closing the response is a
    disconnect (the app's ``receive`` answers ``http.disconnect``), and waits for the app to finish."""

    def __init__(self, app: Any, client: tuple[str, int] = (PEER, 40000)) -> None:
        self.app = app
        self.client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = b"".join([chunk async for chunk in request.stream])  # type: ignore[union-attr]
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
            "headers": [(k.lower(), v) for (k, v) in request.headers.raw], "scheme": request.url.scheme,
            "path": request.url.path, "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query, "server": (request.url.host, request.url.port),
            "client": self.client, "root_path": "",
        }
        messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        disconnected = asyncio.Event()
        request_sent = False

        async def receive() -> dict[str, Any]:
            nonlocal request_sent
            if not request_sent:
                request_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            await messages.put(dict(message))

        task = asyncio.create_task(self.app(scope, receive, send), name=f"asgi {request.method} {request.url.path}")
        first = asyncio.ensure_future(messages.get())
        await asyncio.wait({first, task}, return_when=asyncio.FIRST_COMPLETED)
        if not first.done():
            first.cancel()
            task.result()  # the app ended without a response: raise what it raised
            raise AssertionError("the app ended without sending a response")
        start = first.result()
        assert start["type"] == "http.response.start", start
        return httpx.Response(start["status"], headers=start.get("headers", []),
                              stream=_Body(messages, task, disconnected))


@dataclass
class _Body(httpx.AsyncByteStream):
    messages: asyncio.Queue[dict[str, Any]]
    task: asyncio.Task[None]
    disconnected: asyncio.Event
    done: bool = field(default=False)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while not self.done:
            message = await self.messages.get()
            if message["type"] != "http.response.body":
                continue
            self.done = not message.get("more_body", False)
            if message.get("body"):
                yield message["body"]

    async def aclose(self) -> None:
        self.disconnected.set()
        await asyncio.wait_for(self.task, 10)


async def read_events(response: httpx.Response, limit: int = 100) -> list[dict[str, Any]]:
    """SSE events of an open response: ``{"id", "data"}`` per event, ``{"comment"}`` per comment line."""
    out: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    # One line iterator per response, so a test can read some events, act, and read on.
    lines = response.extensions.setdefault("kiln_lines", response.aiter_lines())
    async for line in lines:
        if line.startswith("id: "):
            current["id"] = line[4:]
        elif line.startswith("data: "):
            current["data"] = json.loads(line[6:])
        elif line.startswith(":"):
            out.append({"comment": line})
        elif line == "" and current:
            out.append(current)
            current = {}
        if len(out) >= limit:
            break
    return out


def memory_settings(seal_key: str, **overrides: Any) -> Settings:
    """Settings for a gateway in memory: no rate limit unless asked, three partitions, tokens sealed with ``seal_key``."""
    return Settings(**({"rate_limit": 0, "token_seal_keys": [seal_key], "topic_partitions": 3} | overrides))


class Stream(NamedTuple):
    """What a client read from an event stream: the status, the events (as ``read_events``) and the headers."""

    status: int
    events: list[dict[str, Any]]
    headers: httpx.Headers


class MemoryGateway:
    """The application in memory, its bus, clients from any address, and the launch requests it published.

    Not started: enter ``started()`` (or ``running(gw.app)``) to run its lifespan.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bus = MemoryBus(settings)
        self.app = memory_app(settings, self.bus)

    @property
    def router(self) -> Any:
        return self.app.state.router

    @contextlib.asynccontextmanager
    async def started(self) -> AsyncIterator[MemoryGateway]:
        async with running(self.app):
            yield self

    def client(self, peer: str = PEER) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=StreamingASGITransport(self.app, client=(peer, 40000)),
                                 base_url="http://testserver")

    async def stream(self, path: str = "/build/gh/org/repo/main", headers: dict[str, str] | None = None,
                     limit: int = 100, peer: str = PEER) -> Stream:
        """Read a stream until it ends (or ``limit`` events), then disconnect."""
        async with self.client(peer) as c, c.stream("GET", path, headers={**SSE, **(headers or {})}) as r:
            return Stream(r.status_code, await read_events(r, limit), r.headers)

    async def events(self, path: str = "/build/gh/org/repo/main", headers: dict[str, str] | None = None,
                     limit: int = 100, peer: str = PEER) -> tuple[int, list[dict[str, Any]]]:
        """``stream`` without the headers, which most tests do not look at."""
        status, events, _ = await self.stream(path, headers, limit, peer)
        return status, events

    def launches(self) -> list[str]:
        """The spec of every launch request published so far, in order. The gateway answers a launch
        only after publishing its request, so this misses none the client was answered for."""
        return [r.spec for r in self.bus.records(self.bus.topics.launch_requested) if isinstance(r, LaunchRequested)]


Script = Callable[[LaunchRequested], Awaitable[list[PhaseEvent]]]


def answer(events: Callable[[LaunchRequested], Iterable[PhaseEvent]]) -> Script:
    """A script that answers every request with ``events(request)`` at once."""
    async def script(req: LaunchRequested) -> list[PhaseEvent]:
        return list(events(req))
    return script


@dataclass
class ScriptedServices:
    """Answers each launch request with the phase events ``script`` returns (published before the
    request counts as handled, as any Kiln handler's records are)."""

    bus: MemoryBus
    script: Script
    requests: list[LaunchRequested] = field(default_factory=list)
    group: str = "kiln-scripted-services"

    async def handle(self, delivery: Delivery[LaunchRequested]) -> list[Outgoing]:
        self.requests.append(delivery.value)
        return [Outgoing(self.bus.topics.phase_events, e.request_id, e) for e in await self.script(delivery.value)]


@contextlib.asynccontextmanager
async def scripted_services(bus: MemoryBus, script: Script) -> AsyncIterator[ScriptedServices]:
    services = ScriptedServices(bus, script)
    stop = asyncio.Event()
    # Several launches at once, as the real services take them; one waiting on a gate holds up no other.
    task = asyncio.create_task(serve(bus, services.group, Routes({bus.topics.launch_requested: services.handle}), stop,
                                     max_in_flight=64, shutdown_grace_s=1))
    try:
        yield services
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
