"""Hostile repositories against the builder's fetch and planning, with real git and no other infrastructure.

Each repository is a real git repository made here and served over git's HTTP protocol from
loopback; the builder's own ``fetch`` checks it out and ``plan`` reads it, as in a build. What a
hostile repository may get is a clear failure naming the file and the problem: never a file of the
builder's, never a hang, never its bytes echoed back. Every refusal has a harmless twin that works.
"""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kiln_builder.buildpacks import BuildpackError, plan
from kiln_builder.executor import BuildFailed
from kiln_builder.fetch import CheckoutRefused, FetchPolicy, extract_checkout, fetch

from ..support.githost import GitHost
from .conftest import make_hostile_repo

BASE = "registry.invalid/kiln/base:test"
SECRET = "kiln-test-secret-4f1d9c"  # put in this process's environment: /proc/self/environ would show it


def policy(**overrides: object) -> FetchPolicy:
    options: dict[str, object] = {"max_bytes": 2**30, "max_entries": 100_000, "max_fetch_bytes": 2**31,
                                  "allowed_private_hosts": ["127.0.0.1"]}
    options.update(overrides)
    return FetchPolicy(**options)  # type: ignore[arg-type]


async def checkout(url: str, ref: str, work: Path, **overrides: object) -> tuple[Path, list[str]]:
    lines: list[str] = []

    async def on_line(line: str) -> None:
        lines.append(line)

    dest = work / "checkout"
    await asyncio.wait_for(fetch(url, ref, dest, on_line, 0, work / "cache", timeout=60, policy=policy(**overrides)), 60)
    return dest, lines


async def plan_of(repo: Path, max_file_bytes: int = 2**20) -> object:
    # In a thread with a deadline: a builder that reads /dev/zero would never come back.
    return await asyncio.wait_for(asyncio.to_thread(plan, repo, BASE, ["3.11"], {}, max_file_bytes), 10)


@pytest.fixture(autouse=True)
def secret_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_TEST_SECRET", SECRET)


# -- symbolic links ----------------------------------------------------------------------------

LINK_CASES = {
    "runtime-environ": ("runtime.txt", "/proc/self/environ"),
    "requirements-zero": ("requirements.txt", "/dev/zero"),
    "environment-passwd": ("environment.yml", "/etc/passwd"),
    "apt-absolute": ("apt.txt", "/etc/hostname"),
    "requirements-dotdot": ("requirements.txt", "../../../../../../etc/passwd"),
    "binder-runtime-environ": ("binder/runtime.txt", "/proc/self/environ"),
    "dockerfile-environ": ("Dockerfile", "/proc/self/environ"),
    "pipfile-passwd": ("Pipfile", "/etc/passwd"),
    "pyproject-environ": ("pyproject.toml", "/proc/self/environ"),
    "postbuild-outside": ("postBuild", "/bin/sh"),
}


@pytest.mark.parametrize("case", list(LINK_CASES))
async def test_config_file_linking_outside_the_checkout_is_refused_unread(githost: GitHost, tmp_path: Path, case: str) -> None:
    name, target = LINK_CASES[case]
    url, ref = make_hostile_repo(githost, case, {"index.ipynb": "{}"}, links={name: target})
    repo, _ = await checkout(url, ref, tmp_path)
    assert os.path.islink(repo / name), "the link itself is checked out, as git stores it"
    with pytest.raises(BuildpackError) as refused:
        await plan_of(repo)
    message = str(refused.value)
    assert refused.value.cause == "unsafe_repository"
    assert name in message and "outside the repository" in message
    assert SECRET not in message and "root:" not in message and target not in message


async def test_binder_folder_linking_outside_is_refused(githost: GitHost, tmp_path: Path) -> None:
    url, ref = make_hostile_repo(githost, "binder-etc", {"index.ipynb": "{}"}, links={"binder": "/etc"})
    repo, _ = await checkout(url, ref, tmp_path)
    with pytest.raises(BuildpackError, match="binder is a symbolic link that leads outside the repository"):
        await plan_of(repo)


