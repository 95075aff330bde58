"""Fixtures for the hostile-repository tests: a loopback git host serving repositories the tests make."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..support.githost import GitHost, git, start_githost


@pytest.fixture
def githost(tmp_path: Path) -> Iterator[GitHost]:
    host = start_githost(tmp_path / "served")
    yield host
    host.server.shutdown()


def make_hostile_repo(host: GitHost, name: str, files: dict[str, str | bytes], links: dict[str, str] | None = None) -> tuple[str, str]:
    """A real repository on ``host`` with ``files`` and symbolic ``links`` (path -> target): (url, commit)."""
    path = host.root / "t" / name
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    for rel, content in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            (path / rel).write_bytes(content)
        else:
            (path / rel).write_text(content)
    for rel, target in (links or {}).items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, path / rel)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "hostile", "--allow-empty")
    return f"{host.url}/t/{name}", git(path, "rev-parse", "HEAD")
