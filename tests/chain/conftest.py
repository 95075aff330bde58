"""The chain fixture: all of Kiln in this process for one test (see chain.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ..support.githost import GitHost
from .chain import Chain, make_githost, running_chain


@pytest.fixture(scope="module")
def githost(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHost]:
    """One git host for the module: tests only read org/demo, and stopping the server costs its poll interval."""
    host = make_githost(tmp_path_factory.mktemp("chain") / "repos")
    yield host
    host.server.shutdown()


@pytest.fixture
async def chain(githost: GitHost, tmp_path: Path) -> AsyncIterator[Chain]:
    async with running_chain(githost, tmp_path) as c:
        yield c