async def test_links_inside_the_checkout_still_work(githost: GitHost, tmp_path: Path) -> None:
    """The positive control: a link to a file of the repository itself is what many repositories do."""
    url, ref = make_hostile_repo(githost, "inside-links", {"binder/reqs.txt": "six==1.16.0\n", "binder/rt.txt": "python-3.11\n"},
                                 links={"binder/requirements.txt": "reqs.txt", "binder/runtime.txt": "../binder/rt.txt"})
    repo, _ = await checkout(url, ref, tmp_path)
    the_plan = await plan_of(repo)
    assert the_plan.env_files["requirements.txt"] == b"six==1.16.0\n"  # type: ignore[attr-defined]
    assert the_plan.python_version == "3.11"  # type: ignore[attr-defined]


async def test_regular_runtime_and_dockerfile_are_read(githost: GitHost, tmp_path: Path) -> None:
    url, ref = make_hostile_repo(githost, "regular", {"Dockerfile": "FROM scratch\n"})
    repo, _ = await checkout(url, ref, tmp_path)
    the_plan = await plan_of(repo)
    assert the_plan.kind == "dockerfile" and the_plan.dockerfile_text == "FROM scratch\n"  # type: ignore[attr-defined]


# -- sizes and what messages repeat ------------------------------------------------------------

async def test_huge_config_file_is_refused_by_size(githost: GitHost, tmp_path: Path) -> None:
    # One endless line of 3 MiB: neither read whole nor printed back.
    url, ref = make_hostile_repo(githost, "huge", {"requirements.txt": "x" * (3 * 2**20)})
    repo, _ = await checkout(url, ref, tmp_path)
    with pytest.raises(BuildpackError) as refused:
        await plan_of(repo)
    assert "requirements.txt is larger than 1 MiB" in str(refused.value) and "xxxx" not in str(refused.value)
    the_plan = await plan_of(repo, max_file_bytes=4 * 2**20)  # control: under a higher limit it is read
    assert len(the_plan.env_files["requirements.txt"]) == 3 * 2**20  # type: ignore[attr-defined]


@pytest.mark.parametrize("files, says", [
    ({"runtime.txt": f"python-{SECRET}\n"}, "runtime.txt does not name a Python version"),
    ({"apt.txt": f"curl\n{SECRET} && rm -rf /\n"}, "apt.txt, line 2: not a Debian package name"),
    ({"environment.yml": f"dependencies:\n  - \"{SECRET} $(rm -rf /)\"\n  - python=3.11\n"},
     "a conda dependency is not a package name"),
    ({"environment.yml": f"channels: [http://{SECRET}.example]\ndependencies: [numpy]\n"}, "channels must be channel names"),
    ({"environment.yml": f"dependencies: [\n  {SECRET}: :\n"}, "environment.yml is not valid YAML at line"),
    ({"environment.yml": f"dependencies:\n  - pip:\n    - {{a: {SECRET}}}\n"}, "entries under 'pip:' must be requirement strings"),
    ({"requirements.txt": b"six\xff\xfe" + SECRET.encode()}, "requirements.txt is not UTF-8 text"),
])
async def test_messages_name_the_file_and_problem_not_its_content(githost: GitHost, tmp_path: Path,
                                                                  files: dict[str, str | bytes], says: str) -> None:
    url, ref = make_hostile_repo(githost, "echo", files)
    repo, _ = await checkout(url, ref, tmp_path)
    with pytest.raises(BuildpackError) as refused:
        await plan_of(repo)
    assert says in str(refused.value)
    assert SECRET not in str(refused.value)


async def test_yaml_alias_bomb_is_refused_quickly(githost: GitHost, tmp_path: Path) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    bomb = "\n".join(levels) + "\ndependencies:\n  - pip: *a8\n  - *a8\n"
    url, ref = make_hostile_repo(githost, "bomb", {"environment.yml": bomb})
    repo, _ = await checkout(url, ref, tmp_path)
    with pytest.raises(BuildpackError, match="line 1: YAML anchors and aliases"):
        await plan_of(repo)


def _pip_bomb(aliases: bool) -> str:
    """An environment.yml whose pip entries are strings, shared by alias: safe_load's lists of
    references, flattened into requirements.txt, made ~5 KB into megabytes (and 800 KB into OOM)."""
    name = "requests" + "x" * 200
    if aliases:
        return (f"p: &p {{pip: [&r {name}, *r, *r, *r, *r, *r, *r, *r, *r, *r]}}\n"
                "dependencies: [" + ", ".join(["*p"] * 1500) + "]\n")
    return f"dependencies:\n  - python=3.11\n  - pip:\n    - {name}\n    - six==1.16.0\n"


