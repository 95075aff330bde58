"""Software Heritage's vault: a directory cooked into a tar.gz on request, waited for, then downloaded.

The resolver hands the builder ``<archive>/api/1/vault/flat/swh:1:dir:<id>/`` (``content`` ``swh``).
The archive keeps objects deduplicated, not as archives, so a directory must first be "cooked":
a POST to that URL asks for it (or finds it already cooked), a GET says how far it got (``new``,
``pending``, ``done`` or ``failed``, with a progress message), and once it is ``done`` its
``fetch_url`` serves a tar.gz holding one folder named by the SWHID (older vaults: by the bare id),
which becomes the checkout. repo2docker uses the vault's older ``/vault/directory/<id>/``
endpoints, which the archive keeps only as aliases of these.

The wait is bounded (``max_wait_s``) and every answer is a line in the build log, so a user sees a
cold directory being prepared rather than a silent build. Polls back off (``first_poll_s`` doubling
up to ``max_poll_s``), since the archive limits anonymous requests per hour. The token, when set,
goes to the archive's API only: never with the download, which redirects to a storage host.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

from kiln_builder.datasources import Layout, Listing, RemoteFile, shown
from kiln_builder.errors import FetchFailed
from kiln_builder.executor import LineSink
from kilnbus.guardedhttp import GuardedHTTP

_FLAT = re.compile(r"/vault/flat/(swh:1:dir:([0-9a-f]{40}))/?$")
_MESSAGE_CHARS = 200  # of the vault's progress message, in the log and in errors


def _said(message: Any) -> str:
    """The vault's progress message on one line of ordinary length (it is shown in the build log)."""
    return " ".join(str(message or "").split())[:_MESSAGE_CHARS]


@dataclass(frozen=True)
class _Receipt:
    status: str
    message: str
    fetch_url: str


@dataclass(frozen=True)
class SwhVault:
    """How the builder talks to the vault: the archive it trusts with its token, and how long it waits."""

    archive_url: str = "https://archive.softwareheritage.org"
    token: str = ""
    max_wait_s: float = 300.0
    first_poll_s: float = 2.0
    max_poll_s: float = 30.0

    def _headers(self, url: str) -> dict[str, str]:
        base, target = urlsplit(self.archive_url.rstrip("/")), urlsplit(url)
        same = (target.scheme, target.hostname, target.port) == (base.scheme, base.hostname, base.port)
        if not self.token or not same or not target.path.startswith(base.path + "/"):
            return {}
        return {"Authorization": f"Bearer {self.token}"}

    def _receipt(self, status: int, body: object, swhid: str) -> _Receipt:
        if status == 404:
            raise FetchFailed(f"{swhid} is not in the Software Heritage archive (the vault answered 404).", "fetch_failed")
        if status == 429:
            raise FetchFailed("The Software Heritage vault is limiting Kiln's requests; try again later.", "fetch_failed")
        if status in (401, 403):
            raise FetchFailed(f"The Software Heritage vault refused Kiln's request ({status}): its token may be wrong.",
                              "fetch_failed")
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("status"), str):
            raise FetchFailed(f"The Software Heritage vault answered {status} for {swhid}.", "fetch_failed")
        fetch_url = body.get("fetch_url")
        return _Receipt(body["status"], _said(body.get("progress_message")), fetch_url if isinstance(fetch_url, str) else "")

    async def listing(self, http: GuardedHTTP, repo_url: str, on_line: LineSink) -> Listing:
        """Ask the vault to cook the directory ``repo_url`` names, wait until it has, and list its tarball."""
        found = _FLAT.search(urlsplit(repo_url).path)
        if found is None:
            raise FetchFailed(f"{shown(repo_url)} is not a Software Heritage vault URL of a directory.", "fetch_failed")
        swhid, sha1_git = found.groups()
        headers = self._headers(repo_url)
        await on_line(f"Asking the Software Heritage vault for {swhid}\n")
        status, body = await http.post_json(repo_url, {}, headers=headers)
        receipt = self._receipt(status, body, swhid)
        loop = asyncio.get_running_loop()
        started, delay = loop.time(), self.first_poll_s
        while receipt.status not in ("done", "failed"):
            waited = loop.time() - started
            await on_line(f"Software Heritage vault: {receipt.status}"
                          f"{f' ({receipt.message})' if receipt.message else ''}, {waited:.0f}s so far\n")
            if waited >= self.max_wait_s:
                raise FetchFailed(f"The Software Heritage vault had not finished preparing {swhid} after "
                                  f"{self.max_wait_s:g} seconds (it said: {receipt.status}"
                                  f"{f', {receipt.message}' if receipt.message else ''}). It goes on without Kiln: "
                                  "launch again later.", "fetch_failed")
            await asyncio.sleep(min(delay, self.max_wait_s - waited))
            delay = min(delay * 2, self.max_poll_s)
            status, body, _ = await http.get_json(repo_url, headers=headers)
            receipt = self._receipt(status, body, swhid)
        if receipt.status == "failed":
            raise FetchFailed(f"The Software Heritage vault could not prepare {swhid}: "
                              f"{receipt.message or 'it gave no reason'}.", "fetch_failed")
        if not receipt.fetch_url:
            raise FetchFailed(f"The Software Heritage vault prepared {swhid} but said nowhere to download it.",
                              "fetch_failed")
        await on_line(f"Software Heritage vault: {swhid} is ready\n")
        return Listing(f"Software Heritage directory {swhid}",
                       [RemoteFile(f"{swhid.replace(':', '_')}.tar.gz", urljoin(repo_url, receipt.fetch_url))],
                       Layout.SINGLE_TARBALL, roots=(swhid, sha1_git))
