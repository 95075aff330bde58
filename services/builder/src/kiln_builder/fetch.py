"""Fetching a repository at an exact commit with git, streaming git's own words as it goes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shlex
import shutil
from pathlib import Path

from kiln_builder.executor import BuildFailed, LineSink

_PROGRESS = re.compile(r"\d+% \(\d+/\d+\)")
_ENV = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/true", "GIT_SSH_COMMAND": "ssh -o BatchMode=yes"}


async def _git(args: list[str], cwd: Path | None, on_line: LineSink, timeout: float) -> tuple[int, list[str]]:
    proc = await asyncio.create_subprocess_exec("git", *args, cwd=cwd, env=_ENV, stdout=asyncio.subprocess.PIPE,
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
            for raw in done:
                line = raw.decode(errors="replace").strip()
                if _PROGRESS.search(line) and not line.endswith("done."):
                    continue  # git redraws these many times a second; the finished line says it all
                if line:
                    lines.append(line)
                    await on_line(line + "\n")

    try:
        await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        proc.kill()
        raise BuildFailed(f"Fetching the repository took longer than {timeout:.0f} seconds.", "fetch_failed") from None
    return await proc.wait(), lines


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


_locks: dict[str, asyncio.Lock] = {}


async def _has_commit(mirror: Path, ref: str) -> bool:
    proc = await asyncio.create_subprocess_exec("git", "--git-dir", str(mirror), "cat-file", "-e", f"{ref}^{{commit}}",
                                                env=_ENV, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    return await proc.wait() == 0


async def fetch(repo_url: str, ref: str, dest: Path, on_line: LineSink, max_bytes: int, cache_dir: Path,
                timeout: float = 600) -> None:
    """Check out ``ref`` of ``repo_url`` into ``dest``; refuse repositories over ``max_bytes``.

    Each repository is kept as a bare mirror under ``cache_dir``: a new commit costs an incremental
    fetch instead of a clone, and a commit already there (a rebuild) costs no network at all.
    """
    if dest.exists():
        shutil.rmtree(dest)
    mirror = cache_dir / (hashlib.sha256(repo_url.encode()).hexdigest()[:20] + ".git")
    await on_line(f"Picked Git content provider.\nFetching {repo_url} at {ref}\n")
    async with _locks.setdefault(repo_url, asyncio.Lock()):  # one git process per mirror at a time
        if not (mirror / "HEAD").exists():
            shutil.rmtree(mirror, ignore_errors=True)
            cache_dir.mkdir(parents=True, exist_ok=True)
            code, lines = await _git(["clone", "--bare", "--progress", "--", repo_url, str(mirror)], None, on_line, timeout)
            if code != 0:
                shutil.rmtree(mirror, ignore_errors=True)
                raise BuildFailed(f"Could not clone {repo_url}: {lines[-1] if lines else 'git failed'}", "fetch_failed")
        elif not await _has_commit(mirror, ref):
            code, lines = await _git(["--git-dir", str(mirror), "fetch", "--progress", "--prune", "origin",
                                      "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"], None, on_line, timeout)
            if code != 0:
                raise BuildFailed(f"Could not fetch {repo_url}: {lines[-1] if lines else 'git failed'}", "fetch_failed")
        else:
            await on_line(f"{ref[:12]} is already here; nothing to fetch\n")
        if not await _has_commit(mirror, ref):
            raise BuildFailed(f"Commit {ref} is not in {repo_url}.", "fetch_failed")
        dest.mkdir(parents=True)
        archive = await asyncio.create_subprocess_shell(
            f"git --git-dir {shlex.quote(str(mirror))} archive --format=tar {shlex.quote(ref)} | tar -x -C {shlex.quote(str(dest))}",
            env=_ENV, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await archive.communicate()
        if archive.returncode != 0:
            raise BuildFailed(f"Could not check out {ref}: {err.decode(errors='replace').strip()}", "fetch_failed")
    size = await asyncio.to_thread(_size, dest)
    if max_bytes and size > max_bytes:
        raise BuildFailed(f"The repository is {size / 2**20:.0f} MiB; this Binder builds repositories up to "
                          f"{max_bytes / 2**20:.0f} MiB.", "repo_too_large")
