"""Gitea/Forgejo (Codeberg by default) and Bitbucket Cloud, through their REST APIs.

Both take specs shaped as GitHub's (``owner/repo/ref``, the ref possibly holding "/") and clone
over HTTPS from the forge's web address. Their base URLs are settings, so a self-hosted Gitea or
Forgejo works as GitHub Enterprise does for ``gh``; a token, when set, goes to the API only.
"""

from __future__ import annotations

import re
from typing import Any, NoReturn, Protocol
from urllib.parse import quote

import httpx

from kiln_resolver.providers.base import Resolution, ResolveError

# An owner or repository name as both forges allow them; never "." or "..", which would move up
# the API's path.
_NAME = re.compile(r"(?!\.{1,2}\Z)[A-Za-z0-9_.-]{1,100}")


def _owner_repo_ref(spec: str, forge: str) -> tuple[str, str, str]:
    owner, repo, ref = (spec.split("/", 2) + ["", ""])[:3]
    repo = repo.removesuffix(".git")
    if not (_NAME.fullmatch(owner) and _NAME.fullmatch(repo)) or not ref or len(ref) > 255 or any(ord(c) < 32 for c in ref):
        raise ResolveError(f"{owner}/{repo} is not a {forge} repository name (owner/repository/ref).", "bad_spec", 400)
    return owner, repo, ref


