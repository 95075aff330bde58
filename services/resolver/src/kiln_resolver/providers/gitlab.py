"""GitLab (gitlab.com or self-hosted), through its REST API v4."""

from __future__ import annotations

from urllib.parse import quote, unquote

import httpx

from kiln_resolver.providers.base import Resolution, ResolveError


class GitLabProvider:
    """``gl/<url-encoded namespace>/<ref>``: a project on GitLab.com or the operator's GitLab."""

    name = "gl"

    def __init__(self, base_url: str, token: str, timeout: float) -> None:
        self._web = base_url.rstrip("/")
        self._authenticated = bool(token)
        headers = {"User-Agent": "kiln-resolver"} | ({"PRIVATE-TOKEN": token} if token else {})
        self._client = httpx.AsyncClient(base_url=f"{self._web}/api/v4", headers=headers, timeout=timeout)

    async def aclose(self) -> None:
        """Close the HTTP client (its pooled connections)."""
        await self._client.aclose()

    async def _get(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        try:
            r = await self._client.get(path, headers=headers)
        except httpx.HTTPError as exc:
            raise ResolveError(f"GitLab at {self._web} could not be reached: {exc!r}", "provider_unreachable", 503) from None
        if r.status_code >= 500:
            raise ResolveError(f"GitLab answered {r.status_code}; try again shortly.", "provider_unreachable", 503)
        return r

    async def resolve(self, spec: str) -> Resolution:
        encoded_ns, _, ref = spec.rpartition("/")
        namespace = unquote(encoded_ns)
        project = quote(namespace, safe="")
        r = await self._get(f"/projects/{project}/repository/commits/{quote(unquote(ref), safe='')}")
        if r.status_code != 200:
            if (await self._get(f"/projects/{project}")).status_code == 404:
                raise ResolveError(f"Project {namespace} not found on {self._web} (or not public).", "repo_not_found", 404)
            raise ResolveError(f"Could not resolve ref {unquote(ref)!r} of {namespace}: no such branch, tag or commit.",
                               "ref_not_found", 404)
        sha = r.json()["id"]
        private = False
        if self._authenticated:  # without a token GitLab shows Kiln public projects only
            project_r = await self._get(f"/projects/{project}")
            body = project_r.json() if project_r.status_code == 200 else {}
            private = not isinstance(body, dict) or body.get("visibility") != "public"
        slug = "-".join(part.replace("-", "_-") for part in namespace.split("/"))
        return Resolution(provider=self.name, spec=spec, repo_url=f"{self._web}/{namespace}.git", ref=sha,
                          ref_url=f"{self._web}/{namespace}/-/tree/{sha}", resolved_spec=f"{encoded_ns}/{sha}",
                          build_slug=slug, private=private)

    async def can_read(self, spec: str, user_token: str) -> bool:
        """Whether ``user_token`` (the launching user's own, OAuth) reads the project."""
        project = quote(unquote(spec.rpartition("/")[0]), safe="")
        r = await self._get(f"/projects/{project}", {"Authorization": f"Bearer {user_token}", "PRIVATE-TOKEN": ""})
        return r.status_code == 200
