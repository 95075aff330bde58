"""Refusing git URLs that point into private networks or carry credentials, so Kiln cannot be used
to probe internal networks nor store someone's token in its logs.

The rule itself is ``kilnbus.urlguard``, shared with the builder (which checks again before it
fetches); this module turns its refusals into the resolver's ``ResolveError``.
"""

from __future__ import annotations

from urllib.parse import SplitResult

from kiln_resolver.providers.base import ResolveError
from kilnbus.urlguard import UnsafeRepoURL, check_public_host, parse_repo_url


async def check_public(host: str, allowed: list[str]) -> None:
    """Raise unless every address ``host`` resolves to is public, or the host is explicitly allowed."""
    try:
        await check_public_host(host, allowed)
    except UnsafeRepoURL as exc:
        raise ResolveError(str(exc), exc.cause, exc.status) from None


def check_shape(url: str, allowed_schemes: list[str]) -> SplitResult:
    """Raise unless ``url`` has an allowed scheme, a host, and no credentials or remote helper."""
    try:
        return parse_repo_url(url, allowed_schemes)
    except UnsafeRepoURL as exc:
        raise ResolveError(str(exc), exc.cause, exc.status) from None