async def test_yaml_aliases_are_refused_before_they_expand(tmp_path: Path) -> None:
    import time
    import tracemalloc

    (tmp_path / "environment.yml").write_text(_pip_bomb(aliases=True))
    assert (tmp_path / "environment.yml").stat().st_size < 8_000  # it would stand for 15,000 lines of 208 bytes
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(BuildpackError, match="environment.yml, line 1: YAML anchors and aliases") as refused:
            plan(tmp_path, BASE, ["3.11"], {})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 2 and peak < 2 * 2**20, peak
    assert refused.value.cause == "unsupported_environment" and "requests" not in str(refused.value)
    # Control: the same entries written out are read, and build their requirements.
    (tmp_path / "environment.yml").write_text(_pip_bomb(aliases=False))
    the_plan = plan(tmp_path, BASE, ["3.11"], {})
    assert the_plan.env_files["requirements.txt"] == ("requests" + "x" * 200 + "\nsix==1.16.0\n").encode()
    assert the_plan.python_version == "3.11"


async def test_repository_over_the_checked_out_size_is_refused(githost: GitHost, tmp_path: Path) -> None:
    url, ref = make_hostile_repo(githost, "big", {"data.bin": os.urandom(600_000), "index.ipynb": "{}"})
    with pytest.raises(BuildFailed) as refused:
        await checkout(url, ref, tmp_path / "a", max_bytes=500_000)
    assert refused.value.cause == "repo_too_large" and "larger than 0 MiB" not in str(refused.value)
    repo, _ = await checkout(url, ref, tmp_path / "b", max_bytes=700_000)  # control
    assert (repo / "data.bin").stat().st_size == 600_000


async def test_repository_over_the_entry_count_is_refused(githost: GitHost, tmp_path: Path) -> None:
    url, ref = make_hostile_repo(githost, "many", {f"d/f{i}.txt": "" for i in range(300)})
    with pytest.raises(BuildFailed, match="more than 100 files and folders") as refused:
        await checkout(url, ref, tmp_path / "a", max_entries=100)
    assert refused.value.cause == "repo_too_large"
    repo, _ = await checkout(url, ref, tmp_path / "b", max_entries=400)  # control
    assert len(list((repo / "d").iterdir())) == 300


async def test_download_over_the_fetch_limit_is_stopped(githost: GitHost, tmp_path: Path) -> None:
    url, ref = make_hostile_repo(githost, "heavy", {"noise.bin": os.urandom(3 * 2**20)})
    with pytest.raises(BuildFailed, match="larger than this Binder fetches") as refused:
        await checkout(url, ref, tmp_path / "a", max_fetch_bytes=2**20)
    assert refused.value.cause == "repo_too_large"
    assert not list((tmp_path / "a" / "cache").glob("*.git")), "a mirror past the limit is not kept"
    repo, _ = await checkout(url, ref, tmp_path / "b", max_fetch_bytes=8 * 2**20)  # control
    assert (repo / "noise.bin").exists()


# -- URLs --------------------------------------------------------------------------------------

async def test_credentials_in_the_url_are_refused_and_not_repeated(githost: GitHost, tmp_path: Path) -> None:
    url, ref = make_hostile_repo(githost, "creds", {"index.ipynb": "{}"})
    for with_creds in (url.replace("http://", "http://alice:s3cr3t-token@"), url.replace("http://", "http://s3cr3t-token@")):
        with pytest.raises(BuildFailed) as refused:
            await checkout(with_creds, ref, tmp_path)
        assert refused.value.cause == "credentials_in_url"
        assert "s3cr3t" not in str(refused.value) and "user name or password" in str(refused.value)
    repo, lines = await checkout(url, ref, tmp_path)  # control: the same repository without them
    assert (repo / "index.ipynb").exists() and "s3cr3t" not in "".join(lines)


