"""The checkout is a git repository, with its submodules, as repo2docker leaves it; submodule URLs
obey the same rules as the repository's own.

Real repositories made here and served over git's HTTP protocol from loopback (``githost``); the
builder's own ``fetch`` checks them out. Submodules are written as gitlinks with a ``.gitmodules``
of the test's choosing, so hostile URLs need no server behind them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kiln_builder.errors import FetchFailed
from kiln_builder.fetch import MAX_SUBMODULE_DEPTH, MAX_SUBMODULES

from ..support.githost import GitHost, git
from .conftest import make_hostile_repo
from .test_hostile_repos import checkout


def in_checkout(dest: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(dest), *args], check=True, capture_output=True, text=True).stdout.strip()


def with_submodules(host: GitHost, name: str, files: dict[str, str], links: dict[str, tuple[str, str]]) -> tuple[str, str]:
    """A repository whose commit pins submodules: path -> (url in .gitmodules, commit)."""
    modules = "".join(f'[submodule "{path}"]\n\tpath = {path}\n\turl = {url}\n' for path, (url, _) in links.items())
    url, _ = make_hostile_repo(host, name, {**files, ".gitmodules": modules})
    repo = host.root / "t" / name
    for path, (_, commit) in links.items():
        git(repo, "update-index", "--add", "--cacheinfo", f"160000,{commit},{path}")
    git(repo, "commit", "-q", "-m", "submodules")
    return url, git(repo, "rev-parse", "HEAD")


async def test_the_checkout_is_a_git_repository_at_the_launched_commit(githost: GitHost, tmp_path: Path) -> None:
    url, first = make_hostile_repo(githost, "history", {"a.txt": "one\n"})
    repo = githost.root / "t" / "history"
    (repo / "a.txt").write_text("two\n")
    git(repo, "commit", "-qam", "second")
    second = git(repo, "rev-parse", "HEAD")
    dest, _ = await checkout(url, first, tmp_path)
    assert in_checkout(dest, "rev-parse", "HEAD") == first and (dest / "a.txt").read_text() == "one\n"
    assert in_checkout(dest, "status", "--porcelain") == "", "the work tree is the commit"
    assert in_checkout(dest, "remote", "get-url", "origin") == url
    assert in_checkout(dest, "cat-file", "-t", second) == "commit", "the history as cloned, later commits too"
    assert in_checkout(dest, "log", "--format=%s", "main") == "second\nhostile"
    assert not (dest / ".git" / "hooks").exists() or not any(
        p.suffix != ".sample" for p in (dest / ".git" / "hooks").iterdir()), "no hook of anyone's"


async def test_submodules_are_checked_out_recursively_at_their_pinned_commits(githost: GitHost, tmp_path: Path) -> None:
    inner_url, inner = make_hostile_repo(githost, "inner", {"inner.txt": "deepest\n"})
    lib_url, lib = with_submodules(githost, "lib", {"lib.py": "X = 1\n"}, {"vendor/inner": ("../inner", inner)})
    url, top = with_submodules(githost, "top", {"README.md": "top\n"},
                               {"lib": ("../lib", lib), "third_party/inner": (inner_url, inner)})
    dest, lines = await checkout(url, top, tmp_path)
    assert (dest / "lib" / "lib.py").read_text() == "X = 1\n"
    assert (dest / "lib" / "vendor" / "inner" / "inner.txt").read_text() == "deepest\n", "recursively"
    assert (dest / "third_party" / "inner" / "inner.txt").read_text() == "deepest\n", "absolute URLs too"
    assert in_checkout(dest / "lib", "rev-parse", "HEAD") == lib
    assert in_checkout(dest / "lib" / "vendor" / "inner", "rev-parse", "HEAD") == inner
    assert in_checkout(dest, "rev-parse", "HEAD") == top
    assert any(line.startswith("Submodule lib: ") for line in lines)
    assert lib_url.endswith("/t/lib")


@pytest.mark.parametrize(("sub_url", "says"), [
    ("http://192.168.7.7/t/inner", "private"),
    ("file:///etc", "scheme"),
    ("ext::sh -c touch% /tmp/kiln-pwned", "remote helpers"),
    ("../../../../outside", "above its host"),
])
async def test_submodule_urls_are_checked_as_the_repositorys_own(githost: GitHost, tmp_path: Path, sub_url: str,
                                                                  says: str) -> None:
    _, inner = make_hostile_repo(githost, "inner", {"inner.txt": "x\n"})
    url, top = with_submodules(githost, "top", {"README.md": "top\n"}, {"sub": (sub_url, inner)})
    with pytest.raises(FetchFailed) as refused:
        await checkout(url, top, tmp_path)
    assert says in str(refused.value).lower(), refused.value
    assert not Path("/tmp/kiln-pwned").exists()


async def test_submodules_nested_past_the_limit_are_refused(githost: GitHost, tmp_path: Path) -> None:
    """A repository that pins itself at its previous commit, again and again: every level is a fetch."""
    url, commit = make_hostile_repo(githost, "loop", {"a.txt": "a\n"})
    repo = githost.root / "t" / "loop"
    (repo / ".gitmodules").write_text('[submodule "again"]\n\tpath = again\n\turl = ../loop\n')
    git(repo, "add", ".gitmodules")
    levels = [commit]
    for n in range(MAX_SUBMODULE_DEPTH + 1):
        git(repo, "update-index", "--add", "--cacheinfo", f"160000,{levels[-1]},again")
        git(repo, "commit", "-q", "-m", f"level {n}")
        levels.append(git(repo, "rev-parse", "HEAD"))
    dest, _ = await checkout(url, levels[MAX_SUBMODULE_DEPTH], tmp_path / "ok")
    assert (dest / ("again/" * MAX_SUBMODULE_DEPTH) / "a.txt").exists(), "as deep as allowed"
    with pytest.raises(FetchFailed, match="nest more than"):
        await checkout(url, levels[-1], tmp_path / "deep")


async def test_a_submodule_without_a_url_is_refused_by_name(githost: GitHost, tmp_path: Path) -> None:
    _, inner = make_hostile_repo(githost, "inner", {"inner.txt": "x\n"})
    url, _ = make_hostile_repo(githost, "top", {"README.md": "top\n"})
    repo = githost.root / "t" / "top"
    git(repo, "update-index", "--add", "--cacheinfo", f"160000,{inner},nowhere")
    git(repo, "commit", "-q", "-m", "gitlink without .gitmodules")
    with pytest.raises(FetchFailed, match="nowhere"):
        await checkout(url, git(repo, "rev-parse", "HEAD"), tmp_path)


async def test_submodules_count_against_one_budget_at_every_depth(githost: GitHost, tmp_path: Path) -> None:
    """A repository pinning itself eight times at each of two levels asks for 72 fetches from one download."""
    url, commit = make_hostile_repo(githost, "amp", {"a.txt": "a\n"})
    repo = githost.root / "t" / "amp"
    (repo / ".gitmodules").write_text("".join(f'[submodule "s{i}"]\n\tpath = s{i}\n\turl = ../amp\n' for i in range(8)))
    git(repo, "add", ".gitmodules")
    for level in range(2):
        for i in range(8):
            git(repo, "update-index", "--add", "--cacheinfo", f"160000,{commit},s{i}")
        git(repo, "commit", "-q", "-m", f"level {level}")
        commit = git(repo, "rev-parse", "HEAD")
    with pytest.raises(FetchFailed, match=f"more than {MAX_SUBMODULES} submodules in all"):
        await checkout(url, commit, tmp_path)


async def test_the_history_holds_only_what_the_repository_still_has(githost: GitHost, tmp_path: Path) -> None:
    """A commit its owner force-pushed away (the builder's mirror still has it) is in no later image."""
    url, first = make_hostile_repo(githost, "oops", {"a.txt": "a\n"})
    repo = githost.root / "t" / "oops"
    (repo / "creds.txt").write_text("secret\n")
    git(repo, "add", "creds.txt")
    git(repo, "commit", "-q", "-m", "oops")
    oops = git(repo, "rev-parse", "HEAD")
    await checkout(url, oops, tmp_path / "one")  # the mirror now holds it
    git(repo, "reset", "-q", "--hard", first)
    (repo / "b.txt").write_text("b\n")
    git(repo, "add", "b.txt")
    git(repo, "commit", "-q", "-m", "fixed")
    fixed = git(repo, "rev-parse", "HEAD")
    dest, _ = await checkout(url, fixed, tmp_path / "two")
    assert in_checkout(dest, "rev-parse", "HEAD") == fixed
    gone = subprocess.run(["git", "-C", str(dest), "cat-file", "-e", oops], capture_output=True)
    assert gone.returncode != 0, "the force-pushed commit came along"
    assert in_checkout(dest, "cat-file", "-t", first) == "commit", "control: what the branch reaches is there"
