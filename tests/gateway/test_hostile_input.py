"""Every route of a real gateway process against random and hostile input (hypothesis).

Never a 500, never a stack trace to the client, and a launch request published only for a request
the gateway accepted: the number of launch requests on the bus equals the number of streams it
answered 200.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kilnbus import BusSettings, KafkaLogReader, LaunchRequested, Topics, default_codec, ensure_topics

from .conftest import free_port

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

HOSTILE = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1000, max_size=5000),
    st.sampled_from(["..", "../../etc/passwd", "%2e%2e%2f", "%2F%2F", "a%00b", "\r\nSet-Cookie: x=1", "<script>alert(1)</script>",
                     "javascript:alert(1)", "%", "%%%", "ðŸ’¥", "\u202e", "//evil.example", "gh/../../x", "~", "a" * 3000]),
)
PROVIDERS = st.one_of(st.sampled_from(["gh", "gl", "git", "gist", "zenodo", "nope", "", "GH", "..", "%2F"]), st.text(max_size=20))


@pytest.fixture(scope="module")
def gateway_process() -> Iterator[tuple[str, BusSettings]]:
    prefix = f"test-hostile-{uuid.uuid4().hex[:8]}."
    bus = BusSettings(topic_prefix=prefix, topic_partitions=1)
    asyncio.run(ensure_topics(bus))
    port = free_port()
    env = {**os.environ, "KILN_TOPIC_PREFIX": prefix, "KILN_GATEWAY_PORT": str(port), "KILN_RATE_LIMIT": "0"}
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "kiln-gateway")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(url + "/versions", timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.1)
    yield url, bus
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err[-3000:]


def check(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    assert "Traceback" not in response.text and 'File "/' not in response.text


accepted: list[str] = []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(provider=PROVIDERS, spec=HOSTILE, query=st.dictionaries(st.sampled_from(
    ["urlpath", "labpath", "filepath", "build_token", "build_only", "ref"]), HOSTILE, max_size=3),
    last_event_id=st.none() | HOSTILE)
@example(provider="..", spec="", query={}, last_event_id=None)  # /build/../ is the home page, not a launch
@example(provider="gh", spec="", query={}, last_event_id=" 0" * 40)
def test_build_and_pages_survive_anything(gateway_process: tuple[str, BusSettings], provider: str, spec: str,
                                          query: dict[str, str], last_event_id: str | None) -> None:
    url, _ = gateway_process
    path = f"/build/{quote(provider, safe='')}/{quote(spec, safe='/%')}"
    headers: dict[str, str | bytes] = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        # Any byte an HTTP client can put in a header (no control characters): the rest is the server's problem.
        headers["Last-Event-ID"] = bytes(b for b in last_event_id.encode("utf-8") if b >= 0x20 and b != 0x7F).strip(b" \t")
    with httpx.Client(base_url=url, timeout=10) as client:
        with client.stream("GET", path, params=query, headers=headers) as r:
            assert r.status_code < 500
            # Only an event stream opened for a new launch counts (a path like /build/../ is the home page).
            stream = r.headers.get("content-type", "").startswith("text/event-stream")
            if r.status_code == 200 and stream and "last-event-id" not in {k.lower() for k in headers}:
                accepted.append(path)
            elif r.status_code != 200:
                r.read()
                check(r)
        for page in (f"/v2/{quote(provider, safe='')}/{quote(spec, safe='/%')}", f"/repo/{quote(spec, safe='')}/x",
                     f"/{quote(spec, safe='/')}"):
            check(client.get(page, params=query, follow_redirects=False))


def test_nothing_but_accepted_requests_reached_the_bus(gateway_process: tuple[str, BusSettings]) -> None:
    """Runs after the property test: launch requests published == streams the gateway accepted."""
    url, bus = gateway_process
    topics = Topics(bus.topic_prefix)
    # Control: one launch surely accepted, so the count below cannot pass by both sides being empty.
    with httpx.Client(base_url=url, timeout=10) as client, \
            client.stream("GET", "/build/gh/org/repo/main", headers={"Accept": "text/event-stream"}) as r:
        assert r.status_code == 200
        accepted.append("/build/gh/org/repo/main")
    seen: list[Any] = []

    async def count() -> None:
        # The gateway answers 200 only once the broker acknowledged the launch request, so the topic's
        # end offsets now cover every one: read to them, no waiting for stragglers.
        async with KafkaLogReader(bus, [topics.launch_requested]) as reader:
            remaining = {tp for tp, end in reader.end_offsets.items() if end > 0}
            if not remaining:
                return
            async for record in reader:
                seen.append(default_codec().decode(record.value, expect=LaunchRequested))
                if record.offset + 1 >= reader.end_offsets[(record.topic, record.partition)]:
                    remaining.discard((record.topic, record.partition))
                if not remaining:
                    return

    asyncio.run(asyncio.wait_for(count(), 60))
    assert len(seen) == len(accepted)
