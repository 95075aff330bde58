"""The bus is not an open door: the local broker wants credentials, and each service's credentials
allow only the topics that service owns (deploy/local/kafka-acls.txt).

These run against the real broker that `make up` starts, on Kiln's own topic names (the ACLs name
them). Negative checks write forged records where they must be refused; the positive controls write
only to the dead-letter topic, which every service may, so no forged record lands where a service
or a user would act on it.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError

from kilnbus import BusSettings, Phase, PhaseEvent, Topics, default_codec, ensure_topics

pytestmark = [pytest.mark.kafka]
ROOT = Path(__file__).resolve().parents[2]
TOPICS = Topics("kiln.")


def password(user: str) -> str:
    path = ROOT / ".state" / "secrets" / f"kafka-{user}"
    if not path.exists():
        pytest.skip("the local broker's credentials are not made yet (make up makes them)")
    return path.read_text().strip()


def client(user: str | None, secret: str | None = None, **extra: Any) -> dict[str, Any]:
    """Client keyword arguments as ``user`` (None: no authentication at all)."""
    if user is None:
        return {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT", **extra}
    settings = BusSettings(kafka_bootstrap="127.0.0.1:9092", kafka_security_protocol="SASL_PLAINTEXT",
                           kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username=user,
                           kafka_sasl_password=secret if secret is not None else password(user))
    return {**settings.client_kwargs(), **extra}


def forged_ready() -> bytes:
    """What an attacker on the bus would write: a `ready` for someone's request, pointing elsewhere."""
    event = PhaseEvent(request_id=uuid.uuid4().hex, phase=Phase.READY, message="server running at http://evil.example/\n",
                       url="http://evil.example/", service="attacker")
    return default_codec().encode(event)


async def send(kwargs: dict[str, Any], topic: str, value: bytes) -> None:
    producer = AIOKafkaProducer(**kwargs, request_timeout_ms=5000, metadata_max_age_ms=5000)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"security-test")
    finally:
        await producer.stop()


@pytest.fixture(autouse=True)
async def topics_exist(kafka_bootstrap: str) -> None:
    """Kiln's topics, as the services make them at start (here as the admin, for a broker alone)."""
    await ensure_topics(BusSettings(kafka_bootstrap=kafka_bootstrap, topic_prefix="kiln."))


async def test_a_client_without_credentials_is_refused(kafka_bootstrap: str) -> None:
    with pytest.raises(KafkaError):
        await send(client(None), TOPICS.phase_events.name, forged_ready())
    # Positive control: the same write with the admin's credentials goes through (to the dead letter,
    # where nobody acts on it), so the refusal above is the broker's and not a broken client.
    await send(client("admin"), TOPICS.dead_letter.name, b"security test: admin may write")


async def test_a_wrong_password_is_refused(kafka_bootstrap: str) -> None:
    with pytest.raises(KafkaError):
        await send(client("builder", "not-the-password"), TOPICS.dead_letter.name, b"x")
    await send(client("builder"), TOPICS.dead_letter.name, b"security test: builder may write its dead letters")


@pytest.mark.parametrize(("user", "forbidden"), [
    ("builder", "launch_requested"),  # a compromised builder cannot start launches for anyone
    ("builder", "build_requested"),  # nor queue builds
    ("gateway", "hub_launch_requested"),  # the gateway cannot ask the launcher to start any image
    ("resolver", "launch_requested"),
    ("analytics", "phase_events"),  # analytics reads the log and writes nothing on it
    ("analytics", "hub_launch_requested"),
    ("launcher", "build_requested"),
])
async def test_each_service_writes_only_the_topics_it_owns(kafka_bootstrap: str, user: str, forbidden: str) -> None:
    topic = getattr(TOPICS, forbidden).name
    with pytest.raises(TopicAuthorizationFailedError):
        await send(client(user), topic, forged_ready())
    # Positive control: the same user, the same connection settings, a topic it may write.
    await send(client(user), TOPICS.dead_letter.name, f"security test: {user} may write dead letters".encode())
