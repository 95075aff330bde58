"""GitHub and Gist, through GitHub's REST API, with ETag-conditional requests.

A cached answer revalidated with ``If-None-Match`` costs no rate limit (GitHub answers 304), so a
popular badge does not spend the token's hourly budget.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import quote

import httpx

from kiln_resolver.metrics import GITHUB_RATE_LIMIT
from kiln_resolver.providers.base import Resolution, ResolveError
from kiln_resolver.providers.gitcli import ls_remote
from kilnbus.credentials import CredentialStore, GitHubAppError, GitHubAppTokens


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


# An owner or repository name as GitHub allows them; never "." or "..", which the API client would
# resolve as a path step (gh/../user/x would ask the operator's token for /user).
_NAME = re.compile(r"(?!\.{1,2}\Z)[A-Za-z0-9_.-]{1,100}")


def _owner_repo_ref(spec: str) -> tuple[str, str, str]:
    owner, repo, ref = (spec.split("/", 2) + ["", ""])[:3]
    repo = repo.removesuffix(".git")
    if not (_NAME.fullmatch(owner) and _NAME.fullmatch(repo)) or not ref:
        raise ResolveError(f"{owner}/{repo} is not a GitHub repository name (owner/repository/ref).", "bad_spec", 400)
    return owner, repo, ref


class GitHubProvider:
    """``gh/<owner>/<repo>/<ref>``: a repository on GitHub (or GitHub Enterprise)."""

    name = "gh"

    def __init__(self, api: GitHubAPI, web_url: str) -> None:
        self._api = api
        self._web = web_url.rstrip("/")

    async def resolve(self, spec: str) -> Resolution:
        owner, repo, ref = _owner_repo_ref(spec)
        status, body = await self._api.get(f"/repos/{quote(owner)}/{quote(repo)}/commits/{quote(ref, safe='')}")
        if status != 200:
            repo_status, repo_body = await self._api.get(f"/repos/{quote(owner)}/{quote(repo)}")
            if repo_status == 404:
                raise self.not_found(spec)
            raise ResolveError(f"Could not resolve ref {ref!r} of {owner}/{repo}: no such branch, tag or commit.",
                               "ref_not_found", 404, private=self._private(repo_status, repo_body))
        sha = body["sha"]
        private = False
        if self._api.authenticated:
            # ETag-revalidated like the commit lookup, so a popular private badge costs no rate limit.
            private = self._private(*await self._api.get(f"/repos/{quote(owner)}/{quote(repo)}"))
        return Resolution(provider=self.name, spec=spec, repo_url=f"{self._web}/{owner}/{repo}", ref=sha,
                          ref_url=f"{self._web}/{owner}/{repo}/tree/{sha}", resolved_spec=f"{owner}/{repo}/{sha}",
                          build_slug=f"{owner}-{repo}", private=private)

    def _private(self, repo_status: int, repo_body: Any) -> bool:
        # Without a token GitHub shows only public repositories, so none found is private.
        return self._api.authenticated and (repo_status != 200 or not isinstance(repo_body, dict)
                                            or repo_body.get("private") is not False)

    def not_found(self, spec: str) -> ResolveError:
        """The error for a repository that does not exist (or that this user may not launch)."""
        owner, repo, _ = _owner_repo_ref(spec)
        return ResolveError(f"Repository {owner}/{repo} not found on GitHub (or not public). "
                            "Double check your URL.", "repo_not_found", 404)

    async def can_read(self, spec: str, user_token: str) -> bool:
        """Whether ``user_token`` (the launching user's own) reads the repository."""
        owner, repo, _ = _owner_repo_ref(spec)
        return await self._api.readable(f"/repos/{quote(owner)}/{quote(repo)}",
                                        {"Authorization": f"token {user_token}"})


class GistProvider:
    """``gist/<user>/<id>[/<version>]``: a GitHub gist, cloned from the gist host.

    Gists are never private on github.com, but a GitHub Enterprise in private mode serves them
    only to signed-in git: when an operator's git credential covers the gist's clone URL (so the
    builder would clone with it), the gist counts as private unless git reads it without one.
    """

    name = "gist"

    def __init__(self, api: GitHubAPI, gist_url: str, allow_secret: bool, credentials: CredentialStore | None = None,
                 timeout: float = 10) -> None:
        self._api = api
        self._web = gist_url.rstrip("/")
        self._allow_secret = allow_secret
        self._credentials = credentials
        self._timeout = timeout

    def not_found(self, spec: str) -> ResolveError:
        """The error for a gist that does not exist (or that this user may not launch)."""
        return ResolveError(f"Gist {spec.split('/', 2)[1]} not found.", "repo_not_found", 404)

    async def _private(self, clone_url: str) -> bool:
        try:
            credential = await self._credentials.for_url(clone_url) if self._credentials else None
        except GitHubAppError:
            return True  # the builder would try a credential: never take the gist for public untested
        if credential is None:
            return False
        try:
            return await ls_remote(clone_url, "HEAD", self._timeout) is None
        except ResolveError:
            return True

    async def resolve(self, spec: str) -> Resolution:
        parts = spec.split("/", 2)
        user, gist_id = parts[0], parts[1] if len(parts) > 1 else ""
        ref = parts[2] if len(parts) > 2 else "HEAD"
        if not _NAME.fullmatch(user) or not re.fullmatch(r"[A-Za-z0-9]{1,64}", gist_id):
            raise ResolveError(f"{user}/{gist_id} is not a gist (user/id[/version]).", "bad_spec", 400)
        status, body = await self._api.get(f"/gists/{quote(gist_id)}")
        if status != 200 or not isinstance(body, dict):
            raise self.not_found(spec)
        clone_url = f"{self._web}/{user}/{gist_id}.git"
        # Known before any other answer: a refused user is told of a private gist's versions no
        # more than of its existence.
        private = await self._private(clone_url)
        if not body.get("public", True) and not self._allow_secret:
            raise ResolveError("Secret gists cannot be launched on this Binder.", "banned", 403, private=private)
        versions = [h["version"] for h in body.get("history", [])]
        if not versions:
            raise ResolveError(f"Gist {gist_id} has no versions.", "ref_not_found", 404, private=private)
        if ref in ("", "HEAD", "master", "main"):
            sha = versions[0]
        elif ref in versions:
            sha = ref
        else:
            raise ResolveError(f"Gist {gist_id} has no version {ref!r}.", "ref_not_found", 404, private=private)
        return Resolution(provider=self.name, spec=spec, repo_url=clone_url, ref=sha,
                          ref_url=f"{self._web}/{user}/{gist_id}/{sha}", resolved_spec=f"{user}/{gist_id}/{sha}",
                          build_slug=gist_id, private=private)
