"""Shared fixtures: the real infrastructure, started through the same scripts as `make up`."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kilnbus import BusProducer, BusSettings, Topics, ensure_topics

from .support.datahost import DataHost, start_datahost
from .support.stack import use_local_kafka_admin, use_local_registry_admin

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "deploy" / "local"


use_local_kafka_admin()
use_local_registry_admin()


@pytest.fixture
def datahost() -> Iterator[DataHost]:
    """Stand-ins for doi.org and the data repositories' real APIs on loopback (tests/support/datahost.py)."""
    host = start_datahost()
    yield host
    host.stop()


def run_script(script: str, *args: str, env: dict[str, str] | None = None) -> None:
    """Run a deploy/local script, failing the test with its output if it fails."""
    proc = subprocess.run(
        ["bash", str(LOCAL / script), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        pytest.fail(f"{script} {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The main broker on 127.0.0.1:9092 (idempotent start; left running for the next test run)."""
    if bootstrap := os.environ.get("KILN_KAFKA_BOOTSTRAP"):
        return bootstrap
    run_script("kafka.sh", "start")
    use_local_kafka_admin()  # a fresh machine has the password only now
    return "127.0.0.1:9092"


@pytest.fixture
async def bus_settings(kafka_bootstrap: str) -> AsyncIterator[BusSettings]:
    """Settings with a topic prefix of this test's own, so tests never see each other's events.

    The test's topics are deleted afterwards: thousands of leftover topics slow every client's
    metadata fetch.
    """
    settings = BusSettings(kafka_bootstrap=kafka_bootstrap, topic_prefix=f"test-{uuid.uuid4().hex[:10]}.", topic_partitions=3)
    yield settings
    await delete_topics(kafka_bootstrap, settings.topic_prefix)


async def delete_topics(bootstrap: str, prefix: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**BusSettings(kafka_bootstrap=bootstrap).client_kwargs())
    await admin.start()
    try:
        doomed = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()


@pytest.fixture
def topics(bus_settings: BusSettings) -> Topics:
    return Topics(bus_settings.topic_prefix)


@pytest.fixture
async def producer(bus_settings: BusSettings, topics: Topics) -> AsyncIterator[BusProducer]:
    await ensure_topics(bus_settings)
    async with BusProducer(bus_settings) as p:
        yield p


@pytest.fixture(scope="session")
def repo_root() -> Iterator[Path]:
    yield ROOT
