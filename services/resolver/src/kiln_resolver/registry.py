"""Asking a registry (Docker Registry HTTP API v2) whether an image exists.

Basic auth for htpasswd registries; the bearer-token flow for the rest: either a configured
``token_url`` (as BinderHub's ``DockerRegistry.token_url``) or the realm the registry names in
its ``WWW-Authenticate`` challenge. Docker Hub answers 401 for repositories that do not exist,
which counts as "not found" there.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import httpx

MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, "
                  "application/vnd.docker.distribution.manifest.v2+json, "
                  "application/vnd.docker.distribution.manifest.list.v2+json")


class RegistryError(Exception):
    """The registry could not be asked (unreachable, or refused our credentials)."""


class Registry:
    """One registry's API, through one HTTP client that ``aclose`` closes."""

    def __init__(self, url: str, username: str = "", password: str = "", token_url: str = "",
                 not_found_401: bool | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._auth: tuple[str | bytes, str | bytes] | None = (username, password) if username else None
        self._token_url = token_url
        host = urlsplit(self.url).hostname or ""
        self._not_found_401 = host.endswith(".docker.io") if not_found_401 is None else not_found_401
        self._client = httpx.AsyncClient(timeout=timeout)

    async def aclose(self) -> None:
        """Close the HTTP client (its pooled connections)."""
        await self._client.aclose()

    async def _token(self, realm: str, params: dict[str, str]) -> str:
        try:
            r = await self._client.get(realm, params=params, auth=self._auth)
        except httpx.HTTPError as exc:
            raise RegistryError(f"the registry's token server {realm} could not be reached: {exc!r}") from None
        if r.status_code != 200:
            raise RegistryError(f"the registry's token server refused Kiln's credentials ({r.status_code})")
        body = r.json()
        return str(body.get("token") or body["access_token"])

    async def image_exists(self, repository: str, tag: str) -> bool:
        url = f"{self.url}/v2/{repository}/manifests/{tag}"
        headers = {"Accept": MANIFEST_TYPES}
        scope = f"repository:{repository}:pull"
        try:
            if self._token_url:
                base, _, query = self._token_url.partition("?")
                params = dict(p.split("=", 1) for p in query.split("&") if "=" in p) | {"scope": scope}
                headers["Authorization"] = f"Bearer {await self._token(base, params)}"
                r = await self._client.head(url, headers=headers)
            else:
                r = await self._client.head(url, headers=headers, auth=self._auth or httpx.USE_CLIENT_DEFAULT)
                challenge = r.headers.get("www-authenticate", "")
                if r.status_code == 401 and challenge.lower().startswith("bearer"):
                    fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
                    params = {"service": fields.get("service", ""), "scope": fields.get("scope", scope)}
                    headers["Authorization"] = f"Bearer {await self._token(fields['realm'], params)}"
                    r = await self._client.head(url, headers=headers)
        except httpx.HTTPError as exc:
            raise RegistryError(f"the image registry at {self.url} could not be reached: {exc!r}") from None
        if r.status_code == 200:
            return True
        if r.status_code == 404 or (r.status_code == 401 and self._not_found_401):
            return False
        if r.status_code in (401, 403):
            raise RegistryError(f"the image registry at {self.url} refused Kiln's credentials ({r.status_code})")
        raise RegistryError(f"the image registry at {self.url} answered {r.status_code}")
