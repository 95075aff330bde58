"""Dataverse: a dataset's DOI, on any of the installations the operator lists (they are many).

As BinderHub: the DOI leads to an installation, whose API names the dataset's latest published
version; the image is ``dataverse-<escaped identifier>`` tagged ``<id>.v<major>.<minor>``. A file's
DOI stands for the dataset holding it (as repo2docker reads one). The builder reads that exact
version's file list and downloads each file in its original format.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from kiln_resolver.images import escape
from kiln_resolver.providers.base import Resolution, ResolveError
from kiln_resolver.providers.datahttp import api_json, normalize_doi, under
from kiln_resolver.providers.doi import DoiResolver
from kilnbus.guardedhttp import GuardedHTTP


class DataverseProvider:
    name = "dataverse"
    content = "dataverse"

    def __init__(self, http: GuardedHTTP, doi: DoiResolver, installations: list[str]) -> None:
        self._http = http
        self._doi = doi
        self._installations = [url.rstrip("/") for url in installations]

    def _installation(self, landing: str) -> str | None:
        return next((base for base in self._installations if under(landing, base) is not None), None)

    def claims(self, landing: str) -> bool:
        """Whether ``landing`` (where a DOI leads) is on one of the listed installations."""
        return self._installation(landing) is not None

    async def resolve(self, spec: str) -> Resolution:
        return await self.from_landing(spec, await self._doi.landing(spec))

    async def _dataset(self, base: str, pid: str) -> tuple[int, Any]:
        return await api_json(self._http, f"{base}/api/datasets/:persistentId?persistentId={quote(pid, safe=':/')}",
                              "Dataverse")

    async def from_landing(self, spec: str, landing: str) -> Resolution:
        """The latest published version of the dataset the DOI ``spec`` names (or holds the file it names)."""
        doi = normalize_doi(spec)
        base = self._installation(landing)
        if base is None:
            raise ResolveError(f"DOI {doi} leads to {landing}, which is not a Dataverse installation this Binder knows.",
                               "repo_not_found", 404)
        pid = f"doi:{doi}"
        status, body = await self._dataset(base, pid)
        if status == 404:  # perhaps a file's DOI: its dataset, then
            status, body = await api_json(self._http, f"{base}/api/files/:persistentId?persistentId="
                                          f"{quote(pid, safe=':/')}&returnDatasetVersion=true", "Dataverse")
            parent = body.get("data", {}).get("datasetVersion", {}).get("datasetPersistentId") \
                if status == 200 and isinstance(body, dict) else None
            if not isinstance(parent, str):
                raise ResolveError(f"Dataverse dataset {doi} not found on {base}, or not public.", "repo_not_found", 404)
            pid = parent
            status, body = await self._dataset(base, pid)
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("data"), dict):
            raise ResolveError(f"Dataverse at {base} answered {status} for {pid}.", "provider_unreachable", 503)
        data = body["data"]
        latest = data.get("latestVersion") or {}
        major, minor = latest.get("versionNumber"), latest.get("versionMinorNumber")
        if not isinstance(major, int) or not isinstance(minor, int):
            raise ResolveError(f"Dataverse dataset {pid} has no published version.", "ref_not_found", 404)
        identifier = str(data.get("identifier", ""))
        ref = f"{data.get('id')}.v{major}.{minor}"
        repo_url = f"{base}/api/datasets/:persistentId/versions/{major}.{minor}?persistentId={quote(pid, safe=':/')}"
        return Resolution(provider=self.name, spec=spec, repo_url=repo_url, ref=ref,
                          ref_url=str(data.get("persistentUrl") or self._doi.link(doi)),
                          resolved_spec=f"{data.get('authority')}/{identifier}",
                          build_slug="dataverse-" + escape(identifier).lower(), content=self.content)
