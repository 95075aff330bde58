"""GitLab (gitlab.com or self-hosted), through its REST API v4."""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

import httpx

from kiln_resolver.providers.base import Resolution, ResolveError

# A group, subgroup or project path segment as GitLab allows it: never "." or "..", nothing that
# is not a name character (the API URL is built from it).
_SEGMENT = re.compile(r"(?!\.{1,2}\Z)[A-Za-z0-9_.-]{1,255}")


def _namespace(spec: str) -> str:
    """The project's full path from ``<url-encoded namespace>/<ref>``, checked segment by segment."""
    namespace = unquote(spec.rpartition("/")[0])
    segments = namespace.split("/")
    if not 2 <= len(segments) <= 21 or not all(_SEGMENT.fullmatch(part) for part in segments):
        raise ResolveError(f"{namespace!r} is not a GitLab project path (group/project, url-encoded, then /ref).",
                           "bad_spec", 400)
    return namespace


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
        namespace = _namespace(spec)
        project = quote(namespace, safe="")
        r = await self._get(f"/projects/{project}/repository/commits/{quote(unquote(ref), safe='')}")
        if r.status_code != 200:
            project_r = await self._get(f"/projects/{project}")
            if project_r.status_code == 404:
                raise self.not_found(spec)
            raise ResolveError(f"Could not resolve ref {unquote(ref)!r} of {namespace}: no such branch, tag or commit.",
                               "ref_not_found", 404, private=self._private(project_r))
        sha = r.json()["id"]
        private = self._private(await self._get(f"/projects/{project}")) if self._authenticated else False
        slug = "-".join(part.replace("-", "_-") for part in namespace.split("/"))
        return Resolution(provider=self.name, spec=spec, repo_url=f"{self._web}/{namespace}.git", ref=sha,
                          ref_url=f"{self._web}/{namespace}/-/tree/{sha}", resolved_spec=f"{encoded_ns}/{sha}",
                          build_slug=slug, private=private)

    def _private(self, project_r: httpx.Response) -> bool:
        if not self._authenticated:  # without a token GitLab shows Kiln public projects only
            return False
        try:
            body = project_r.json() if project_r.status_code == 200 else {}
        except ValueError:
            body = {}
        # A public project may still keep its repository to members (repository_access_level).
        return not isinstance(body, dict) or body.get("visibility") != "public" \
            or body.get("repository_access_level", "enabled") != "enabled"

    def not_found(self, spec: str) -> ResolveError:
        """The error for a project that does not exist (or that this user may not launch)."""
        return ResolveError(f"Project {_namespace(spec)} not found on {self._web} (or not public).", "repo_not_found", 404)

    async def can_read(self, spec: str, user_token: str) -> bool:
        """Whether ``user_token`` (the launching user's own, OAuth) reads the project's code.

        The project itself is not enough: a Guest member, or anyone on a public project whose
        repository is for members only, sees the project but not its files (GitLab's read_code)."""
        project = quote(_namespace(spec), safe="")
        r = await self._get(f"/projects/{project}/repository/tree", {"Authorization": f"Bearer {user_token}",
                                                                      "PRIVATE-TOKEN": ""})
        return r.status_code == 200