async def test_builder_rechecks_private_hosts_and_schemes(githost: GitHost, tmp_path: Path) -> None:
    url, ref = make_hostile_repo(githost, "private", {"index.ipynb": "{}"})
    with pytest.raises(BuildFailed) as refused:
        await checkout(url, ref, tmp_path, allowed_private_hosts=[])
    assert refused.value.cause == "private_host"
    for odd in ("file:///etc", "ext::sh -c id%3e/tmp/kiln-pwned", "ssh://127.0.0.1/x"):
        with pytest.raises(BuildFailed) as refused:
            await checkout(odd, ref, tmp_path)
        assert refused.value.cause == "banned", odd
    with pytest.raises(BuildFailed) as refused:
        await checkout(url, "--upload-pack=touch /tmp/kiln-pwned", tmp_path)
    assert refused.value.cause == "bad_spec" and not Path("/tmp/kiln-pwned").exists()
    repo, _ = await checkout(url, ref, tmp_path)  # control: allowed host, allowed scheme, a real commit
    assert (repo / "index.ipynb").exists()


class _Redirect(BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:
        self.send_response(301)
        self.send_header("Location", self.target + self.path)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


async def test_git_follows_no_redirect(githost: GitHost, tmp_path: Path) -> None:
    url, ref = make_hostile_repo(githost, "moved", {"index.ipynb": "{}"})
    handler = type("H", (_Redirect,), {"target": githost.url})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        redirecting = f"http://127.0.0.1:{server.server_address[1]}/t/moved"
        with pytest.raises(BuildFailed) as refused:
            await checkout(redirecting, ref, tmp_path / "a")
        assert refused.value.cause == "fetch_failed"
    finally:
        server.shutdown()
    repo, _ = await checkout(url, ref, tmp_path / "b")  # control: the place it redirected to works
    assert (repo / "index.ipynb").exists()


# -- extraction --------------------------------------------------------------------------------

def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    buf.seek(0)
    return buf


def _entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    return info


@pytest.mark.parametrize("members", [
    [(_entry("../escape.txt"), b"x")],
    [(_entry("/tmp/kiln-absolute.txt"), b"x")],
    [(_entry("a", tarfile.SYMTYPE, "OUTSIDE"), b""), (_entry("a/x.txt"), b"through the link")],
    [(_entry("h", tarfile.LNKTYPE, "/etc/passwd"), b"")],
    [(_entry("dev", tarfile.CHRTYPE), b"")],
    [(_entry("f.txt"), b"one"), (_entry("f.txt"), b"two")],
    [(_entry("l", tarfile.SYMTYPE, "OUTSIDE/new.txt"), b""), (_entry("l"), b"written through the link")],
], ids=["dotdot", "absolute", "through-symlink", "hardlink", "device", "twice", "file-over-link"])
def test_archive_entries_that_would_leave_the_checkout_are_refused(tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    fixed = []
    for info, data in members:
        info.linkname = info.linkname.replace("OUTSIDE", str(outside))
        fixed.append((info, data))
    with pytest.raises(CheckoutRefused) as refused:
        extract_checkout(_tar(*fixed), dest, 2**20, 100)
    assert refused.value.cause == "unsafe_repository"
    assert list(outside.iterdir()) == [] and not Path("/tmp/kiln-absolute.txt").exists()
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize("form", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_a_huge_long_name_header_is_refused_before_it_is_read(tmp_path: Path, form: int) -> None:
    """tarfile reads a GNU long name or a pax header whole into memory: a 4 MiB name is refused at its header."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=form) as tar:
        tar.addfile(tarfile.TarInfo("d/" * (2 * 2**20)), io.BytesIO(b""))
    buf.seek(0)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(CheckoutRefused, match="larger than 1 MiB") as refused:
        extract_checkout(buf, dest, 0, 0)
    assert refused.value.cause == "unsafe_repository" and list(dest.iterdir()) == []


def test_archive_with_files_folders_and_links_extracts(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    folder = _entry("d", tarfile.DIRTYPE)
    extract_checkout(_tar((folder, b""), (_entry("d/a.txt"), b"hello"), (_entry("d/env", tarfile.SYMTYPE, "/proc/self/environ"), b"")),
                     dest, 2**20, 100)
    assert (dest / "d" / "a.txt").read_bytes() == b"hello"
    assert os.readlink(dest / "d" / "env") == "/proc/self/environ", "links are kept as links, never followed"
