"""Credentials for private repositories: per host (or part of a host), and GitHub App installations.

The resolver uses them to see and resolve a private repository, the builder to fetch it. Both
services read the same operator settings (``git_credentials``, ``github_app``), so the types and the
rule for which credential goes where live here.

A credential is scoped by a URL prefix, as git scopes its own ``http.<url>.*`` settings: scheme,
host and port must be equal and the prefix's path must be a whole-segment prefix of the URL's
(``https://github.com/lab/`` covers ``https://github.com/lab/x`` but not ``.../laboratory/x``).
It is handed to git as an ``http.<prefix>.extraHeader`` through ``GIT_CONFIG_*`` environment
variables: never in a URL, a command line or a repository's ``.git/config``, so it cannot land in
a checkout, an image or a log line git prints.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

import httpx
import jwt
from pydantic import BaseModel, Field, SecretStr, field_validator

__all__ = ["CredentialStore", "GitCredential", "GitHubApp", "GitHubAppError", "GitHubAppTokens", "credential_for", "git_auth_env"]


def _key(url: str) -> tuple[str, str, int | None, list[str]]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"https": 443, "http": 80}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port, [p for p in parts.path.split("/") if p]


class GitCredential(BaseModel):
    """A user name and password (or token) git sends to the URLs under ``url``."""

    url: str = Field(description="The URL prefix these credentials are for: https://github.com, or "
                                 "https://git.example.org/lab/ for one group's repositories only.")
    username: str = Field("x-access-token", description="GitHub: x-access-token; GitLab: oauth2; Bitbucket: "
                                                         "x-token-auth; a host's own git user otherwise.")
    password: SecretStr = Field(description="The token or password.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("https", "http") or not parts.hostname or "@" in parts.netloc \
                or parts.query or parts.fragment:
            raise ValueError("a credential's url is an http(s) URL prefix with a host and nothing else (no user, "
                             "query or fragment)")
        return url

    def covers(self, url: str) -> bool:
        """Whether git would send these credentials to ``url``."""
        scheme, host, port, path = _key(url)
        c_scheme, c_host, c_port, c_path = _key(self.url)
        return (scheme, host, port) == (c_scheme, c_host, c_port) and path[:len(c_path)] == c_path

    def basic(self) -> str:
        """The ``Authorization`` header's value."""
        pair = f"{self.username}:{self.password.get_secret_value()}".encode()
        return "Basic " + base64.b64encode(pair).decode()


def credential_for(url: str, credentials: list[GitCredential]) -> GitCredential | None:
    """The most specific credential covering ``url``, or None."""
    covering = [c for c in credentials if c.covers(url)]
    return max(covering, key=lambda c: len(_key(c.url)[3]), default=None)


def git_auth_env(url: str, credential: GitCredential) -> dict[str, str]:
    """Environment that makes git send ``credential`` to ``url``'s repository and nowhere else.

    The header is scoped to the repository's own URL (not the credential's wider prefix): git then
    sends it only there, never to a submodule or another repository the same git process meets.
    """
    scope = url.rstrip("/")
    return {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": f"http.{scope}.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: {credential.basic()}"}


class GitHubApp(BaseModel):
    """A GitHub App installation: Kiln mints short-lived installation tokens from the App's key."""

    app_id: int
    installation_id: int
    private_key: SecretStr = Field(description="The App's private key (PEM).")
    api_url: str = Field("https://api.github.com", description="GitHub's REST API (GitHub Enterprise: <host>/api/v3).")
    web_url: str = Field("https://github.com", description="Where the installation's repositories are cloned from.")


@dataclass
class _Token:
    value: str
    expires: float  # time.time()


class GitHubAppTokens:
    """Installation tokens of one GitHub App, minted when needed and reused until shortly before expiry.

    A token is asked for with a JWT signed by the App's key (RS256, valid 9 minutes, issued a minute
    in the past for clock skew, as GitHub recommends) at ``POST /app/installations/<id>/access_tokens``.
    """

    _REFRESH_BEFORE_S = 300.0

    def __init__(self, app: GitHubApp, timeout: float = 10.0) -> None:
        self.app = app
        self._client = httpx.AsyncClient(base_url=app.api_url.rstrip("/"), timeout=timeout,
                                         headers={"Accept": "application/vnd.github+json", "User-Agent": "kiln"})
        self._token: _Token | None = None
        self._lock = asyncio.Lock()
        self.minted = 0

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()

    def _jwt(self) -> str:
        now = int(time.time())
        return jwt.encode({"iat": now - 60, "exp": now + 540, "iss": str(self.app.app_id)},
                          self.app.private_key.get_secret_value(), algorithm="RS256")

    async def token(self) -> str:
        """A valid installation token; ``GitHubAppError`` when GitHub will not give one."""
        async with self._lock:
            if self._token and self._token.expires - time.time() > self._REFRESH_BEFORE_S:
                return self._token.value
            try:
                r = await self._client.post(f"/app/installations/{self.app.installation_id}/access_tokens",
                                            headers={"Authorization": f"Bearer {self._jwt()}"})
            except httpx.HTTPError as exc:
                raise GitHubAppError(f"GitHub could not be reached for an installation token ({type(exc).__name__}).") \
                    from None
            if r.status_code != 201:
                raise GitHubAppError(f"GitHub refused the App's installation token request ({r.status_code}).")
            body = r.json()
            expires = _parse_time(str(body.get("expires_at", "")))
            self._token = _Token(str(body["token"]), expires)
            self.minted += 1
            return self._token.value

    async def credential(self) -> GitCredential:
        """The token as git credentials for the App's web URL."""
        return GitCredential(url=self.app.web_url, username="x-access-token", password=SecretStr(await self.token()))


class GitHubAppError(Exception):
    """No installation token could be had; the message names no secret."""


def _parse_time(value: str) -> float:
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return time.time() + 3000  # GitHub's tokens last an hour; assume most of it


class CredentialStore:
    """The operator's credentials, asked by URL: a configured one covering it (the most specific),
    else the GitHub App's installation token for its web URL, else None."""

    def __init__(self, credentials: list[GitCredential], github_app: GitHubApp | None, timeout: float = 10.0) -> None:
        self._credentials = credentials
        self.app = GitHubAppTokens(github_app, timeout) if github_app else None

    def __bool__(self) -> bool:
        return bool(self._credentials or self.app)

    async def for_url(self, url: str) -> GitCredential | None:
        """The credential git should send to ``url``; ``GitHubAppError`` when the App's token cannot be had."""
        if found := credential_for(url, self._credentials):
            return found
        if self.app and GitCredential(url=self.app.app.web_url, password=SecretStr("-")).covers(url):
            return await self.app.credential()
        return None

    async def aclose(self) -> None:
        """Close the App's HTTP client, if any."""
        if self.app:
            await self.app.aclose()