class _ForgeAPI:
    """GETs against one forge's API, with its errors said in the user's terms."""

    def __init__(self, forge: str, api_url: str, headers: dict[str, str], timeout: float) -> None:
        self._forge = forge
        self.authenticated = "Authorization" in headers
        self._client = httpx.AsyncClient(base_url=api_url.rstrip("/"), headers={"User-Agent": "kiln-resolver", **headers},
                                         timeout=timeout)

    async def aclose(self) -> None:
        """Close the HTTP client (its pooled connections)."""
        await self._client.aclose()

    async def get(self, path: str, params: dict[str, str] | None = None,
                  headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """(status, JSON body or None); unreachable, 5xx and rate limits raise ``ResolveError``."""
        try:
            r = await self._client.get(path, params=params, headers=headers)
        except httpx.HTTPError as exc:
            setting = "KILN_GITEA_URL" if self._forge == "Gitea" else "KILN_BITBUCKET_API_URL"
            raise ResolveError(f"{self._forge} at {self._client.base_url} could not be reached: {type(exc).__name__} "
                               f"(the resolver's {setting} names it).", "provider_unreachable", 503) from None
        if r.status_code == 429:
            raise ResolveError(f"{self._forge}'s rate limit was reached; try again in a few minutes.",
                               "provider_rate_limited", 503)
        if r.status_code >= 500:
            raise ResolveError(f"{self._forge} answered {r.status_code}; try again shortly.", "provider_unreachable", 503)
        try:
            return r.status_code, r.json() if r.content else None
        except ValueError:
            return r.status_code, None


    async def missing(self, repo_path: str, spec: str, ref: str, forge: _Forge) -> NoReturn:
        """Say whether the repository or the ref is what is missing (one more request)."""
        status, body = await self.get(repo_path)
        if status in (403, 404):  # a private repository without access reads as missing
            raise forge.not_found(spec)
        raise ResolveError(f"Could not resolve ref {ref!r} of {repo_path.split('/', 2)[2]}: no such branch, tag or commit.",
                           "ref_not_found", 404, private=self.authenticated and forge.is_private(status, body))

    async def private(self, repo_path: str, forge: _Forge) -> bool:
        """Whether the repository is private (only asked with a token: without one a forge shows only public ones)."""
        if not self.authenticated:
            return False
        return forge.is_private(*await self.get(repo_path))


class _Forge(Protocol):
    def not_found(self, spec: str) -> ResolveError: ...

    def is_private(self, status: int, body: Any) -> bool: ...


class GiteaProvider:
    """``gitea/<owner>/<repo>/<ref>``: a repository on Codeberg, or on the Gitea or Forgejo the operator names."""

    name = "gitea"

    def __init__(self, base_url: str, token: str, timeout: float) -> None:
        self._web = base_url.rstrip("/")
        self._api = _ForgeAPI("Gitea", f"{self._web}/api/v1", {"Authorization": f"token {token}"} if token else {}, timeout)
        self.aclose = self._api.aclose

    async def resolve(self, spec: str) -> Resolution:
        owner, repo, ref = _owner_repo_ref(spec, "Gitea")
        base = f"/repos/{quote(owner)}/{quote(repo)}"
        # The commit list from a branch, tag or commit: its first entry is the ref's commit.
        status, body = await self._api.get(f"{base}/commits", {"sha": ref, "limit": "1", "stat": "false",
                                                                "verification": "false", "files": "false"})
        sha = body[0].get("sha") if status == 200 and isinstance(body, list) and body and isinstance(body[0], dict) else None
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", sha):
            await self._api.missing(base, spec, ref, self)
        private = await self._api.private(base, self)
        return Resolution(provider=self.name, spec=spec, repo_url=f"{self._web}/{owner}/{repo}.git", ref=sha,
                          ref_url=f"{self._web}/{owner}/{repo}/src/commit/{sha}", resolved_spec=f"{owner}/{repo}/{sha}",
                          build_slug=f"{owner}-{repo}", private=private)

    @staticmethod
    def is_private(status: int, body: Any) -> bool:
        """Whether the repository's API answer (with the operator's token) shows a private repository."""
        # A "public" repository of a limited or private organisation is readable only when signed in.
        return status != 200 or not isinstance(body, dict) or body.get("private") is not False \
            or bool(body.get("internal")) or (body.get("owner") or {}).get("visibility", "public") != "public"

    def not_found(self, spec: str) -> ResolveError:
        """The error for a repository that does not exist (or that this user may not launch)."""
        owner, repo, _ = _owner_repo_ref(spec, "Gitea")
        return ResolveError(f"Repository {owner}/{repo} not found on {self._web} (or not public).", "repo_not_found", 404)

    async def can_read(self, spec: str, user_token: str) -> bool:
        """Whether ``user_token`` (the launching user's own) reads the repository's code: a team may
        see a repository whose code unit it has no access to."""
        owner, repo, _ = _owner_repo_ref(spec, "Gitea")
        status, _ = await self._api.get(f"/repos/{quote(owner)}/{quote(repo)}/contents",
                                        headers={"Authorization": f"token {user_token}"})
        return status == 200


class BitbucketProvider:
    """``bb/<workspace>/<repo>/<ref>``: a repository on Bitbucket Cloud (API 2.0)."""

    name = "bb"

    def __init__(self, base_url: str, api_url: str, token: str, timeout: float) -> None:
        self._web = base_url.rstrip("/")
        self._api = _ForgeAPI("Bitbucket", api_url, {"Authorization": f"Bearer {token}"} if token else {}, timeout)
        self.aclose = self._api.aclose

    async def resolve(self, spec: str) -> Resolution:
        workspace, repo, ref = _owner_repo_ref(spec, "Bitbucket")
        base = f"/repositories/{quote(workspace)}/{quote(repo)}"
        status, body = await self._api.get(f"{base}/commit/{quote(ref, safe='')}")
        sha = body.get("hash") if status == 200 and isinstance(body, dict) else None
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{40}", sha):
            await self._api.missing(base, spec, ref, self)
        private = await self._api.private(base, self)
        return Resolution(provider=self.name, spec=spec, repo_url=f"{self._web}/{workspace}/{repo}.git", ref=sha,
                          ref_url=f"{self._web}/{workspace}/{repo}/src/{sha}/", resolved_spec=f"{workspace}/{repo}/{sha}",
                          build_slug=f"{workspace}-{repo}", private=private)

    @staticmethod
    def is_private(status: int, body: Any) -> bool:
        """Whether the repository's API answer (with the operator's token) shows a private repository."""
        return status != 200 or not isinstance(body, dict) or body.get("is_private") is not False

    def not_found(self, spec: str) -> ResolveError:
        """The error for a repository that does not exist (or that this user may not launch)."""
        workspace, repo, _ = _owner_repo_ref(spec, "Bitbucket")
        return ResolveError(f"Repository {workspace}/{repo} not found on Bitbucket (or not public).", "repo_not_found", 404)

    async def can_read(self, spec: str, user_token: str) -> bool:
        """Whether ``user_token`` (the launching user's own, OAuth) reads the repository."""
        workspace, repo, _ = _owner_repo_ref(spec, "Bitbucket")
        status, _ = await self._api.get(f"/repositories/{quote(workspace)}/{quote(repo)}",
                                        headers={"Authorization": f"Bearer {user_token}"})
        return status == 200
