"""Figshare: a DOI such as ``10.6084/m9.figshare.9782777.v1``, resolved to an article version.

As BinderHub: the DOI must resolve (doi.org), the version is the DOI's ``.vN`` or, when it has none,
the article's latest (from the API's version list); the image is ``figshare-<id>.v<N>``. The builder
reads ``<api>/articles/<id>/versions/<N>`` and downloads its files, as repo2docker does.
"""

from __future__ import annotations

import re

from kiln_resolver.providers.base import Resolution, ResolveError
from kiln_resolver.providers.datahttp import api_json, normalize_doi, under
from kiln_resolver.providers.doi import DoiResolver
from kilnbus.guardedhttp import GuardedHTTP

# A landing page: /articles/[<type>/]<title>/<id>[/<version>] (repo2docker's reading of it).
_LANDING = re.compile(r"^/articles/(?:[^/]+/)?[^/]+/(\d+)(?:/(\d+))?/?$")


def article_in_doi(doi: str) -> tuple[str, str | None] | None:
    """(article id, version or None) from a Figshare DOI's last fields, as BinderHub reads them."""
    fields = doi.partition("/")[2].split(".")
    if len(fields) >= 3 and "figshare" in fields:
        version = fields[-1][1:] if re.fullmatch(r"v\d+", fields[-1]) else None
        article = fields[-2] if version else fields[-1]
        if article.isdigit():
            return article, version
    return None


class FigshareProvider:
    name = "figshare"
    content = "figshare"

    def __init__(self, http: GuardedHTTP, doi: DoiResolver, web_url: str, api_url: str) -> None:
        self._http = http
        self._doi = doi
        self._web = web_url.rstrip("/")
        self._api = api_url.rstrip("/")

    def claims(self, landing: str) -> bool:
        """Whether ``landing`` (where a DOI leads) is an article page of this Figshare."""
        path = under(landing, self._web)
        return path is not None and bool(_LANDING.match(path))

    async def resolve(self, spec: str) -> Resolution:
        if article_in_doi(normalize_doi(spec)) is None:
            raise ResolveError(f"{spec!r} is not a Figshare DOI (such as 10.6084/m9.figshare.9782777.v1).", "bad_spec", 400)
        return await self.from_landing(spec, await self._doi.landing(spec))

    async def from_landing(self, spec: str, landing: str) -> Resolution:
        """The article version the DOI ``spec`` names (or, failing that, its landing page), checked with the API."""
        doi = normalize_doi(spec)
        found = article_in_doi(doi)
        if found is None and (m := _LANDING.match(under(landing, self._web) or "")):
            found = m.group(1), m.group(2)
        if found is None:
            raise ResolveError(f"DOI {doi} leads to {landing}, which names no Figshare article.", "repo_not_found", 404)
        article, version = found
        status, versions = await api_json(self._http, f"{self._api}/articles/{article}/versions", "Figshare")
        if status == 404:
            raise ResolveError(f"Figshare article {article} (DOI {doi}) not found, or not public.", "repo_not_found", 404)
        if status != 200 or not isinstance(versions, list):
            raise ResolveError(f"Figshare answered {status} for article {article}.", "provider_unreachable", 503)
        numbers = sorted(v["version"] for v in versions if isinstance(v, dict) and isinstance(v.get("version"), int))
        if not numbers:
            raise ResolveError(f"Figshare article {article} has no versions.", "ref_not_found", 404)
        if version is None:
            version = str(numbers[-1])  # no version in the DOI: the latest
        elif int(version) not in numbers:
            raise ResolveError(f"Figshare article {article} has no version {version}.", "ref_not_found", 404)
        ref = f"{article}.v{version}"
        resolved = doi.split("figshare")[0] + "figshare." + ref if "figshare" in doi else doi
        return Resolution(provider=self.name, spec=spec, repo_url=f"{self._api}/articles/{article}/versions/{version}",
                          ref=ref, ref_url=self._doi.link(resolved), resolved_spec=resolved, build_slug=f"figshare-{ref}",
                          content=self.content)
