"""Launching data repositories' records through the whole stack, as a Binder badge for a DOI does.

Zenodo and doi.org cannot be reached from here, so the resolver is pointed at the stand-ins for
their real APIs (tests/support/datahost.py, on loopback, which the stack's services share: they run
on the host network). Everything else is the running local stack: the gateway's public API, the
resolver, the builder fetching the record's files, the engine, the registry and JupyterHub.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator

import httpx
import pytest

from ..support.datahost import DataHost, make_zip, start_datahost
from .conftest import KilnServices
from .test_binder import launch, server_answers

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]


@pytest.fixture(scope="module")
def stand_ins(kiln_services: KilnServices) -> Iterator[DataHost]:
    host = start_datahost()
    kiln_services.restart("resolver", {"KILN_DOI_RESOLVER_URL": host.base("doi"), "KILN_ZENODO_URL": host.base("zenodo")})
    try:
        yield host
    finally:
        kiln_services.restart("resolver")
        host.stop()


def contents(ready: dict[str, str], path: str) -> str:
    r = httpx.get(f"{ready['url']}api/contents/{path}", params={"content": "1"},
                  headers={"Authorization": f"token {ready['token']}"}, timeout=10)
    assert r.status_code == 200, r.text
    return str(r.json()["content"])


async def test_a_zenodo_record_launches_with_its_files_by_its_doi_and_through_doi(stand_ins: DataHost) -> None:
    # A record id of this run's own: images are kept by record, across runs too.
    record, marker = str(random.randint(10**7, 10**8 - 1)), uuid.uuid4().hex
    archive = make_zip({"paper-code/requirements.txt": b"six==1.16.0\n", "paper-code/README.md": marker.encode()})
    doi = stand_ins.add_zenodo(record, {"paper-code.zip": archive})
    events = await launch(doi, provider="zenodo")
    assert events[-1]["phase"] == "ready", events[-3:]
    assert any("Extracting paper-code.zip" in e.get("message", "") for e in events)
    server_answers(events[-1])
    # The archive's one folder is the home, as repo2docker lays a record out.
    assert contents(events[-1], "README.md") == marker
    # Through doi/: the same record, the same image, no second build.
    again = await launch(doi, provider="doi")
    assert again[-1]["phase"] == "ready", again[-3:]
    assert again[0]["message"] == "Found built image, launching...\n"
    assert contents(again[-1], "README.md") == marker


async def test_a_doi_nobody_serves_fails_saying_so(stand_ins: DataHost) -> None:
    events = await launch("10.5281/zenodo.1", provider="zenodo")
    assert events[-1]["phase"] == "failed" and "not found" in events[-1]["message"], events[-1]
