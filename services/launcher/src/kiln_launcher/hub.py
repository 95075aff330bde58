"""JupyterHub's REST API, only what launching needs, with BinderHub's retry rules."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from kiln_launcher.quota import Listing

log = logging.getLogger(__name__)

HANDOVER_TIMEOUT_S = 10.0
HANDOVER_ANSWER_MAX = 4096


class HubError(Exception):
    """The hub refused or could not be reached; ``cause`` and ``status`` say which. Its message is
    shown to the user: the hub's answer, addresses and paths go to the log, not into it."""

    def __init__(self, message: str, cause: str = "hub_error", status: int = 500) -> None:
        super().__init__(message)
        self.cause = cause
        self.status = status


class Hub:
    """The hub's REST API through one HTTP client, which ``aclose`` closes."""

    def __init__(self, api_url: str, token: str, retries: int = 4, retry_delay_s: float = 4.0,
                 proxy_url: str = "http://127.0.0.1:8000") -> None:
        self._client = httpx.AsyncClient(base_url=api_url.rstrip("/"), headers={"Authorization": f"token {token}"}, timeout=30)
        # Users' servers, through the hub's proxy, with each server's own token (never the service's).
        self._servers = httpx.AsyncClient(base_url=proxy_url.rstrip("/"), timeout=10, follow_redirects=False)
        self._retries = retries
        self._delay = retry_delay_s

    async def aclose(self) -> None:
        """Close the HTTP clients (their pooled connections to the hub and its proxy)."""
        await self._client.aclose()
        await self._servers.aclose()

    async def request(self, method: str, path: str, ok: tuple[int, ...] = (200, 201, 202, 204), **kwargs: Any) -> httpx.Response:
        """One API call, retried with doubling delays on 5xx and connection errors."""
        delay = self._delay
        for attempt in range(1, self._retries + 1):
            try:
                r = await self._client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self._retries:
                    # The details (the hub's internal address, the error) are the operators', in the log.
                    log.warning("hub %s %s: cannot reach the hub: %r", method, path, exc)
                    raise HubError("JupyterHub cannot be reached right now; please try again shortly.",
                                   "hub_unreachable", 503) from None
            else:
                if r.status_code < 500:
                    if r.status_code in ok:
                        return r
                    log.warning("hub %s %s answered %d: %s", method, path, r.status_code, r.text[:1000])
                    raise HubError(f"JupyterHub refused Kiln's request (HTTP {r.status_code}). Please try again; if it "
                                   "persists, tell this Binder's operators.", "hub_error", r.status_code)
                if attempt == self._retries:
                    log.warning("hub %s %s answered %d: %s", method, path, r.status_code, r.text[:1000])
                    raise HubError(f"JupyterHub is not working properly right now (HTTP {r.status_code}); please try "
                                   "again shortly.", "hub_error", 503)
            log.warning("hub %s %s failed (attempt %d); retrying in %.1fs", method, path, attempt, delay)
            await asyncio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    async def create_user(self, name: str) -> bool:
        """Create ``name``; False when it exists already."""
        r = await self.request("POST", f"/users/{quote(name)}", ok=(201, 409))
        return r.status_code == 201

    async def user(self, name: str) -> dict[str, Any] | None:
        r = await self.request("GET", f"/users/{quote(name)}", ok=(200, 404))
        return r.json() if r.status_code == 200 else None

    async def start_server(self, user: str, server: str, options: dict[str, Any]) -> str | None:
        """Ask for the server; the hub's refusal message when it refuses to start it at once."""
        r = await self.request("POST", f"/users/{quote(user)}/servers/{quote(server)}", ok=(201, 202, 400), json=options)
        if r.status_code == 400:
            try:
                return str(r.json().get("message", r.text))
            except ValueError:
                return r.text
        return None

    async def stop_server(self, user: str, server: str, remove: bool = True) -> None:
        await self.request("DELETE", f"/users/{quote(user)}/servers/{quote(server)}", ok=(202, 204, 404), json={"remove": remove})

    async def delete_user(self, name: str) -> None:
        await self.request("DELETE", f"/users/{quote(name)}", ok=(204, 404))

    async def _mint(self, user: str, server: str, lifetime_s: int, note: str) -> dict[str, Any]:
        """A new token of ``user``'s that opens ``server`` only: the hub's answer (``token``, ``id``, ...)."""
        r = await self.request("POST", f"/users/{quote(user)}/tokens", json={
            "note": note, "expires_in": lifetime_s, "scopes": [f"access:servers!server={user}/{server}"]})
        return dict(r.json())

    async def token(self, user: str, server: str, lifetime_s: int) -> str:
        return str((await self._mint(user, server, lifetime_s, f"binder launch {server}"))["token"])

    async def activity(self, user: str, server: str) -> None:
        """Tell the hub the server is in use now (its idle culler counts from this)."""
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        await self.request("POST", f"/users/{quote(user)}/activity", ok=(200, 204),
                           json={"last_activity": now, "servers": {server: {"last_activity": now}}})

    async def handover(self, user: str, server: str, token: str, environment: dict[str, str] | None) -> int | None:
        """Ask a warm server (kiln_handover, in Kiln's base image) to be handed over; its answer's status.

        With ``environment`` None only whether it was handed over is asked (GET): 200 means it was
        not, 409 that it was. None when the server cannot be reached or answers nonsense. 404: the
        image lacks the extension. The server runs a stranger's code: its answer is read uncompressed,
        at most ``HANDOVER_ANSWER_MAX`` bytes, within ``HANDOVER_TIMEOUT_S`` in all.
        """
        path = f"/user/{quote(user)}/{quote(server)}/kiln/handover"
        headers = {"Authorization": f"token {token}", "Accept-Encoding": "identity"}
        method, body = ("GET", None) if environment is None else ("POST", {"environment": environment})
        try:
            async with asyncio.timeout(HANDOVER_TIMEOUT_S), \
                    self._servers.stream(method, path, headers=headers, json=body) as r:
                answer = b""
                async for chunk in r.aiter_raw():
                    answer += chunk
                    if len(answer) > HANDOVER_ANSWER_MAX:
                        raise ValueError("the answer is too long")
                status = r.status_code
                if environment is None and status == 200 and json.loads(answer).get("handed") is not False:
                    return 409
                return status
        except (httpx.HTTPError, TimeoutError, ValueError, AttributeError) as exc:
            log.warning("hand-over of %s/%s: %r", user, server, exc)
            return None

    async def revoke(self, user: str, token_id: str) -> None:
        """Delete one of ``user``'s tokens (gone already is fine)."""
        await self.request("DELETE", f"/users/{quote(user)}/tokens/{quote(token_id)}", ok=(204, 404))

    async def probe_token(self, user: str, server: str) -> tuple[str, str]:
        """A short-lived token for ``user``'s ``server`` and its id, to be revoked once used."""
        body = await self._mint(user, server, 300, f"kiln warm pool check {server}")
        return str(body["token"]), str(body["id"])

    async def active_users(self) -> list[dict[str, Any]]:
        """Every user with an active server, with their servers' models (user options included).

        The hub pages this list (200 users a page by default): every page is read, or a busy hub's
        quotas would count only the first page.
        """
        users: list[dict[str, Any]] = []
        offset = 0
        while True:
            r = await self.request("GET", "/users", params={"state": "active", "offset": offset, "limit": 200},
                                   headers={"Accept": "application/jupyterhub-pagination+json"})
            body = r.json()
            if isinstance(body, list):  # a hub without pagination answers with the whole list
                return users + body
            users += body.get("items") or []
            following = (body.get("_pagination") or {}).get("next")
            if not following or not body.get("items"):
                return users
            offset = int(following.get("offset", offset + len(body["items"])))

    async def active_servers(self) -> Listing:
        """The total quota's and the per-client quota's count of active servers, in one listing."""
        return Listing.from_users(await self.active_users())

    async def progress(self, user: str, server: str) -> AsyncIterator[dict[str, Any]]:
        """The server's spawn-progress events, as the hub streams them."""
        try:
            async with self._client.stream("GET", f"/users/{quote(user)}/servers/{quote(server)}/progress", timeout=None) as r:
                if r.status_code != 200:
                    log.warning("hub progress of %s/%s answered %d", user, server, r.status_code)
                    raise HubError(f"JupyterHub did not report the server's progress (HTTP {r.status_code}); please "
                                   "try again shortly.", "hub_error", 503)
                async for line in r.aiter_lines():
                    if line.startswith("data:"):
                        yield json.loads(line[5:])
        except httpx.TransportError as exc:
            log.warning("hub progress of %s/%s: the connection failed: %r", user, server, exc)
            raise HubError("JupyterHub went away during the launch; please try again shortly.", "hub_unreachable",
                           503) from None
