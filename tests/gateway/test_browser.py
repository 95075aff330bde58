"""The pages in a real browser: headless Chromium (Debian's package) driven by Playwright.

Resolver, builder and launcher do not exist yet, so the test plays their phase events into Kafka
itself (``scripted``), and a small HTTP server on loopback stands in for the Jupyter server the
launcher will start; the browser must land on it with the token and the path the user asked for.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from kilnbus import LaunchRequested, Phase, PhaseEvent
from kilnbus.sealing import Sealer

from ..support.site import Site
from .conftest import Gateway

pytestmark = [pytest.mark.kafka, pytest.mark.browser,
              pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (make test installs it)")]

@pytest.fixture
def fake_server() -> Iterator[tuple[str, list[str]]]:
    """Stands in for a started Jupyter server: records the paths the browser asks for."""
    site = Site("JupyterLab stand-in")
    yield f"http://127.0.0.1:{site.port}/user/u/", site.seen
    site.close()


async def test_form_launch_shows_log_and_lands_on_the_server(
    gateway: Gateway, scripted: Any, browser: Any, fake_server: tuple[str, list[str]], seal_key: str
) -> None:
    server_url, seen = fake_server
    proceed = asyncio.Event()

    async def launch(req: LaunchRequested) -> list[PhaseEvent]:
        e = lambda phase, **kw: PhaseEvent(request_id=req.request_id, phase=phase, service="test", **kw)
        first = [e(Phase.WAITING, message="Waiting for build to start...\n"),
                 e(Phase.BUILDING, message="Step 1/2 : FROM kiln/base\n"),
                 e(Phase.BUILDING, message="Step 2/2 : RUN pip install -r requirements.txt\n")]
        for event in first:
            await scripted_services.producer.publish(scripted_services.topics.phase_events, req.request_id, event)
        await proceed.wait()  # the browser is looking at the log now
        return [e(Phase.BUILT, image_name="img", message="Built image, launching...\n"),
                e(Phase.LAUNCHING, message="Launching server...\n"),
                e(Phase.READY, url=server_url, sealed_token=Sealer([seal_key]).seal("tok-123", request_id=req.request_id, url=server_url),
                  message="ready\n")]

    scripted_services = await scripted(launch)
    page = await browser.new_page()
    await page.goto(gateway.url + "/")
    await page.select_option("#provider", "gh")
    await page.fill("#repo", "https://github.com/org/repo")
    await page.fill("#ref", "main")
    await page.fill("#path", "notebooks/intro.ipynb")
    launch_url = await page.input_value("#launch-url")
    assert launch_url == gateway.url + "/v2/gh/org/repo/main?urlpath=%2Fdoc%2Ftree%2Fnotebooks%2Fintro.ipynb"
    assert (await page.input_value("#badge-md")) == f"[![Binder]({gateway.url}/badge_logo.svg)]({launch_url})"
    assert (await page.input_value("#badge-rst")).startswith(f".. image:: {gateway.url}/badge_logo.svg\n :target: ")
    await page.click("#launch")
    await page.wait_for_url("**/v2/gh/org/repo/main?urlpath=*")
    await page.wait_for_function("document.getElementById('log').textContent.includes('RUN pip install')", timeout=20_000)
    assert await page.get_attribute("body", "data-phase") == "building"
    proceed.set()
    await page.wait_for_url(server_url + "**", timeout=20_000)
    pages = list(seen)  # (the stand-in leaves out the browser's favicon requests)
    assert pages == ["/user/u/doc/tree/notebooks/intro.ipynb?token=tok-123"]
    assert await page.title() == "JupyterLab stand-in"


async def test_failure_page_shows_the_message_and_log(gateway: Gateway, scripted: Any, browser: Any) -> None:
    await scripted(lambda req: [
        PhaseEvent(request_id=req.request_id, phase=Phase.BUILDING, service="builder", message="ERROR: No matching distribution found for nopkg\n"),
        PhaseEvent(request_id=req.request_id, phase=Phase.FAILED, service="builder", message="pip could not install nopkg\n"),
    ])
    page = await browser.new_page()
    await page.goto(gateway.url + "/v2/gh/org/repo/main")
    await page.wait_for_selector("#failure:not([hidden])", timeout=20_000)
    assert "pip could not install nopkg" in await page.inner_text("#failure")
    assert "No matching distribution found for nopkg" in await page.inner_text("#log")
    assert await page.inner_text("#status-title") == "Launching your Binder failed!"


@pytest.fixture
def gateway_settings(gateway_settings: Any, request: pytest.FixtureRequest) -> Any:
    return gateway_settings.model_copy(update=getattr(request, "param", {}))


@pytest.mark.parametrize("gateway_settings", [{"rate_limit": 1}], indirect=True)
async def test_a_browser_launches_under_a_limit_of_one_and_is_told_in_words_when_over_it(
    gateway: Gateway, scripted: Any, browser: Any, fake_server: tuple[str, list[str]], seal_key: str
) -> None:
    """The page is charged and its stream's build token is free: one page, one launch, the limit of 1 holds."""
    server_url, seen = fake_server
    await scripted(lambda req: [PhaseEvent(
        request_id=req.request_id, phase=Phase.READY, service="test", url=server_url, message="ready\n",
        sealed_token=Sealer([seal_key]).seal("tok-1", request_id=req.request_id, url=server_url))])
    page = await browser.new_page()
    await page.goto(gateway.url + "/v2/gh/org/repo/main")
    await page.wait_for_url(server_url + "**", timeout=20_000)
    assert len(seen) == 1 and seen[0].endswith("token=tok-1")
    again = await browser.new_page()
    response = await again.goto(gateway.url + "/v2/gh/org/repo/main")
    assert response is not None and response.status == 429
    assert "Rate limit exceeded. Try again in" in await again.inner_text("body")
