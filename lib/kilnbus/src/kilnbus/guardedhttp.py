"""HTTP GETs to URLs nobody vouches for (data repositories, their file links, DOI redirects).

Every hop of a request, redirects included, goes through ``kilnbus.urlguard``'s rule (scheme, no
credentials, every address the host resolves to public unless allowed), and the connection goes to
an address just checked: the URL is rewritten to that address, with ``Host`` and TLS's server name
(which the certificate is checked against) left as the host's own, so a second DNS answer cannot
point the request elsewhere. Each host gets its own client, so a pooled connection made for one
host name is never reused for another that happens to share its address.

Used by the resolver and the builder alike; services must not import each other, so it lives here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from kilnbus.urlguard import UnsafeRepoURL, parse_repo_url, public_addresses

_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class Answer:
    """A response after redirects: ``url`` is the last URL asked (host names, not addresses)."""

    url: str
    response: httpx.Response


class GuardedHTTP:
    """GETs under the URL guard, each connection pinned to a checked address; ``aclose`` when done."""

    def __init__(self, allowed_schemes: list[str] | None = None, allowed_private_hosts: list[str] | None = None,
                 timeout: float = 20.0, max_redirects: int = 10, user_agent: str = "Kiln") -> None:
        self._schemes = [s for s in (allowed_schemes or ["https", "http"]) if s in ("https", "http")]
        self._allowed = list(allowed_private_hosts or [])
        self._timeout = timeout
        self._max_redirects = max_redirects
        self._user_agent = user_agent
        self._clients: dict[tuple[str, str, int], httpx.AsyncClient] = {}

    async def aclose(self) -> None:
        """Close every client made so far."""
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()

    def _client(self, key: tuple[str, str, int]) -> httpx.AsyncClient:
        if key not in self._clients:
            # trust_env=False: a proxy from the environment would make the pinning meaningless.
            self._clients[key] = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False, trust_env=False,
                                                   headers={"User-Agent": self._user_agent})
        return self._clients[key]

    async def _send(self, url: str, headers: dict[str, str], method: str = "GET", body: bytes | None = None) -> httpx.Response:
        parts = parse_repo_url(url, self._schemes)
        host = parts.hostname
        assert host is not None
        addresses = await public_addresses(host, self._allowed)
        scheme = parts.scheme.lower()
        port = parts.port or (443 if scheme == "https" else 80)
        client = self._client((scheme, host, port))
        target = httpx.URL(url)
        last: httpx.TransportError | None = None
        for address in addresses:  # the next checked address if one does not answer
            request = client.build_request(method, target.copy_with(host=address), content=body,
                                           headers={**headers, "Host": parts.netloc}, extensions={"sni_hostname": host})
            try:
                return await client.send(request, stream=True)
            except httpx.ConnectError as exc:
                last = exc
        assert last is not None
        raise last

    @asynccontextmanager
    async def get(self, url: str, headers: dict[str, str] | None = None) -> AsyncIterator[Answer]:
        """GET ``url``, following redirects (each hop checked anew); the response streams until the block ends.

        Raises ``UnsafeRepoURL`` for a URL the guard refuses or too many redirects, and httpx's
        errors for a host that does not answer.
        """
        current, sent = url, dict(headers or {})
        for _ in range(self._max_redirects + 1):
            response = await self._send(current, sent)
            location = response.headers.get("location")
            if response.status_code in _REDIRECTS and location:
                await response.aclose()
                following = urljoin(current, location)
                if _origin(following) != _origin(current):
                    # Credentials are for the host they were given for, not wherever it redirects (as browsers and curl do).
                    sent = {k: v for k, v in sent.items() if k.lower() not in ("authorization", "cookie")}
                current = following
                continue
            try:
                yield Answer(current, response)
            finally:
                await response.aclose()
            return
        raise UnsafeRepoURL(f"{url} redirects more than {self._max_redirects} times.", "fetch_failed", 502)

    async def get_json(self, url: str, max_bytes: int = 16 * 2**20,
                       headers: dict[str, str] | None = None) -> tuple[int, object, str]:
        """GET ``url`` as JSON: (status, body or None when not JSON, last URL). Bodies past ``max_bytes`` are refused."""
        async with self.get(url, {"Accept": "application/json", **(headers or {})}) as answer:
            data = bytearray()
            async for chunk in answer.response.aiter_bytes():
                data += chunk
                if len(data) > max_bytes:
                    raise UnsafeRepoURL(f"The answer from {answer.url} is larger than {max_bytes} bytes.", "fetch_failed", 502)
            status = answer.response.status_code
            final = answer.url
        try:
            return status, json.loads(data), final
        except ValueError:
            return status, None, final

    async def post_json(self, url: str, body: object, headers: dict[str, str] | None = None,
                        max_bytes: int = 16 * 2**20) -> tuple[int, object]:
        """POST ``body`` as JSON to ``url`` (no redirects followed: a POST is not repeated elsewhere);
        (status, the answer as JSON or None when it is not JSON). Answers past ``max_bytes`` are refused."""
        sent = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
        response = await self._send(url, sent, "POST", json.dumps(body).encode())
        try:
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > max_bytes:
                    raise UnsafeRepoURL(f"The answer from {url} is larger than {max_bytes} bytes.", "fetch_failed", 502)
        finally:
            await response.aclose()
        try:
            return response.status_code, json.loads(data)
        except ValueError:
            return response.status_code, None


__all__ = ["Answer", "GuardedHTTP"]


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"https": 443, "http": 80}.get(scheme)
