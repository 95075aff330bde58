"""DOIs to landing pages: ``<resolver>/<doi>`` redirects (doi.org's proxy), followed through the URL guard."""

from __future__ import annotations

import re
from urllib.parse import quote

import httpx

from kiln_resolver.providers.base import ResolveError
from kiln_resolver.providers.datahttp import normalize_doi, under
from kilnbus.guardedhttp import GuardedHTTP
from kilnbus.urlguard import UnsafeRepoURL

_DOI = re.compile(r"^10\.\d+/\S+$")


class DoiResolver:
    """Where a DOI leads, as BinderHub finds it: the URL after following every redirect from the resolver."""

    def __init__(self, http: GuardedHTTP, resolver_url: str) -> None:
        self._http = http
        self.url = resolver_url.rstrip("/")

    def link(self, doi: str) -> str:
        """A page a person can open for ``doi``."""
        return f"{self.url}/{doi}"

    async def landing(self, spec: str) -> str:
        """The landing URL of the DOI ``spec``; ResolveError when it is not a DOI or the resolver knows none such."""
        doi = normalize_doi(spec)
        if not _DOI.match(doi):
            raise ResolveError(f"{spec!r} is not a DOI (10.<prefix>/<suffix>).", "bad_spec", 400)
        try:
            async with self._http.get(f"{self.url}/{quote(doi, safe='/:;()._-')}") as answer:
                status, final = answer.response.status_code, answer.url
        except UnsafeRepoURL as exc:
            raise ResolveError(f"DOI {doi} leads somewhere Kiln does not fetch from: {exc}", exc.cause, exc.status) from None
        except httpx.HTTPError as exc:
            raise ResolveError(f"The DOI resolver could not be reached: {type(exc).__name__}", "provider_unreachable",
                               503) from None
        if under(final, self.url) is not None:  # never redirected: the resolver has no such DOI
            if status == 404:
                raise ResolveError(f"DOI {doi} not found.", "repo_not_found", 404)
            raise ResolveError(f"The DOI resolver answered {status} for {doi}.", "provider_unreachable", 503)
        return final
