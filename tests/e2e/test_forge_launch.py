"""Launching from Codeberg (Gitea/Forgejo) and Bitbucket through the whole stack.

Neither forge can be reached from here, so the resolver is pointed at the test git host
(tests/support/githost.py, on loopback), which answers the forges' REST calls from real
repositories and serves them for cloning over git's smart HTTP. Everything else is the running
local stack: the gateway's public API, the resolver, the builder cloning the repository, the
engine, the registry and JupyterHub.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..support.githost import GitHost, git, make_repo, start_githost
from .conftest import KilnServices
from .test_binder import launch, server_answers

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.docker, pytest.mark.hub, pytest.mark.slow]


@pytest.fixture(scope="module")
def forges(kiln_services: KilnServices, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHost]:
    host = start_githost(tmp_path_factory.mktemp("forges"))
    kiln_services.restart("resolver", {"KILN_GITEA_URL": host.gitea, "KILN_BITBUCKET_URL": host.bitbucket,
                                       "KILN_BITBUCKET_API_URL": host.bitbucket_api})
    try:
        yield host
    finally:
        kiln_services.restart("resolver")
        host.server.shutdown()


@pytest.mark.parametrize(("provider", "forge"), [("gitea", "gitea"), ("bb", "bitbucket")])
async def test_a_forge_repository_launches_as_a_git_checkout(forges: GitHost, provider: str, forge: str) -> None:
    marker = uuid.uuid4().hex  # a repository of this run's own: images are kept by commit, across runs too
    repo: Path = make_repo(forges.root, f"{forge}/lab/analysis", {"README.md": marker, "index.ipynb": "{}"})
    sha = git(repo, "rev-parse", "HEAD")
    events = await launch("lab/analysis/main", provider=provider)
    assert events[-1]["phase"] == "ready", events[-3:]
    server_answers(events[-1])
    r = httpx.get(f"{events[-1]['url']}api/contents/README.md", params={"content": "1"},
                  headers={"Authorization": f"token {events[-1]['token']}"}, timeout=10)
    assert r.status_code == 200 and r.json()["content"] == marker
    assert any(sha in e.get("message", "") for e in events), "the resolved commit was fetched"
