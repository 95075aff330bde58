"""A private repository through the whole stack: refused by default, launched once the operator opts
in, and the credential that fetched it nowhere a user or a log reader could find it.

The git host is the test's own (tests/support/githost.py, on loopback, which the stack's services
share: they run on the host network); its ``/private/`` repositories answer git only with the
right ``Authorization``. Everything else is the running local stack.

Where the credential must not be, each looked at for its password and the header git sends: the
event stream, every record on Kiln's Kafka topics, every service's log, the analytics export, the
image (every layer, its labels and environment) and the running server's environment.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import SecretStr

from kilnbus import BusSettings
from kilnbus.credentials import GitCredential

from ..support.githost import GitHost, git, make_repo, start_githost
from .conftest import KilnServices
from .test_binder import launch, server_answers

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]

PASSWORD = f"e2e-pr1vate-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def private_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GitHost, GitCredential]]:
    host = start_githost(tmp_path_factory.mktemp("private"))
    credential = GitCredential(url=f"{host.url}/private/", username="kiln", password=SecretStr(PASSWORD))
    host.stats.git_auth = credential.basic()
    yield host, credential
    host.server.shutdown()


def credentials_env(credential: GitCredential) -> str:
    return json.dumps([{"url": credential.url, "username": credential.username, "password": PASSWORD}])


async def kafka_bytes() -> bytes:
    """Every record (keys, values, headers) on Kiln's topics, from the beginning."""
    settings = BusSettings()
    admin = AIOKafkaAdminClient(**settings.client_kwargs())
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(settings.topic_prefix)]
        partitions = [TopicPartition(d["topic"], p["partition"]) for d in await admin.describe_topics(topics)
                      for p in d["partitions"]]
    finally:
        await admin.close()
    assert len(topics) >= 4 and partitions
    consumer = AIOKafkaConsumer(**settings.client_kwargs(), enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    data = bytearray()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        async def behind() -> bool:
            return any([await consumer.position(tp) < end for tp, end in ends.items()])

        while await behind():
            batch = await consumer.getmany(timeout_ms=2000)
            for records in batch.values():
                for r in records:
                    data += (r.key or b"") + (r.value or b"") + b"".join(v for _, v in r.headers or ())
    finally:
        await consumer.stop()
    return bytes(data)


async def test_a_private_repository_launches_only_when_allowed_and_its_credential_leaks_nowhere(
        kiln_services: KilnServices, private_host: tuple[GitHost, GitCredential]) -> None:
    host, credential = private_host
    marker = uuid.uuid4().hex
    repo = make_repo(host.root, "private/lab/secret", {"README.md": marker, "index.ipynb": "{}"})
    url = f"{host.url}/private/lab/secret.git"
    spec = f"{quote(url, safe='')}/main"
    creds = {"KILN_GIT_CREDENTIALS": credentials_env(credential)}
    try:
        # The operator's credential alone does not make the repository launchable.
        kiln_services.restart_many({"resolver": creds, "builder": creds})
        refused = await launch(spec)
        assert refused[-1]["phase"] == "failed" and "is a private repository" in refused[-1]["message"], refused[-1]
        assert not any(marker in json.dumps(e) for e in refused)

        kiln_services.restart("resolver", {**creds, "KILN_PRIVATE_REPOS": "anyone"})
        events = await launch(spec)
        assert events[-1]["phase"] == "ready", events[-3:]
        server_answers(events[-1])
        r = httpx.get(f"{events[-1]['url']}api/contents/README.md", params={"content": "1"},
                      headers={"Authorization": f"token {events[-1]['token']}"}, timeout=10)
        assert r.status_code == 200 and r.json()["content"] == marker
        sha = git(repo, "rev-parse", "HEAD")
        assert sha in json.dumps(events)

        secrets = [PASSWORD.encode(), credential.basic().encode(), credential.basic().split()[1].encode()]

        def clean(where: str, data: bytes) -> None:
            assert not any(s in data for s in secrets), f"the credential is in {where}"

        clean("the event stream", json.dumps(events + refused).encode())
        clean("Kiln's Kafka topics", await kafka_bytes())
        for service, container in kiln_services.containers.items():
            out, err = container.get_logs()
            clean(f"the {service} log", out + err)
        clean("the analytics export", httpx.get("http://127.0.0.1:8590/api/v1/export/launches.jsonl", timeout=30).content)
        # The user's server and its image, by the commit (the image's tag).
        running = subprocess.run(["docker", "ps", "--format", "{{.ID}} {{.Image}}"], capture_output=True, text=True,
                                 check=True).stdout.split("\n")
        servers, images = zip(*[line.split() for line in running if line.endswith(f":{sha}")], strict=True)
        image = images[0]
        saved = subprocess.run(["docker", "save", image], capture_output=True, check=True, timeout=300).stdout
        assert len(saved) > 10_000_000, "the whole image was read"
        clean("the image's layers", _layers_unpacked(saved))
        clean("the image's labels and environment", subprocess.run(["docker", "image", "inspect", image],
                                                                    capture_output=True, check=True).stdout)
        clean("the server's container", subprocess.run(["docker", "inspect", *servers], capture_output=True,
                                                        check=True).stdout)
    finally:
        kiln_services.restart_many({"resolver": None, "builder": None})


def _layers_unpacked(saved: bytes) -> bytes:
    """The ``docker save`` archive with any gzip-compressed layer opened, so text inside it is seen too."""
    out = bytearray(saved)
    with tarfile.open(fileobj=io.BytesIO(saved)) as outer:
        for member in outer:
            f = outer.extractfile(member) if member.isfile() else None
            if f is None:
                continue
            blob = f.read()
            if blob[:2] == b"\x1f\x8b":
                out += gzip.decompress(blob)
    return bytes(out)
