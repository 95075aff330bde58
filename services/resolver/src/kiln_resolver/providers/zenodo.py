"""Zenodo (or another InvenioRDM installation): a DOI, resolved to the record it leads to.

As BinderHub: the DOI's redirect names the record (a concept DOI leads to the latest version), the
image is named ``zenodo-<record>`` and tagged with the record id, and the resolved spec is the DOI
of that version. The builder fetches ``<base>/api/records/<id>`` and its files, as repo2docker does.
"""

from __future__ import annotations

from kiln_resolver.providers.base import Resolution, ResolveError
from kiln_resolver.providers.datahttp import api_json, normalize_doi, under
from kiln_resolver.providers.doi import DoiResolver
from kilnbus.guardedhttp import GuardedHTTP


class ZenodoProvider:
    name = "zenodo"
    content = "zenodo"

    def __init__(self, http: GuardedHTTP, doi: DoiResolver, base_url: str) -> None:
        self._http = http
        self._doi = doi
        self._base = base_url.rstrip("/")

    def claims(self, landing: str) -> bool:
        """Whether ``landing`` (where a DOI leads) is a record of this installation."""
        path = under(landing, self._base)
        return path is not None and path.startswith(("/record/", "/records/", "/doi/"))

    async def resolve(self, spec: str) -> Resolution:
        return await self.from_landing(spec, await self._doi.landing(spec))

    async def from_landing(self, spec: str, landing: str) -> Resolution:
        """The record ``landing`` (where the DOI ``spec`` leads) names, checked with Zenodo's API."""
        doi = normalize_doi(spec)
        if not self.claims(landing):
            raise ResolveError(f"DOI {doi} is not a record on {self._base} (it leads to {landing}).", "repo_not_found", 404)
        record = landing.split("?", 1)[0].rstrip("/").rsplit("/", 1)[1].removeprefix("zenodo.")
        if not record.isdigit():
            raise ResolveError(f"DOI {doi} leads to {landing}, which names no Zenodo record.", "repo_not_found", 404)
        api = f"{self._base}/api/records/{record}"
        status, _ = await api_json(self._http, api, "Zenodo")
        if status in (404, 410):
            raise ResolveError(f"Zenodo record {record} (DOI {doi}) not found, or not public.", "repo_not_found", 404)
        if status != 200:
            raise ResolveError(f"Zenodo answered {status} for record {record}.", "provider_unreachable", 503)
        # BinderHub's form: the DOI with the version's record id in place of the one asked for.
        resolved = doi.split("zenodo")[0] + "zenodo." + record if "zenodo" in doi else doi
        ref_url = self._doi.link(resolved) if "zenodo" in doi else f"{self._base}/records/{record}"
        return Resolution(provider=self.name, spec=spec, repo_url=api, ref=record, ref_url=ref_url,
                          resolved_spec=resolved, build_slug=f"zenodo-{record}", content=self.content)
