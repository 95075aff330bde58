"""GitHub and Gist, through GitHub's REST API, with ETag-conditional requests.

A cached answer revalidated with ``If-None-Match`` costs no rate limit (GitHub answers 304), so a
popular badge does not spend the token's hourly budget.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import quote

import httpx

from kiln_resolver.metrics import GITHUB_RATE_LIMIT
from kiln_resolver.providers.base import Resolution, ResolveError
from kilnbus.credentials import GitHubAppError, GitHubAppTokens


class _ETagCache:
    """A bounded LRU of API URL -> (etag, body)."""

    def __init__(self, size: int = 1024) -> None:
        self._items: OrderedDict[str, tuple[str, Any]] = OrderedDict()
        self._size = size

    def get(self, url: str) -> tuple[str, Any] | None:
        if url in self._items:
            self._items.move_to_end(url)
            return self._items[url]
        return None

    def put(self, url: str, etag: str, body: Any) -> None:
        self._items[url] = (etag, body)
        self._items.move_to_end(url)
        while len(self._items) > self._size:
            self._items.popitem(last=False)


class GitHubAPI:
    """The few GitHub API calls Kiln makes, sharing one client, token and ETag cache."""

    def __init__(self, api_url: str, token: str, timeout: float, app: GitHubAppTokens | None = None) -> None:
        headers = {"Accept": "application/vnd.github+json", "User-Agent": "kiln-resolver"}
        if token and not app:
            headers["Authorization"] = f"token {token}"
        self._client = httpx.AsyncClient(base_url=api_url.rstrip("/"), headers=headers, timeout=timeout)
        self._etags = _ETagCache()
        self._app = app
        # Only with a token (or an App) does GitHub show Kiln private repositories at all.
        self.authenticated = bool(token or app)
        self.rate_limit_remaining: int | None = None

    async def aclose(self) -> None:
        """Close the HTTP client (its pooled connections)."""
        await self._client.aclose()

    async def readable(self, path: str, headers: dict[str, str]) -> bool:
        """Whether ``path`` answers 200 with ``headers`` (a user's token): no cache, no rate-limit gauge."""
        try:
            r = await self._client.get(path, headers=headers)
        except httpx.HTTPError as exc:
            raise ResolveError(f"GitHub's API could not be reached: {type(exc).__name__}", "provider_unreachable",
                               503) from None
        return r.status_code == 200

    async def get(self, path: str) -> tuple[int, Any]:
        """GET ``path``: (status, JSON body); a 304 is answered from the cache as a 200."""
        cached = self._etags.get(path)
        headers = {"If-None-Match": cached[0]} if cached else {}
        try:
            if self._app:
                headers["Authorization"] = f"token {await self._app.token()}"
            r = await self._client.get(path, headers=headers)
        except GitHubAppError as exc:
            raise ResolveError(f"{exc} Kiln cannot resolve GitHub repositories right now.", "provider_unreachable",
                               503) from None
        except httpx.HTTPError as exc:
            raise ResolveError(f"GitHub's API could not be reached: {exc!r}", "provider_unreachable", 503) from None
        if "x-ratelimit-remaining" in r.headers:
            self.rate_limit_remaining = int(r.headers["x-ratelimit-remaining"])
            GITHUB_RATE_LIMIT.set(self.rate_limit_remaining)
        if r.status_code == 304 and cached:
            return 200, cached[1]
        if r.status_code in (403, 429) and r.headers.get("x-ratelimit-remaining") == "0":
            reset = int(r.headers.get("x-ratelimit-reset", time.time() + 3600))
            minutes = max(1, math.ceil((reset - time.time()) / 60))
            raise ResolveError(f"GitHub rate limit exceeded. Try again in {minutes} minute{'s' if minutes > 1 else ''}.",
                               "provider_rate_limited", 503)
        if r.status_code >= 500:
            raise ResolveError(f"GitHub's API answered {r.status_code}; try again shortly.", "provider_unreachable", 503)
        body = r.json() if r.content else None
        if r.status_code == 200 and "etag" in r.headers:
            self._etags.put(path, r.headers["etag"], body)
        return r.status_code, body


class GitHubProvider:
    """``gh/<owner>/<repo>/<ref>``: a repository on GitHub (or GitHub Enterprise)."""

    name = "gh"

    def __init__(self, api: GitHubAPI, web_url: str) -> None:
        self._api = api
        self._web = web_url.rstrip("/")

    async def resolve(self, spec: str) -> Resolution:
        owner, repo, ref = spec.split("/", 2)
        repo = repo.removesuffix(".git")
        status, body = await self._api.get(f"/repos/{quote(owner)}/{quote(repo)}/commits/{quote(ref, safe='')}")
        if status != 200:
            repo_status, _ = await self._api.get(f"/repos/{quote(owner)}/{quote(repo)}")
            if repo_status == 404:
                raise ResolveError(f"Repository {owner}/{repo} not found on GitHub (or not public). "
                                   "Double check your URL.", "repo_not_found", 404)
            raise ResolveError(f"Could not resolve ref {ref!r} of {owner}/{repo}: no such branch, tag or commit.",
                               "ref_not_found", 404)
        sha = body["sha"]
        private = False
        if self._api.authenticated:
            # ETag-revalidated like the commit lookup, so a popular private badge costs no rate limit.
            repo_status, repo_body = await self._api.get(f"/repos/{quote(owner)}/{quote(repo)}")
            private = repo_status != 200 or not isinstance(repo_body, dict) or repo_body.get("private") is not False
        return Resolution(provider=self.name, spec=spec, repo_url=f"{self._web}/{owner}/{repo}", ref=sha,
                          ref_url=f"{self._web}/{owner}/{repo}/tree/{sha}", resolved_spec=f"{owner}/{repo}/{sha}",
                          build_slug=f"{owner}-{repo}", private=private)

    async def can_read(self, spec: str, user_token: str) -> bool:
        """Whether ``user_token`` (the launching user's own) reads the repository."""
        owner, repo, _ = spec.split("/", 2)
        return await self._api.readable(f"/repos/{quote(owner)}/{quote(repo.removesuffix('.git'))}",
                                        {"Authorization": f"token {user_token}"})


class GistProvider:
    name = "gist"

    def __init__(self, api: GitHubAPI, gist_url: str, allow_secret: bool) -> None:
        self._api = api
        self._web = gist_url.rstrip("/")
        self._allow_secret = allow_secret

    async def resolve(self, spec: str) -> Resolution:
        parts = spec.split("/", 2)
        user, gist_id = parts[0], parts[1]
        ref = parts[2] if len(parts) > 2 else "HEAD"
        status, body = await self._api.get(f"/gists/{quote(gist_id)}")
        if status != 200:
            raise ResolveError(f"Gist {gist_id} not found.", "repo_not_found", 404)
        if not body.get("public", True) and not self._allow_secret:
            raise ResolveError("Secret gists cannot be launched on this Binder.", "banned", 403)
        versions = [h["version"] for h in body.get("history", [])]
        if not versions:
            raise ResolveError(f"Gist {gist_id} has no versions.", "ref_not_found", 404)
        if ref in ("", "HEAD", "master", "main"):
            sha = versions[0]
        elif ref in versions:
            sha = ref
        else:
            raise ResolveError(f"Gist {gist_id} has no version {ref!r}.", "ref_not_found", 404)
        return Resolution(provider=self.name, spec=spec, repo_url=f"{self._web}/{user}/{gist_id}.git", ref=sha,
                          ref_url=f"{self._web}/{user}/{gist_id}/{sha}", resolved_spec=f"{user}/{gist_id}/{sha}",
                          build_slug=gist_id)
