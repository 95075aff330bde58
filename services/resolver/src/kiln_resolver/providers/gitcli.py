"""``git ls-remote``, run without ever prompting, with failures turned into user-facing errors."""

from __future__ import annotations

import asyncio

from kiln_resolver.providers.base import ResolveError
from kilnbus.urlguard import git_env, git_safety_args

_ENV = git_env()


async def ls_remote(url: str, ref: str, timeout: float, auth: dict[str, str] | None = None) -> str | None:
    """The commit ``ref`` names in the repository at ``url``, or None when it names none; ``auth`` is
    environment giving git a credential (``kilnbus.credentials.git_auth_env``)."""
    proc = await asyncio.create_subprocess_exec(
        # No redirects (they could lead to a host the netguard never checked), no odd transports.
        "git", *git_safety_args(["https", "http", "git", "ssh"]), "ls-remote", "--", url, ref, f"{ref}^{{}}", env=_ENV | (auth or {}),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ResolveError(f"The git server at {url} did not answer within {timeout:.0f} seconds.", "provider_unreachable", 504) from None
    if proc.returncode != 0:
        text = err.decode(errors="replace").strip()
        lowered = text.lower()
        if "not found" in lowered or "404" in lowered or "does not appear to be a git repository" in lowered \
                or "authentication failed" in lowered or "could not read username" in lowered:
            raise ResolveError(f"Repository {url} not found (or not public).", "repo_not_found", 404)
        raise ResolveError(f"Could not reach the git server for {url}: {text.splitlines()[-1] if text else 'git failed'}",
                           "provider_unreachable", 503)
    found = {}
    for line in out.decode().splitlines():
        sha, _, name = line.partition("\t")
        found[name.strip()] = sha.strip()
    # An annotated tag lists the tag object and, as ^{}, the commit it points at: take the commit.
    for name in (ref, f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}"):
        if name in found:
            return found[name]
    return next(iter(found.values()), None)
