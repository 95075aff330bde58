"""HydroShare: a resource, by its id, URL or DOI, at the time it was last modified.

As BinderHub: the spec holds the resource's 32-hex-digit id (in a URL or alone); the version is the
resource's "modified" date from its science metadata (``/hsapi/resource/<id>/scimeta/elements``), in
whole seconds since 1970, so the image is ``hydroshare-<id>.v<seconds>``. HydroShare keeps no history:
the resolved spec and its link are the resource's page. The builder fetches the resource's BagIt
archive (``/django_s3/download/bags/<id>.zip``) and keeps its ``data/contents``, as repo2docker does.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from kiln_resolver.providers.base import Resolution, ResolveError
from kiln_resolver.providers.datahttp import api_json, under
from kiln_resolver.providers.doi import DoiResolver
from kilnbus.guardedhttp import GuardedHTTP

_ID = re.compile(r"([0-9a-f]{32})")


class HydroShareProvider:
    """``hydroshare/<resource id, or its URL>``."""

    name = "hydroshare"
    content = "hydroshare"

    def __init__(self, http: GuardedHTTP, doi: DoiResolver, base_url: str) -> None:
        self._http = http
        self._doi = doi
        self._base = base_url.rstrip("/")

    def claims(self, landing: str) -> bool:
        """Whether ``landing`` (where a DOI leads) is a resource of this installation."""
        path = under(landing, self._base)
        return path is not None and path.startswith("/resource/") and bool(_ID.search(path))

    async def resolve(self, spec: str) -> Resolution:
        found = _ID.search(spec)
        if found is None:
            raise ResolveError(f"{spec!r} names no HydroShare resource (its id is 32 hexadecimal digits).", "bad_spec", 400)
        return await self._resource(spec, found.group(1))

    async def from_landing(self, spec: str, landing: str) -> Resolution:
        """The resource ``landing`` (where the DOI ``spec`` leads) is."""
        found = _ID.search(under(landing, self._base) or "")
        if found is None:
            raise ResolveError(f"DOI {spec} leads to {landing}, which is no HydroShare resource.", "repo_not_found", 404)
        return await self._resource(spec, found.group(1))

    async def _resource(self, spec: str, resource: str) -> Resolution:
        status, body = await api_json(self._http, f"{self._base}/hsapi/resource/{resource}/scimeta/elements", "HydroShare")
        if status in (401, 403, 404):  # a private resource reads as missing
            raise ResolveError(f"HydroShare resource {resource} not found, or not public.", "repo_not_found", 404)
        if status != 200:
            raise ResolveError(f"HydroShare answered {status} for resource {resource}.", "provider_unreachable", 503)
        modified = next((d.get("start_date") for d in body.get("dates", []) if isinstance(d, dict)
                         and d.get("type") == "modified"), None) if isinstance(body, dict) else None
        try:
            # HydroShare writes its times in UTC, with or without fractions and an offset: whole seconds are the version.
            stamp = int(datetime.fromisoformat(str(modified).split(".")[0]).replace(tzinfo=UTC).timestamp())
        except ValueError:
            raise ResolveError(f"HydroShare gave resource {resource} no modification date.", "provider_unreachable",
                               502) from None
        version = f"{resource}.v{stamp}"
        page = f"{self._base}/resource/{resource}"
        return Resolution(provider=self.name, spec=spec, repo_url=f"{self._base}/django_s3/download/bags/{resource}.zip",
                          ref=version, ref_url=page, resolved_spec=page, build_slug=f"hydroshare-{version}",
                          content=self.content)
