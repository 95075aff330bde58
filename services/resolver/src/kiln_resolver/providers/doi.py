"""DOIs to landing pages (``<resolver>/<doi>`` redirects, as doi.org's proxy, followed through the URL guard),
and the ``doi`` provider: a DOI launched from whichever data repository serves it."""

from __future__ import annotations

import re
from typing import Protocol
from urllib.parse import quote

import httpx

from kiln_resolver.providers.base import Resolution, ResolveError
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
            if exc.cause == "provider_unreachable":  # doi.org's name, or a hop's, does not resolve: try again later
                raise ResolveError(f"DOI {doi} could not be followed, a host could not be reached: {exc}",
                                   "provider_unreachable", 503) from None
            raise ResolveError(f"DOI {doi} leads somewhere Kiln does not fetch from: {exc}", exc.cause, exc.status) from None
        except httpx.HTTPError as exc:
            raise ResolveError(f"The DOI resolver could not be reached: {type(exc).__name__}", "provider_unreachable",
                               503) from None
        if under(final, self.url) is not None:  # never redirected: the resolver has no such DOI
            if status == 404:
                raise ResolveError(f"DOI {doi} not found.", "repo_not_found", 404)
            raise ResolveError(f"The DOI resolver answered {status} for {doi}.", "provider_unreachable", 503)
        return final


class LandingProvider(Protocol):
    """A data repository that can say whether a DOI's landing page is one of its records, and resolve it."""

    name: str

    def claims(self, landing: str) -> bool: ...

    async def from_landing(self, spec: str, landing: str) -> Resolution: ...


class DoiProvider:
    """``doi``: any DOI, resolved by whichever data repository its landing page is on.

    The DOI is looked up once; the provider that claims where it leads resolves it as its own spec
    would be, so a record gets the same image whichever way it was launched.
    """

    name = "doi"

    def __init__(self, doi: DoiResolver, providers: list[LandingProvider]) -> None:
        self._doi = doi
        self._providers = providers

    async def resolve(self, spec: str) -> Resolution:
        landing = await self._doi.landing(spec)
        for provider in self._providers:
            if provider.claims(landing):
                return await provider.from_landing(spec, landing)
        names = ", ".join(p.name for p in self._providers)
        raise ResolveError(f"DOI {normalize_doi(spec)} leads to {landing}, which is not on a data repository this Binder "
                           f"launches from ({names}).", "repo_not_found", 404)
