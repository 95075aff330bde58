"""Git LFS: a checkout's large files fetched from the repository's LFS server, as ``git lfs pull`` would.

Kiln speaks the LFS batch API itself rather than running git-lfs: the server's answer names a URL
for each object, anywhere it likes, and git-lfs would fetch it from the builder's network position.
Here the batch request and every download go through ``kilnbus.guardedhttp`` (the URL guard on each
hop, connections pinned to the checked address), each object is checked against its pointer (size
and SHA-256) before it replaces the pointer, and the files' declared sizes count against the
checkout's size limit before a byte is downloaded. Objects are kept in the builder's cache by their
hash, so a rebuild downloads nothing. The image keeps the pointers in git's index, and git-lfs in
the base image makes ``git status`` see the files as unchanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from kiln_builder.errors import FetchFailed
from kiln_builder.executor import LineSink
from kilnbus.credentials import GitCredential
from kilnbus.guardedhttp import GuardedHTTP
from kilnbus.urlguard import UnsafeRepoURL, redact

MAX_POINTER_BYTES = 1024  # git-lfs's own bound: a larger file is never a pointer
MAX_OBJECTS = 10_000  # LFS files in one checkout
BATCH = 100  # objects per batch request (git-lfs sends 100 too)
_POINTER = re.compile(rb"version https://git-lfs\.github\.com/spec/v1\n"
                      rb"oid sha256:([0-9a-f]{64})\nsize (0|[1-9][0-9]{0,14})\n")
_MEDIA = "application/vnd.git-lfs+json"


@dataclass
class LFSObject:
    """One object: its hash, size, and the checkout's files (paths relative to it) that point at it."""

    oid: str
    size: int
    paths: list[str] = field(default_factory=list)


def uses_lfs(root: Path) -> bool:
    """Whether any ``.gitattributes`` of the checkout routes files through the LFS filter."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        if ".gitattributes" in filenames:
            path = Path(dirpath, ".gitattributes")
            if path.is_file() and not path.is_symlink() and b"filter=lfs" in path.read_bytes()[:2**20]:
                return True
    return False


def find_pointers(root: Path) -> list[LFSObject]:
    """The LFS pointer files of the checkout (regular files only, ``.git`` left out), by object."""
    found: dict[str, LFSObject] = {}
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            path = Path(dirpath, name)
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_POINTER_BYTES:
                continue
            m = _POINTER.fullmatch(path.read_bytes())
            if m is None:
                continue
            count += 1
            if count > MAX_OBJECTS:
                raise FetchFailed(f"The repository has more than {MAX_OBJECTS} Git LFS files.", "repo_too_large")
            oid = m.group(1).decode()
            found.setdefault(oid, LFSObject(oid, int(m.group(2)))).paths.append(path.relative_to(root).as_posix())
    return list(found.values())


def endpoint(repo_url: str) -> str:
    """The LFS server of a repository, as git-lfs derives it from the remote's URL."""
    url = repo_url.rstrip("/")
    return f"{url}/info/lfs" if url.endswith(".git") else f"{url}.git/info/lfs"


def _download_action(answer: object, obj: LFSObject) -> tuple[str, dict[str, str]]:
    """The href and headers the batch answer gives for ``obj``; FetchFailed (naming a file) when it gives none."""
    objects = answer.get("objects") if isinstance(answer, dict) else None
    entry = next((o for o in objects or [] if isinstance(o, dict) and o.get("oid") == obj.oid), None)
    if entry is None:
        raise FetchFailed(f"The Git LFS server did not answer for {obj.paths[0]}.", "fetch_failed")
    error = entry.get("error")
    if isinstance(error, dict):
        # The server's words, shortened and on one line: a hostile server writes them.
        said = " ".join(str(error.get("message", ""))[:200].split())
        raise FetchFailed(f"The Git LFS server cannot give {obj.paths[0]}: {said or 'error ' + str(error.get('code'))}.",
                          "fetch_failed")
    download = (entry.get("actions") or {}).get("download") if isinstance(entry.get("actions"), dict) else None
    if not isinstance(download, dict) or not isinstance(download.get("href"), str):
        raise FetchFailed(f"The Git LFS server gave no download for {obj.paths[0]}.", "fetch_failed")
    raw = download.get("header") or {}
    headers = {str(k)[:100]: str(v)[:4096] for k, v in list(raw.items())[:20]} if isinstance(raw, dict) else {}
    headers = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length", "transfer-encoding")}
    return download["href"], headers


