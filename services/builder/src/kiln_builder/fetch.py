"""Fetching a repository at an exact commit with git, streaming git's own words as it goes.

The repository is hostile until proven otherwise. Before git runs, the URL is checked again with
the resolver's rule (``kilnbus.urlguard``: scheme, no credentials, no private hosts), and git runs
with no redirects, only the allowed transports, no submodules, object checking on (``fsck``
refuses trees with ``..``, ``.git`` or duplicate names), and for HTTP the addresses just checked
pinned, so a second DNS answer cannot point it elsewhere. The download is stopped past
``max_fetch_bytes``; the checkout is extracted by Kiln itself, refusing any entry that would land
outside it and stopping past ``max_bytes`` or ``max_entries``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

from kiln_builder.errors import FetchFailed
from kiln_builder.executor import LineSink
from kiln_builder.lfs import fetch_lfs
from kilnbus.credentials import GitCredential, GitHubAppError, git_auth_env
from kilnbus.urlguard import UnsafeRepoURL, check_repo_url, git_env, git_safety_args, public_addresses, redact

_PROGRESS = re.compile(r"\d+% \(\d+/\d+\)")
_ENV = git_env()
# A commit, tag or branch name; never something git could read as an option.
_REF = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._/-]{0,254}$")
_GIT_LINE_LIMIT = 500  # git's own lines (and a hostile server's "remote:" lines) shown in the log
MAX_SUBMODULE_DEPTH = 4  # submodules of submodules of ...: deeper is refused (a cycle ends here too)
MAX_SUBMODULES = 32  # in all, at every depth


@dataclass(frozen=True)
class FetchPolicy:
    """What the builder fetches, and how much of it (0: no limit)."""

    max_bytes: int = 2**30
    max_entries: int = 0
    max_fetch_bytes: int = 0
    allowed_schemes: list[str] = field(default_factory=lambda: ["https", "http", "git"])
    allowed_private_hosts: list[str] = field(default_factory=list)


def _git_options(policy: FetchPolicy) -> list[str]:
    return [*git_safety_args(policy.allowed_schemes),
            # Check every object received: a hand-made tree could name "../x" or hold "a" twice.
            "-c", "transfer.fsckObjects=true", "-c", "fetch.fsck.zeroPaddedFilemode=ignore"]


def _amount(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB" if n >= 2**10 else f"{n} bytes"


def _dir_size(path: Path) -> int:
    return sum(_checkout_sizes(path))


def _checkout_sizes(path: Path) -> tuple[int, int]:
    """Bytes under ``path`` in one walk: outside any ``.git``, and inside them (histories)."""
    files = histories = 0
    for root, _, names in os.walk(path):
        in_git = ".git" in Path(root).relative_to(path).parts
        for name in names:
            try:
                size = os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue  # git renames its temporary files as it goes
            if in_git:
                histories += size
            else:
                files += size
    return files, histories


async def _git(args: list[str], cwd: Path | None, on_line: LineSink, timeout: float,
               watch: tuple[Path, int] | None = None, auth: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Run git, passing its finished lines on; with ``watch=(dir, limit)`` stop it once ``dir`` grows past ``limit``;
    ``auth`` is environment that gives git a credential (``kilnbus.credentials.git_auth_env``)."""
    proc = await asyncio.create_subprocess_exec("git", *args, cwd=cwd, env=_ENV | (auth or {}), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    lines: list[str] = []
    assert proc.stdout is not None

    async def read() -> None:
        assert proc.stdout is not None
        buf = b""
        while chunk := await proc.stdout.read(4096):
            buf += chunk
            # git redraws progress with \r; send each finished line once
            *done, buf = buf.replace(b"\r", b"\n").split(b"\n")
            buf = buf[-4096:]  # a server may send a "line" that never ends
            for raw in done:
                line = raw.decode(errors="replace").strip()[:_GIT_LINE_LIMIT]
                if _PROGRESS.search(line) and not line.endswith("done."):
                    continue  # git redraws these many times a second; the finished line says it all
                if line:
                    lines.append(line)
                    del lines[:-20]
                    await on_line(line + "\n")

    async def guard() -> None:
        assert watch is not None
        path, limit = watch
        while True:
            await asyncio.sleep(0.5)
            if path.exists() and await asyncio.to_thread(_dir_size, path) > limit:
                proc.kill()
                raise FetchFailed(f"The repository is larger than this Binder fetches ({_amount(limit)} with its history).",
                                  "repo_too_large")

    reader = asyncio.ensure_future(read())
    tasks = {reader} | ({asyncio.ensure_future(guard())} if watch and watch[1] else set())
    try:
        done, _ = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            proc.kill()
            raise FetchFailed(f"Fetching the repository took longer than {timeout:.0f} seconds.", "fetch_failed")
        for task in done:
            task.result()  # the guard's FetchFailed
    finally:
        for task in tasks:
            task.cancel()
        if proc.returncode is None and not reader.done():
            proc.kill()
        # Awaited, not only cancelled: neither may outlive this call (the guard would kill a process already gone).
        await asyncio.gather(*tasks, return_exceptions=True)
    return await proc.wait(), lines


_locks: dict[str, asyncio.Lock] = {}
# The operator's credential for a repository URL, if any (minting a GitHub App token may need a request).
CredentialSource = Callable[[str], Awaitable[GitCredential | None]]


async def _has_commit(mirror: Path, ref: str) -> bool:
    proc = await asyncio.create_subprocess_exec("git", "--git-dir", str(mirror), "cat-file", "-e", f"{ref}^{{commit}}",
                                                env=_ENV, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    return await proc.wait() == 0


class CheckoutRefused(FetchFailed):
    """An entry of the archive Kiln will not extract, or a limit passed; the message is for the user."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message, cause)


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


MAX_TAR_HEADER = 1 << 20  # a long name or pax header past this is no path anyone meant


class BoundedTarInfo(tarfile.TarInfo):
    """A tar member whose extended header (pax, or GNU long name and link) is refused past
    ``MAX_TAR_HEADER``: tarfile reads such a header whole into memory before Kiln sees the member,
    so a small compressed archive could otherwise ask for gigabytes."""

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED and self.size > MAX_TAR_HEADER:
            raise CheckoutRefused("The archive contains a header (a long name or extended attributes) larger than "
                                  f"{_amount(MAX_TAR_HEADER)}.", "unsafe_repository")
        return super()._proc_member(tar)  # type: ignore[misc,no-any-return]


_EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
             tarfile.GNUTYPE_LONGLINK)


def extract_checkout(stream: object, dest: Path, max_bytes: int, max_entries: int) -> None:
    """Extract the tar ``stream`` (git archive's) into ``dest``, refusing anything that could leave it.

    Only directories, regular files and symbolic links are written (git archive makes nothing
    else). A link may point anywhere: Kiln never follows links out of a checkout (``buildpacks.RepoFiles``)
    and extraction never writes through one, because every entry's parent must resolve inside
    ``dest``. Sizes are counted from the headers before anything is written.
    """
    root = os.path.realpath(dest)
    total = entries = 0
    with tarfile.open(fileobj=stream, mode="r|", tarinfo=BoundedTarInfo) as tar:  # type: ignore[call-overload]
        for member in tar:
            if member.name == "pax_global_header" or member.type == tarfile.XGLTYPE:
                continue
            entries += 1
            if max_entries and entries > max_entries:
                raise CheckoutRefused(f"The repository has more than {max_entries} files and folders; this Binder builds "
                                      "repositories up to that many.", "repo_too_large")
            name = PurePosixPath(member.name)
            if name.is_absolute() or ".." in name.parts or not name.parts:
                raise CheckoutRefused("The repository contains a path that leads outside it.", "unsafe_repository")
            if any(part.lower() == ".git" for part in name.parts):  # git's fsck refuses these already; the .git is Kiln's
                raise CheckoutRefused("The repository contains a .git of its own.", "unsafe_repository")
            if not (member.isfile() or member.isdir() or member.issym()):
                raise CheckoutRefused("The repository contains an entry that is not a file, folder or link.",
                                      "unsafe_repository")
            parent = os.path.realpath(os.path.join(root, *name.parts[:-1]))
            if not _inside(root, parent):
                raise CheckoutRefused("The repository contains a path that leads outside it through a symbolic link.",
                                      "unsafe_repository")
            if member.isfile():
                total += member.size
                if max_bytes and total > max_bytes:
                    raise CheckoutRefused(f"The repository is larger than {_amount(max_bytes)} checked out; this Binder "
                                          "builds repositories up to that size.", "repo_too_large")
            target = os.path.join(parent, name.parts[-1])
            if os.path.lexists(target) and not (member.isdir() and os.path.isdir(target) and not os.path.islink(target)):
                raise CheckoutRefused("The repository contains the same path twice.", "unsafe_repository")
            if member.isdir():
                os.makedirs(target, mode=0o755, exist_ok=True)
            elif member.issym():
                os.symlink(member.linkname, target)
            else:
                source = tar.extractfile(member)
                assert source is not None
                # O_EXCL|O_NOFOLLOW: create a new file here, never open one a link points at.
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755 if member.mode & 0o111 else 0o644)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)


async def _archive(mirror: Path, ref: str, dest: Path, policy: FetchPolicy) -> None:
    """``git archive`` of ``ref`` extracted into ``dest`` by ``extract_checkout``."""
    def run() -> None:
        proc = subprocess.Popen(["git", "--git-dir", str(mirror), "archive", "--format=tar", ref, "--"], env=_ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        errors = bytearray()

        def drain() -> None:  # read all of stderr (a full pipe would block git), keep its start
            assert proc.stderr is not None
            while chunk := proc.stderr.read(8192):
                if len(errors) < 8192:
                    errors.extend(chunk)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        finished = False
        try:
            extract_checkout(proc.stdout, dest, policy.max_bytes, policy.max_entries)
            while proc.stdout.read(1 << 16):  # the tar's trailing blocks
                pass
            finished = True
        except CheckoutRefused:
            raise
        except (tarfile.TarError, OSError) as exc:
            raise CheckoutRefused(f"The commit could not be checked out ({type(exc).__name__}).", "fetch_failed") from None
        finally:
            if not finished:
                proc.kill()
            proc.wait()
            reader.join(5)
        if proc.returncode != 0:
            raise CheckoutRefused(f"git could not archive {ref}: {bytes(errors).decode(errors='replace').strip()[:300]}",
                                  "fetch_failed")

    await asyncio.to_thread(run)


@dataclass
class _Budget:
    """What a repository and all its submodules together may take: fetches, time, and (from ``policy``) bytes."""

    root: Path  # the repository's checkout, submodules inside it
    fetches: int  # submodule fetches left
    deadline: float  # event-loop time


async def fetch(repo_url: str, ref: str, dest: Path, on_line: LineSink, max_bytes: int, cache_dir: Path,
                timeout: float = 600, policy: FetchPolicy | None = None, _depth: int = 0,
                _budget: _Budget | None = None, credential: GitCredential | None = None) -> None:
    """Check out ``ref`` of ``repo_url`` into ``dest``; refuse unsafe URLs and repositories over the limits.

    Each repository is kept as a bare mirror under ``cache_dir``: a new commit costs an incremental
    fetch instead of a clone, and a commit already there (a rebuild) costs no network at all. The
    checkout is a git repository, as repo2docker leaves it (``_git_dir``), with its Git LFS files
    (``lfs``) and its submodules fetched the same way, each URL checked as this one was (``_submodules``).
    ``credential`` (a private repository's) goes to this repository and its LFS server only: never to
    a submodule, which a repository could point at another private repository the same credential reads.
    """
    policy = policy or FetchPolicy(max_bytes=max_bytes)
    if dest.exists():
        shutil.rmtree(dest)
    try:
        parts = await check_repo_url(repo_url, policy.allowed_schemes, policy.allowed_private_hosts)
    except UnsafeRepoURL as exc:
        raise FetchFailed(str(exc), exc.cause) from None
    if not _REF.match(ref):
        raise FetchFailed("The commit to build is not a valid git ref.", "bad_spec")
    options = _git_options(policy)
    scheme, host = parts.scheme.lower(), parts.hostname
    assert host is not None
    if scheme in ("http", "https"):
        # Pin the addresses just checked: git's own lookup could get another answer (DNS rebinding).
        try:
            addresses = await public_addresses(host, policy.allowed_private_hosts)
        except UnsafeRepoURL as exc:
            raise FetchFailed(str(exc), exc.cause) from None
        port = parts.port or (443 if scheme == "https" else 80)
        pinned = ",".join(f"[{a}]" if ":" in a else a for a in addresses)
        options += ["-c", f"http.curloptResolve={host}:{port}:{pinned}"]
    shown = redact(repo_url)
    # A mirror filled with a credential is kept apart: an uncredentialed fetch of the same URL (a
    # submodule of someone else's repository) must not find a private repository's commits there.
    cache_key = repo_url if credential is None else f"{repo_url}\0credential:{credential.url}"
    mirror = cache_dir / (hashlib.sha256(cache_key.encode()).hexdigest()[:20] + ".git")
    watch = (mirror, policy.max_fetch_bytes)
    auth = git_auth_env(repo_url, credential) if credential else None
    await on_line(f"Picked Git content provider.\nFetching {shown} at {ref}\n")
    async with _locks.setdefault(cache_key, asyncio.Lock()):  # one git process per mirror at a time
        if not (mirror / "HEAD").exists():
            shutil.rmtree(mirror, ignore_errors=True)
            cache_dir.mkdir(parents=True, exist_ok=True)
            try:
                code, lines = await _git([*options, "clone", "--bare", "--no-recurse-submodules", "--progress", "--",
                                          repo_url, str(mirror)], None, on_line, timeout, watch, auth)
            except FetchFailed:
                shutil.rmtree(mirror, ignore_errors=True)
                raise
            if code != 0:
                shutil.rmtree(mirror, ignore_errors=True)
                raise FetchFailed(f"Could not clone {shown}: {lines[-1] if lines else 'git failed'}", "fetch_failed")
        elif not await _has_commit(mirror, ref):
            try:
                code, lines = await _git([*options, "--git-dir", str(mirror), "fetch", "--no-recurse-submodules", "--progress",
                                          "--prune", "origin", "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
                                         None, on_line, timeout, watch, auth)
            except FetchFailed:
                shutil.rmtree(mirror, ignore_errors=True)  # a mirror past the limit is not kept for next time
                raise
            if code != 0:
                raise FetchFailed(f"Could not fetch {shown}: {lines[-1] if lines else 'git failed'}", "fetch_failed")
        else:
            await on_line(f"{ref[:12]} is already here; nothing to fetch\n")
        # Once more after git ended: a fast download can finish between two of the guard's looks.
        if policy.max_fetch_bytes and await asyncio.to_thread(_dir_size, mirror) > policy.max_fetch_bytes:
            shutil.rmtree(mirror, ignore_errors=True)
            raise FetchFailed(f"The repository is larger than this Binder fetches ({_amount(policy.max_fetch_bytes)} with "
                              "its history).", "repo_too_large")
        if not await _has_commit(mirror, ref):
            raise FetchFailed(f"Commit {ref} is not in {shown}.", "fetch_failed")
        dest.mkdir(parents=True)
        try:
            await _archive(mirror, ref, dest, policy)
            await _git_dir(mirror, ref, dest, repo_url)
        except CheckoutRefused:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        links = await _submodule_links(mirror, ref)
    try:
        await fetch_lfs(dest, repo_url, on_line, cache_dir, policy.max_bytes, policy.allowed_schemes,
                        policy.allowed_private_hosts, timeout, credential)
    except FetchFailed:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    # Outside the mirror's lock: a submodule may be this very repository (at another commit).
    if links:
        budget = _budget or _Budget(dest, MAX_SUBMODULES, asyncio.get_running_loop().time() + timeout)
        await _submodules(links, repo_url, dest, on_line, cache_dir, policy, _depth, budget)



async def _run_git(args: list[str], what: str) -> str:
    """git on Kiln's own repositories (a mirror, the checkout's new .git); its output, FetchFailed if it fails."""
    proc = await asyncio.create_subprocess_exec("git", *args, env=_ENV, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise CheckoutRefused(f"{what} failed: {err.decode(errors='replace').strip()[:300]}", "fetch_failed")
    return out.decode(errors="replace")


async def _git_dir(mirror: Path, ref: str, dest: Path, repo_url: str) -> None:
    """``dest/.git``: the repository with its history, the commit checked out (detached), origin its URL.

    Made by Kiln from its own mirror, not taken from the repository (whose trees cannot hold a
    ``.git``): the branches, tags and the commit fetched from the mirror into a new repository, so
    only what they reach is copied (the mirror keeps objects its owner has since deleted, which a
    local clone would copy too), then the index read from the commit so that ``git status`` is clean.
    No hook, filter or configuration of the repository's runs: none comes with a fetch.
    """
    git_dir = dest / ".git"
    what = "Keeping the repository's history"
    keep = f"refs/kiln/checkout-{uuid.uuid4().hex}"  # the commit may be on no branch any more
    await _run_git(["--git-dir", str(mirror), "update-ref", keep, ref], what)
    try:
        await _run_git(["init", "--quiet", "--bare", str(git_dir)], what)
        await _run_git(["-c", "protocol.file.allow=always", "--git-dir", str(git_dir), "fetch", "--quiet", "--no-tags",
                        "--", str(mirror), "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*",
                        f"+{keep}:refs/kiln/checkout"], what)
    finally:
        await _run_git(["--git-dir", str(mirror), "update-ref", "-d", keep], what)
    base = ["--git-dir", str(git_dir)]
    for key, value in (("core.bare", "false"), ("remote.origin.url", repo_url),
                       ("remote.origin.fetch", "+refs/heads/*:refs/remotes/origin/*")):
        await _run_git([*base, "config", key, value], what)
    await _run_git([*base, "update-ref", "--no-deref", "HEAD", ref], "Checking out the commit")
    await _run_git([*base, "update-ref", "-d", "refs/kiln/checkout"], "Checking out the commit")
    await _run_git([*base, "--work-tree", str(dest), "read-tree", ref], "Checking out the commit")


@dataclass(frozen=True)
class SubmoduleLink:
    """A submodule the commit pins: where it goes, which commit, and the URL .gitmodules gives it."""

    path: str
    commit: str
    url: str | None


async def _submodule_links(mirror: Path, ref: str) -> list[SubmoduleLink]:
    """The commit's gitlinks with their URLs from its ``.gitmodules`` (read from the mirror, not the checkout)."""
    listing = await _run_git(["--git-dir", str(mirror), "ls-tree", "-r", "-z", ref], "Listing submodules")
    links = []
    for entry in listing.split("\0"):
        meta, _, path = entry.partition("\t")
        fields = meta.split()
        if len(fields) == 3 and fields[0] == "160000" and fields[1] == "commit":
            links.append((path, fields[2]))
    if not links:
        return []
    try:
        config = await _run_git(["--git-dir", str(mirror), "config", "-z", "--blob", f"{ref}:.gitmodules",
                                 "--get-regexp", r"^submodule\..*\.(path|url)$"], "Reading .gitmodules")
    except CheckoutRefused:
        config = ""
    names: dict[str, dict[str, str]] = {}
    for item in config.split("\0"):
        key, _, value = item.partition("\n")
        if key.startswith("submodule.") and "." in key[len("submodule."):]:
            name, _, field_name = key[len("submodule."):].rpartition(".")
            names.setdefault(name, {})[field_name] = value
    urls = {entry["path"]: entry.get("url") for entry in names.values() if "path" in entry}
    return [SubmoduleLink(path, commit, urls.get(path)) for path, commit in links]


def _submodule_url(url: str, repo_url: str) -> str:
    """A submodule URL as git reads it: ``./`` and ``../`` are relative to the superproject's URL."""
    if not url.startswith(("./", "../")):
        return url
    base = repo_url.rstrip("/").removesuffix(".git") if url.startswith("../") else repo_url.rstrip("/")
    parts = base.split("/")
    for piece in url.split("/"):
        if piece == "..":
            if len(parts) <= 3:  # never above the host
                raise FetchFailed(f"The submodule URL {url!r} leads above its host.", "unsafe_repository")
            parts.pop()
        elif piece not in (".", ""):
            parts.append(piece)
    return "/".join(parts)


async def _submodules(links: list[SubmoduleLink], repo_url: str, dest: Path, on_line: LineSink, cache_dir: Path,
                      policy: FetchPolicy, depth: int, budget: _Budget) -> None:
    """Each submodule checked out where its gitlink is, recursively, by ``fetch`` itself (same URL rules),
    within one budget for the repository and all its submodules: fetches, time, files and history."""
    if depth >= MAX_SUBMODULE_DEPTH:
        raise FetchFailed(f"Submodules nest more than {MAX_SUBMODULE_DEPTH} deep; this Binder fetches up to that.",
                          "unsafe_repository")
    root = os.path.realpath(dest)
    loop = asyncio.get_running_loop()
    for link in links:
        if link.url is None:
            raise FetchFailed(f"The submodule at {link.path} has no URL in .gitmodules.", "fetch_failed")
        if budget.fetches <= 0:
            raise FetchFailed(f"The repository has more than {MAX_SUBMODULES} submodules in all; this Binder fetches "
                              "up to that many.", "repo_too_large")
        left = budget.deadline - loop.time()
        if left <= 0:
            raise FetchFailed("Fetching the repository's submodules took too long.", "fetch_failed")
        target = dest / link.path
        name = PurePosixPath(link.path)
        if name.is_absolute() or ".." in name.parts or not _inside(root, os.path.realpath(target.parent)) \
                or os.path.lexists(target) and any(os.scandir(target)):
            raise FetchFailed(f"The submodule at {link.path} would not land inside the repository.", "unsafe_repository")
        url = _submodule_url(link.url, repo_url)
        shown = "".join(c if c.isprintable() else "?" for c in redact(url))  # not yet checked: no forged log lines
        await on_line(f"Submodule {link.path}: {shown} at {link.commit[:12]}\n")
        if os.path.lexists(target):
            os.rmdir(target)
        budget.fetches -= 1
        await fetch(url, link.commit, target, on_line, policy.max_bytes, cache_dir, left, policy, depth + 1, budget)
        await _check_sizes(budget.root, policy)


async def _check_sizes(root: Path, policy: FetchPolicy) -> None:
    """The checkout with its submodules so far: files within ``max_bytes``, histories within ``max_fetch_bytes``."""
    files, histories = await asyncio.to_thread(_checkout_sizes, root)
    if policy.max_bytes and files > policy.max_bytes:
        raise CheckoutRefused(f"The repository with its submodules is larger than {_amount(policy.max_bytes)} checked "
                              "out; this Binder builds repositories up to that size.", "repo_too_large")
    if policy.max_fetch_bytes and histories > policy.max_fetch_bytes:
        raise CheckoutRefused(f"The repository's and its submodules' histories are larger than "
                              f"{_amount(policy.max_fetch_bytes)}; this Binder fetches up to that.", "repo_too_large")


class Fetcher(Protocol):
    """Where the builder gets a repository's files from: git here, a fake in tests."""

    async def fetch(self, repo_url: str, ref: str, dest: Path, on_line: LineSink, content: str = "git") -> None:
        """Check out ``ref`` of ``repo_url`` into ``dest``, telling ``on_line`` how it goes; FetchFailed if not.

        ``content`` says what ``repo_url`` is: ``git``, or a data repository's kind (``datafetch``).
        """
        ...


class GitFetcher:
    """``Fetcher`` with git (``fetch`` above), under ``policy``, mirrors kept in ``cache_dir``."""

    def __init__(self, policy: FetchPolicy, cache_dir: Path, credentials: CredentialSource | None = None) -> None:
        self._policy = policy
        self._cache_dir = cache_dir
        self._credentials = credentials

    async def fetch(self, repo_url: str, ref: str, dest: Path, on_line: LineSink, content: str = "git") -> None:
        if content != "git":
            raise FetchFailed(f"{content!r} content is not a git repository.", "fetch_failed")
        try:
            credential = await self._credentials(repo_url) if self._credentials else None
        except GitHubAppError as exc:
            raise FetchFailed(f"{exc} The repository cannot be fetched.", "fetch_failed") from None
        await fetch(repo_url, ref, dest, on_line, self._policy.max_bytes, self._cache_dir, policy=self._policy,
                    credential=credential)
