"""Software Heritage: a SWHID (``swh:1:<dir|rev|rel|snp>:<sha1_git>``), resolved to the directory to build.

BinderHub has no such provider; repo2docker's ``swhid`` content provider fetches a directory, or a
revision's directory. Here a release and a snapshot (its ``HEAD`` branch) resolve too, through the
archive's API (``/api/1/<object kind>/<id>/``) down to a directory. That directory is the exact
version: the image is ``swh-<directory id>`` tagged with it, so a revision, a release and a snapshot
that lead to the same tree share one image. The builder is told the vault's URL for that directory
(``<api>/vault/flat/swh:1:dir:<id>/``), which it asks to cook and then downloads.

Qualifiers (``;origin=...;visit=...;path=...``) say where an object was seen, not what it is, so
they are dropped: the core SWHID names the same object with or without them.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from kiln_resolver.providers.base import Resolution, ResolveError
from kiln_resolver.providers.datahttp import api_json
from kilnbus.guardedhttp import GuardedHTTP

_SWHID = re.compile(r"^swh:1:([a-z]{3}):([0-9a-f]{40})$")
_SHA1_GIT = re.compile(r"^[0-9a-f]{40}$")
# SWHID kind -> the API's name for it (and the object kinds a release or a snapshot branch can point to).
_API_NAME = {"dir": "directory", "rev": "revision", "rel": "release", "snp": "snapshot"}
_KIND = {name: kind for kind, name in _API_NAME.items()}
# Objects followed from the one asked for: a snapshot's HEAD alias, its branch, a release, a revision. A
# release of a release of ... is legal but has no end in principle; an honest chain is far shorter.
_MAX_HOPS = 8


def core_swhid(spec: str) -> tuple[str, str]:
    """(kind, sha1_git) of the SWHID ``spec``, qualifiers dropped; ResolveError (bad_spec) when it is none Kiln builds."""
    core = spec.strip().split(";", 1)[0]
    m = _SWHID.match(core)
    if not m:
        raise ResolveError(f"{spec!r} is not a SWHID (swh:1:<dir, rev, rel or snp>:<40 hexadecimal digits>).",
                           "bad_spec", 400)
    kind, sha1_git = m.groups()
    if kind == "cnt":
        raise ResolveError(f"{core} is a single file; launch the SWHID of a directory, revision, release or snapshot "
                           "holding it.", "bad_spec", 400)
    if kind == "ori":
        raise ResolveError(f"{core} names an origin (a repository's URL), not a version of it; launch the SWHID of one "
                           "of its snapshots, or the repository itself.", "bad_spec", 400)
    if kind not in _API_NAME:
        raise ResolveError(f"{core}: {kind!r} is not a kind of Software Heritage object.", "bad_spec", 400)
    return kind, sha1_git


class SwhProvider:
    """``swh``: objects of the Software Heritage archive, each resolved through its API to a directory."""

    name = "swh"
    content = "swh"

    def __init__(self, http: GuardedHTTP, base_url: str, token: str = "") -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._api = f"{self._base}/api/1"
        # The client sends no header to a host a redirect leads to that it was not meant for (kilnbus.guardedhttp).
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def _get(self, path: str, swhid: str) -> Any:
        status, body = await api_json(self._http, f"{self._api}/{path}", "Software Heritage", self._headers)
        if status == 404:
            raise ResolveError(f"{swhid} is not in the Software Heritage archive.", "repo_not_found", 404)
        if status in (401, 403):
            raise ResolveError(f"The Software Heritage API refused Kiln's request ({status}): its token may be wrong.",
                               "provider_unreachable", 503)
        if status != 200 or not isinstance(body, dict | list):
            raise ResolveError(f"Software Heritage answered {status} for {swhid}.", "provider_unreachable", 503)
        return body

    @staticmethod
    def _pointer(api_kind: Any, target: Any, swhid: str) -> tuple[str, str]:
        """(kind, sha1_git) of what ``swhid`` points to, as the API says, checked before it becomes part of a URL."""
        if api_kind not in _KIND:
            raise ResolveError(f"{swhid} points to a {api_kind}, not something Kiln can build a directory from.",
                               "ref_not_found", 404)
        if not isinstance(target, str) or not _SHA1_GIT.match(target):
            raise ResolveError(f"Software Heritage names no {api_kind} for {swhid}.", "ref_not_found", 404)
        return _KIND[api_kind], target

    async def directory(self, kind: str, sha1_git: str) -> str:
        """The sha1_git of the directory the object ``swh:1:<kind>:<sha1_git>`` leads to (checked to exist)."""
        branch = "HEAD"  # a snapshot is launched at its HEAD, as a clone checks it out
        for _ in range(_MAX_HOPS):
            swhid = f"swh:1:{kind}:{sha1_git}"
            if kind == "dir":
                await self._get(f"directory/{sha1_git}/", swhid)
                return sha1_git
            if kind == "rev":
                body = await self._get(f"revision/{sha1_git}/", swhid)
                kind, sha1_git = self._pointer("directory", body.get("directory") if isinstance(body, dict) else None, swhid)
            elif kind == "rel":
                body = await self._get(f"release/{sha1_git}/", swhid)
                body = body if isinstance(body, dict) else {}
                kind, sha1_git = self._pointer(body.get("target_type"), body.get("target"), swhid)
            else:  # a snapshot: its branch named ``branch``
                # One branch asked for by name: a snapshot can hold thousands, listed a page at a time.
                body = await self._get(f"snapshot/{sha1_git}/?branches_from={quote(branch, safe='')}&branches_count=1",
                                       swhid)
                found = body.get("branches", {}).get(branch) if isinstance(body, dict) else None
                if not isinstance(found, dict):
                    raise ResolveError(f"{swhid} has no {branch} branch to launch.", "ref_not_found", 404)
                if found.get("target_type") == "alias" and isinstance(found.get("target"), str):
                    branch = found["target"]  # HEAD -> refs/heads/main: the same snapshot, another branch
                    continue
                kind, sha1_git = self._pointer(found.get("target_type"), found.get("target"), f"branch {branch} of {swhid}")
            if kind == "snp":
                branch = "HEAD"
        raise ResolveError(f"swh:1:{kind}:{sha1_git} leads through more than {_MAX_HOPS} objects before a directory.",
                           "ref_not_found", 404)

    async def resolve(self, spec: str) -> Resolution:
        kind, sha1_git = core_swhid(spec)
        directory = await self.directory(kind, sha1_git)
        tree = f"swh:1:dir:{directory}"
        return Resolution(provider=self.name, spec=spec, repo_url=f"{self._api}/vault/flat/{tree}/", ref=directory,
                          ref_url=f"{self._base}/{tree}", resolved_spec=f"swh:1:{kind}:{sha1_git}",
                          build_slug=f"swh-{directory}", content=self.content)
