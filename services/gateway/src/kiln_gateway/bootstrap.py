"""The gateway's composition root: the one place that reads the environment and makes real clients.

``build_ports`` makes the Kafka bus (``KafkaBus``, its producer waiting at most
``publish_timeout_s``), the phase router over the bus's group-less reader, the group-lag reader
for /health and the HTTP client the gateway talks to the hub with (health check, OAuth);
``build_app`` hands them to ``kiln_gateway.app.create_app``. ``server`` and ``run`` serve it with
uvicorn. Tests build ``GatewayPorts`` over a ``MemoryBus`` instead (tests/gateway/memory.py).
"""

from __future__ import annotations

import asyncio
import http.cookiejar

import httpx
import uvicorn
from starlette.applications import Starlette

from kiln_gateway.app import create_app
from kiln_gateway.auth import HubAuth
from kiln_gateway.groupoffsets import KafkaGroupLag
from kiln_gateway.ports import GatewayPorts
from kiln_gateway.router import EventRouter
from kiln_gateway.settings import Settings
from kilnbus import KafkaBus


def hub_client() -> httpx.AsyncClient:
    """The client for the hub's API. It keeps no cookies: it serves every user's OAuth callback, and a
    cookie the hub set during one user's login must never travel with another's."""
    no_cookies = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return httpx.AsyncClient(timeout=10, cookies=no_cookies)


def build_ports(settings: Settings) -> GatewayPorts:
    """The gateway's clients, made but not started (the application's lifespan starts them)."""
    bus = KafkaBus(settings, delivery_timeout_s=settings.publish_timeout_s)
    hub = hub_client()
    return GatewayPorts(bus=bus, router=EventRouter(bus, bus.topics.phase_events), group_lag=KafkaGroupLag(settings),
                        hub_http=hub, auth=HubAuth(settings, hub))


def build_app(settings: Settings) -> Starlette:
    return create_app(settings, build_ports(settings))


def server(settings: Settings) -> uvicorn.Server:
    """uvicorn serving the gateway on ``gateway_host:gateway_port``."""
    # uvicorn's own proxy handling is off: by default it believes X-Forwarded-For from 127.0.0.1,
    # which lets any local process pose as any client. The gateway decides from trusted_proxies.
    config = uvicorn.Config(build_app(settings), host=settings.gateway_host, port=settings.gateway_port,
                            log_level="info", proxy_headers=False, timeout_keep_alive=settings.keep_alive_s)
    return uvicorn.Server(config)


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set, then finish as uvicorn does on SIGTERM (streams closed, ports closed)."""
    served = server(settings)

    async def stop_when_told() -> None:
        await stop.wait()
        served.should_exit = True

    watcher = asyncio.create_task(stop_when_told(), name="gateway stop")
    try:
        await served.serve()
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


def main() -> None:
    """Read the settings from the environment and serve until SIGTERM/SIGINT (uvicorn's own handling)."""
    server(Settings()).run()
