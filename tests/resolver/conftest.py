"""Resolver fixtures: a loopback git host with real repositories (see tests/support/githost.py), and the
resolver served on the in-memory bus with a fake registry (tests/resolver/harness.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kiln_resolver.settings import Settings, SpecRule
from kilnbus import MemoryBus

from ..support.githost import GitHost, commit, git, make_repo, start_githost
from .harness import FakeRegistry, Resolving


@pytest.fixture
def githost(tmp_path: Path) -> Iterator[GitHost]:
    root = tmp_path / "repos"
    root.mkdir()
    repo = make_repo(root, "org/demo", {"README.md": "# demo\n", "requirements.txt": "numpy\n"})
    git(repo, "tag", "-a", "v1.0", "-m", "release 1.0")
    git(repo, "checkout", "-q", "-b", "feature/x")
    commit(repo, {"notebook.ipynb": "{}"}, "feature work")
    git(repo, "checkout", "-q", "main")
    make_repo(root, "gitlab/group/sub/project", {"README.md": "gl\n"})
    gist = make_repo(root, "gists/abc123", {"a.py": "print(1)\n"})
    commit(gist, {"a.py": "print(2)\n"}, "second")
    host = start_githost(root)
    yield host
    host.server.shutdown()


@pytest.fixture
def settings(githost: GitHost) -> Settings:
    return Settings(github_url=githost.url, github_api_url=githost.github_api, gitlab_url=githost.gitlab,
                    allowed_private_hosts=["127.0.0.1"], image_prefix="127.0.0.1:5000/kiln/binder-",
                    banned_specs=[SpecRule(pattern=r"gh/org/banned", reason="It mines cryptocurrency.")])


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
async def resolving(settings: Settings, registry: FakeRegistry) -> AsyncIterator[Resolving]:
    async with Resolving(MemoryBus(settings), settings, registry) as r:
        yield r