async def _download(http: GuardedHTTP, href: str, headers: dict[str, str], obj: LFSObject, target: Path) -> None:
    """``obj`` into ``target`` (a new file), checked against its size and hash as it streams."""
    digest, got = hashlib.sha256(), 0
    async with http.get(href, headers) as answer:
        if answer.response.status_code != 200:
            raise FetchFailed(f"Downloading {obj.paths[0]} from Git LFS failed: the server answered "
                              f"{answer.response.status_code}.", "fetch_failed")
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as out:
            async for chunk in answer.response.aiter_bytes(1 << 16):
                got += len(chunk)
                if got > obj.size:
                    break
                digest.update(chunk)
                out.write(chunk)
    if got != obj.size or digest.hexdigest() != obj.oid:
        raise FetchFailed(f"Git LFS gave {obj.paths[0]} content that does not match its pointer (size or SHA-256).",
                          "fetch_failed")


def _place(source: Path, root: Path, obj: LFSObject) -> None:
    """Put ``source``'s content at each of ``obj``'s paths, keeping each pointer file's mode."""
    for rel in obj.paths:
        path = root / rel
        mode = stat.S_IMODE(path.lstat().st_mode)
        temp = path.with_name(f".{path.name}.kiln-lfs-{uuid.uuid4().hex[:8]}")
        shutil.copyfile(source, temp, follow_symlinks=False)
        os.chmod(temp, mode)
        os.replace(temp, path)


def _files_size(root: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        total += sum(Path(dirpath, n).lstat().st_size for n in filenames)
    return total


async def fetch_lfs(root: Path, repo_url: str, on_line: LineSink, cache_dir: Path, max_bytes: int,
                    allowed_schemes: list[str], allowed_private_hosts: list[str], timeout: float,
                    credential: GitCredential | None = None) -> None:
    """Replace the checkout's LFS pointers under ``root`` with their files, the checkout staying within
    ``max_bytes`` (0: no limit). ``credential`` (a private repository's) goes with the batch request
    when it covers the LFS server; downloads carry only the headers the batch answer gives."""
    if not await asyncio.to_thread(uses_lfs, root):
        return
    objects = await asyncio.to_thread(find_pointers, root)
    if not objects:
        return
    total = sum(o.size * len(o.paths) for o in objects)
    if max_bytes and await asyncio.to_thread(_files_size, root) + total > max_bytes:
        raise FetchFailed(f"The repository's Git LFS files come to {total / 2**20:.0f} MiB, more than this Binder "
                          f"builds with the rest of the checkout ({max_bytes / 2**20:.0f} MiB).", "repo_too_large")
    server = endpoint(repo_url)
    # Kept per LFS server: an object is only ever handed to a repository whose server gave it out,
    # so knowing a hash is not enough to get another repository's file.
    store = cache_dir / "lfs-objects" / hashlib.sha256(server.encode()).hexdigest()[:20]
    store.mkdir(parents=True, exist_ok=True)
    missing = [o for o in objects if not (store / o.oid).is_file()]
    await on_line(f"Git LFS: {sum(len(o.paths) for o in objects)} file(s), {total / 2**20:.1f} MiB"
                  + (f"; fetching {len(missing)} from {redact(server)}\n" if missing else ", all already here\n"))
    auth = {"Authorization": credential.basic()} if credential and credential.covers(server) else {}
    http = GuardedHTTP([s for s in allowed_schemes if s in ("https", "http")], allowed_private_hosts, timeout,
                       user_agent="git-lfs/3 (Kiln)")
    try:
        async with asyncio.timeout(timeout):
            for start in range(0, len(missing), BATCH):
                batch = missing[start:start + BATCH]
                status, answer = await http.post_json(
                    f"{server}/objects/batch",
                    {"operation": "download", "transfers": ["basic"],
                     "objects": [{"oid": o.oid, "size": o.size} for o in batch]},
                    {"Accept": _MEDIA, "Content-Type": _MEDIA, **auth})
                if status != 200:
                    raise FetchFailed(f"The Git LFS server at {redact(server)} answered {status} to the batch request.",
                                      "fetch_failed")
                for obj in batch:
                    href, headers = _download_action(answer, obj)
                    part = store / f".{obj.oid}.{uuid.uuid4().hex[:8]}"
                    try:
                        await _download(http, href, headers, obj, part)
                        os.replace(part, store / obj.oid)
                    finally:
                        part.unlink(missing_ok=True)
    except TimeoutError:
        raise FetchFailed(f"Fetching the Git LFS files took longer than {timeout:.0f} seconds.", "fetch_failed") from None
    except UnsafeRepoURL as exc:
        raise FetchFailed(f"Git LFS: {exc}", exc.cause) from None
    except httpx.HTTPError as exc:
        raise FetchFailed(f"The Git LFS files could not be downloaded ({type(exc).__name__}).", "fetch_failed") from None
    finally:
        await http.aclose()
    for obj in objects:
        await asyncio.to_thread(_place, store / obj.oid, root, obj)
