"""Fetching a repository at an exact commit with git, streaming git's own words as it goes."""

from __future__ import annotations

import asyncio
import os
import re
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


async def fetch(repo_url: str, ref: str, dest: Path, on_line: LineSink, max_bytes: int, timeout: float = 600) -> None:
    """Clone ``repo_url`` into ``dest`` and check out ``ref``; refuse repositories over ``max_bytes``."""
    if dest.exists():
        shutil.rmtree(dest)
    await on_line(f"Picked Git content provider.\nCloning {repo_url} at {ref}\n")
    code, lines = await _git(["clone", "--progress", "--no-checkout", "--", repo_url, str(dest)],
                             None, on_line, timeout)
    if code != 0:
        raise BuildFailed(f"Could not clone {repo_url}: {lines[-1] if lines else 'git failed'}", "fetch_failed")
    code, lines = await _git(["checkout", "--quiet", ref], dest, on_line, timeout)
    if code != 0:
        raise BuildFailed(f"Commit {ref} is not in {repo_url}: {lines[-1] if lines else ''}", "fetch_failed")
    size = await asyncio.to_thread(_size, dest)
    if max_bytes and size > max_bytes:
        raise BuildFailed(f"The repository is {size / 2**20:.0f} MiB; this Binder builds repositories up to "
                          f"{max_bytes / 2**20:.0f} MiB.", "repo_too_large")
