"""Asking a registry (Docker Registry HTTP API v2) whether an image exists.

Basic auth for htpasswd registries; the bearer-token flow for the rest: either a configured
``token_url`` (as BinderHub's ``DockerRegistry.token_url``) or the realm the registry names in
its ``WWW-Authenticate`` challenge. Docker Hub answers 401 for repositories that do not exist,
which counts as "not found" there. A token is kept per scope until shortly before it expires, so a
launch costs one request to the registry, not a challenge, a token and a retry.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from urllib.parse import urlsplit

import httpx

MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, "
                  "application/vnd.docker.distribution.manifest.v2+json, "
                  "application/vnd.docker.distribution.manifest.list.v2+json")


# A token is given up this long before the expiry its server named, so none is used as it lapses.
TOKEN_MARGIN_S = 10.0
DEFAULT_TOKEN_LIFETIME_S = 60.0  # what the token specification says to assume when none is named
MAX_TOKEN_LIFETIME_S = 3600.0
TOKENS_KEPT = 1024


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
        self._tokens: OrderedDict[str, tuple[float, str]] = OrderedDict()  # scope -> (usable until, token)

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
        try:
            body = r.json()
            token = str(body.get("token") or body["access_token"])
        except (ValueError, KeyError, AttributeError):
            raise RegistryError("the registry's token server answered without a token") from None
        named = body.get("expires_in")
        try:
            lifetime = min(float(DEFAULT_TOKEN_LIFETIME_S if named is None else named), MAX_TOKEN_LIFETIME_S)
        except (TypeError, ValueError, OverflowError):
            lifetime = DEFAULT_TOKEN_LIFETIME_S
        if (usable := lifetime - min(TOKEN_MARGIN_S, lifetime / 2)) > 0 and params.get("scope"):
            self._tokens[params["scope"]] = (time.monotonic() + usable, token)
            while len(self._tokens) > TOKENS_KEPT:
                self._tokens.popitem(last=False)
        return token

    def _kept_token(self, scope: str) -> str | None:
        kept = self._tokens.get(scope)
        if kept is None:
            return None
        if time.monotonic() >= kept[0]:
            del self._tokens[scope]
            return None
        return kept[1]

    async def image_exists(self, repository: str, tag: str) -> bool:
        url = f"{self.url}/v2/{repository}/manifests/{tag}"
        scope = f"repository:{repository}:pull"
        try:
            if (kept := self._kept_token(scope)) is not None:
                r = await self._client.head(url, headers={"Accept": MANIFEST_TYPES, "Authorization": f"Bearer {kept}"})
                if r.status_code not in (401, 403, 404):
                    return self._answer(r)
                # Revoked, narrowed since it was issued, or (Docker Hub; registries that hide what a token may
                # not see) no such repository: ask again as if nothing were kept. A miss costs a build, so
                # it is worth the second request.
                self._tokens.pop(scope, None)
            return self._answer(await self._ask(url, scope))
        except httpx.HTTPError as exc:
            raise RegistryError(f"the image registry at {self.url} could not be reached: {exc!r}") from None

    async def _ask(self, url: str, scope: str) -> httpx.Response:
        headers = {"Accept": MANIFEST_TYPES}
        if self._token_url:
            base, _, query = self._token_url.partition("?")
            params = dict(p.split("=", 1) for p in query.split("&") if "=" in p) | {"scope": scope}
            headers["Authorization"] = f"Bearer {await self._token(base, params)}"
            return await self._client.head(url, headers=headers)
        r = await self._client.head(url, headers=headers, auth=self._auth or httpx.USE_CLIENT_DEFAULT)
        challenge = r.headers.get("www-authenticate", "")
        if r.status_code == 401 and challenge.lower().startswith("bearer"):
            fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
            # Kept under the scope asked for: the next request for this repository sends it first.
            params = {"service": fields.get("service", ""), "scope": fields.get("scope", scope)}
            headers["Authorization"] = f"Bearer {await self._token(fields['realm'], params)}"
            r = await self._client.head(url, headers=headers)
        return r

    def _answer(self, r: httpx.Response) -> bool:
        if r.status_code == 200:
            return True
        if r.status_code == 404 or (r.status_code == 401 and self._not_found_401):
            return False
        if r.status_code in (401, 403):
            raise RegistryError(f"the image registry at {self.url} refused Kiln's credentials ({r.status_code})")
        raise RegistryError(f"the image registry at {self.url} answered {r.status_code}")
