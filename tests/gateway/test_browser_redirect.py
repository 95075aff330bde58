"""The loading page sends the browser only to the ready server (its origin, under its path), in Chromium.

The gateway refuses paths that leave the server (``test_security_units``); this checks the second
lock, in the browser's own URL parser. The gateway runs in process without its lifespan (so
over in-memory ports), and Playwright answers the page's event stream itself with a scripted ``ready``
event. To reach the browser-side check with a hostile path, the test rewrites the loading page's
config on its way to the browser, as if the gateway's check had missed it. Two loopback HTTP
servers on different ports are two origins: the user's server, and the attacker's.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from kiln_gateway.settings import Settings

from ..support.site import Site
from .conftest import CHROMIUM_FLAGS, free_port, serving
from .memory import memory_app

# One Chromium for the module (its start and stop were most of each case's time), so every test and
# fixture here runs on the module's event loop; each test still gets a fresh browser context.
pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (make test installs it)")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chromium() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_FLAGS)
        yield b
        await b.close()


@pytest_asyncio.fixture(loop_scope="module")
async def browser(chromium: Any) -> AsyncIterator[Any]:
    """A context of its own per test (cookies, storage, routes), closed with its pages afterwards."""
    context = await chromium.new_context()
    yield context
    await context.close()


@pytest.fixture
def sites() -> Iterator[tuple[Site, Site]]:
    server, evil = Site(), Site()
    yield server, evil
    server.httpd.shutdown()
    evil.httpd.shutdown()


@pytest_asyncio.fixture(loop_scope="module")
async def gateway_url() -> AsyncIterator[str]:
    settings = Settings(gateway_port=free_port(), rate_limit=0)
    async with serving(memory_app(settings), settings.gateway_port, lifespan="off") as url:  # its stream is faked
        yield url


async def open_loading_page(browser: Any, gateway_url: str, ready: dict[str, Any], urlpath: str | None = None,
                            query: str = "") -> Any:
    """The /v2 loading page, its event stream answered with ``ready``; ``urlpath`` replaces the page's own."""
    page = await browser.new_page()

    async def stream(route: Any) -> None:
        body = "id: 1\ndata: " + json.dumps({"phase": "launching", "message": "Launching server...\n"}) + "\n\n"
        body += "id: 2\ndata: " + json.dumps(ready) + "\n\n"
        await route.fulfill(status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}, body=body)

    async def loading(route: Any) -> None:
        response = await route.fetch()
        html = await response.text()
        if urlpath is not None:
            config = re.search(r'<script id="kiln-config" type="application/json">(.*?)</script>', html, re.DOTALL)
            assert config is not None
            values = json.loads(config.group(1))
            values["urlpath"] = urlpath
            html = html.replace(config.group(1), json.dumps(values))
        await route.fulfill(response=response, body=html)

    await page.route("**/build/**", stream)
    await page.route("**/v2/**", loading)
    await page.goto(f"{gateway_url}/v2/gh/org/repo/main{query}")
    return page


HOSTILE = ["\\\\127.0.0.1:{evil}/x", "\\127.0.0.1:{evil}/x", "/\\127.0.0.1:{evil}/x", " //127.0.0.1:{evil}/x",
           "//127.0.0.1:{evil}/x", "\t//127.0.0.1:{evil}/x", "http://127.0.0.1:{evil}/x", "javascript:location='http://127.0.0.1:{evil}/x'",
           "/%5C127.0.0.1:{evil}/x",
           # Same origin, another user's server (the URL carries the token): the path must stay under the server's.
           "../../v/binder-2/", "%2e%2e/%2e%2e/v/binder-2/", "/user/v/binder-2/", "/hub/admin"]


@pytest.mark.parametrize("urlpath", HOSTILE)
async def test_browser_does_not_leave_the_servers_origin(browser: Any, gateway_url: str, sites: tuple[Site, Site],
                                                         urlpath: str) -> None:
    server, evil = sites
    server_url = f"http://127.0.0.1:{server.port}/user/u/binder-1/"
    hostile = urlpath.format(evil=evil.port)
    page = await open_loading_page(browser, gateway_url, {"phase": "ready", "message": "ready\n", "url": server_url,
                                                          "token": "secret-token"}, urlpath=hostile)
    await page.wait_for_selector("#failure:not([hidden])", timeout=20_000)
    assert "outside your server" in await page.inner_text("#failure")
    # The page decides in the handler that showed the failure; one more turn of its task queue lets
    # anything that handler scheduled run, instead of a fixed wait for a navigation that must not happen.
    await page.evaluate("() => new Promise((done) => setTimeout(done, 0))")
    assert page.url.startswith(f"{gateway_url}/v2/"), page.url
    assert evil.seen == [] and server.seen == [], "the browser was sent outside the user's server"
    assert "secret-token" not in await page.content()


@pytest.mark.parametrize("url", ["javascript:alert(1)//", "data:text/html,hi", "/user/u/binder-1/", "not a url"])
async def test_ready_url_that_is_not_an_http_server_is_not_followed(browser: Any, gateway_url: str, url: str) -> None:
    page = await open_loading_page(browser, gateway_url, {"phase": "ready", "message": "ready\n", "url": url, "token": "t"})
    await page.wait_for_selector("#failure:not([hidden])", timeout=20_000)
    assert page.url.startswith(f"{gateway_url}/v2/")


@pytest.mark.parametrize("query, lands_on", [
    ("?urlpath=lab/tree/a%20b.ipynb", "/user/u/binder-1/lab/tree/a%20b.ipynb?token=secret-token"),
    ("?labpath=notebooks/index.ipynb", "/user/u/binder-1/doc/tree/notebooks/index.ipynb?token=secret-token"),
    ("?urlpath=/lab", "/user/u/binder-1/lab?token=secret-token"),
    ("", "/user/u/binder-1/?token=secret-token"),
])
async def test_browser_lands_on_the_server_with_a_normal_path(browser: Any, gateway_url: str, sites: tuple[Site, Site],
                                                              query: str, lands_on: str) -> None:
    """The positive control: the same page, with the gateway's own config, goes to the server."""
    server, evil = sites
    server_url = f"http://127.0.0.1:{server.port}/user/u/binder-1/"
    page = await open_loading_page(browser, gateway_url, {"phase": "ready", "message": "ready\n", "url": server_url,
                                                          "token": "secret-token"}, query=query)
    await page.wait_for_url(server_url + "**", timeout=20_000)
    assert server.seen == [lands_on] and evil.seen == []


async def test_hostile_link_gets_the_error_page_in_the_browser(browser: Any, gateway_url: str) -> None:
    page = await browser.new_page()
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if "/build/" in r.url else None)
    response = await page.goto(f"{gateway_url}/v2/gh/org/repo/main?urlpath=%5C%5Cevil.example")
    assert response is not None and response.status == 400
    assert "backslashes" in await page.inner_text("body")
    # The error page has loaded with its scripts; a stream it opened would keep the network busy.
    await page.wait_for_load_state("networkidle")
    assert streams == [], "no launch was started"
