"""Resolver fixtures: a loopback git host with real repositories (see tests/support/githost.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..support.githost import GitHost, commit, git, make_repo, start_githost


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
