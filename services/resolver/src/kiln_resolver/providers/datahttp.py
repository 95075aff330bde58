"""What the data-repository providers share: JSON from an API through the URL guard, errors as ResolveError."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx

from kiln_resolver.providers.base import ResolveError
from kilnbus.guardedhttp import GuardedHTTP
from kilnbus.urlguard import UnsafeRepoURL


async def api_json(http: GuardedHTTP, url: str, what: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """GET ``url`` (an API call to ``what``): (status, JSON body); unreachable, 5xx and 429 become ResolveError."""
    try:
        status, body, _ = await http.get_json(url, headers=headers)
    except UnsafeRepoURL as exc:
        if exc.cause == "provider_unreachable":  # the API's own name does not resolve: Kiln's network, not the spec
            raise ResolveError(f"{what} could not be reached: {exc}", "provider_unreachable", 503) from None
        raise ResolveError(str(exc), exc.cause, exc.status) from None
    except httpx.HTTPError as exc:
        raise ResolveError(f"{what} could not be reached: {type(exc).__name__}", "provider_unreachable", 503) from None
    if status == 429:
        raise ResolveError(f"{what} is limiting Kiln's requests; try again shortly.", "provider_rate_limited", 503)
    if status >= 500:
        raise ResolveError(f"{what} answered {status}; try again shortly.", "provider_unreachable", 503)
    if status == 200 and not isinstance(body, dict | list):
        raise ResolveError(f"{what} answered something that is not JSON.", "provider_unreachable", 502)
    return status, body


def under(url: str, base: str) -> str | None:
    """The path of ``url`` below ``base`` (same scheme-less host, path prefix), or None when it is not under it."""
    u, b = urlsplit(url), urlsplit(base)
    if (u.hostname or "").lower() != (b.hostname or "").lower() or (u.port or 0) != (b.port or 0):
        return None
    prefix = b.path.rstrip("/")
    if u.path != prefix and not u.path.startswith(prefix + "/"):
        return None
    return u.path[len(prefix):]


def normalize_doi(spec: str) -> str:
    """A DOI as ``10.<prefix>/<suffix>``: ``doi:`` and doi.org URL forms stripped."""
    doi = spec.strip()
    for lead in ("doi:", "https://doi.org/", "http://doi.org/", "https://dx.doi.org/", "http://dx.doi.org/"):
        if doi.lower().startswith(lead):
            doi = doi[len(lead):]
    return doi
