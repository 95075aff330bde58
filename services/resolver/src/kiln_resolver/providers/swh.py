"""Software Heritage: an archived directory, revision or release by its SWHID, beyond BinderHub.

``swh/swh:1:dir:<id>`` names exactly one tree; ``swh:1:rev:<id>`` (a commit) and ``swh:1:rel:<id>``
(a release) name one through the archive's API (``/api/1/revision/<id>/``, ``/api/1/release/<id>/``).
Qualifiers (``;origin=...``) do not change what is named and are dropped. The version is the
directory's id, so the image is ``swh-<dir id>`` tagged with it whichever way it was named. The
builder has it cooked by the vault (``/api/1/vault/flat/swh:1:dir:<id>/``) and unpacks the tarball.
"""

from __future__ import annotations

import re

from kiln_resolver.providers.base import Resolution, ResolveError
from kiln_resolver.providers.datahttp import api_json
from kilnbus.guardedhttp import GuardedHTTP

_SWHID = re.compile(r"^swh:1:(?P<kind>dir|rev|rel):(?P<id>[0-9a-f]{40})$")
_HEX = re.compile(r"^[0-9a-f]{40}$")


class SoftwareHeritageProvider:
    """``swh/<SWHID of a directory, revision or release>``."""

    name = "swh"
    content = "swh"

    def __init__(self, http: GuardedHTTP, base_url: str) -> None:
        self._http = http
        self._web = base_url.rstrip("/")
        self._api = f"{self._web}/api/1"

    async def resolve(self, spec: str) -> Resolution:
        core = spec.split(";", 1)[0].strip()
        found = _SWHID.match(core)
        if found is None:
            raise ResolveError(f"{spec!r} is not the SWHID of a directory, revision or release "
                               "(swh:1:dir|rev|rel:<40 hexadecimal digits>).", "bad_spec", 400)
        kind, ident = found.group("kind"), found.group("id")
        if kind == "rel":
            target_kind, ident = await self._follow("release", ident, ("target_type", "target"))
            if target_kind == "revision":
                kind = "rev"
            elif target_kind == "directory":
                kind = "dir"
            else:
                raise ResolveError(f"Release {found.group('id')} is of a {target_kind}, not of source code.", "bad_spec", 400)
        if kind == "rev":
            _, ident = await self._follow("revision", ident, ("", "directory"))
        await self._follow("directory", ident, None)
        directory = f"swh:1:dir:{ident}"
        return Resolution(provider=self.name, spec=spec, repo_url=f"{self._api}/vault/flat/{directory}/", ref=ident,
                          ref_url=f"{self._web}/{directory}", resolved_spec=directory, build_slug=f"swh-{ident}",
                          content=self.content)

    async def _follow(self, kind: str, ident: str, fields: tuple[str, str] | None) -> tuple[str, str]:
        """GET ``/<kind>/<id>/``: the (type, id) its ``fields`` name, or ("", "") only checking that it exists."""
        status, body = await api_json(self._http, f"{self._api}/{kind}/{ident}/", "Software Heritage")
        if status == 404:
            raise ResolveError(f"Software Heritage has no {kind} {ident}.", "repo_not_found", 404)
        if status != 200:
            raise ResolveError(f"Software Heritage answered {status} for {kind} {ident}.", "provider_unreachable", 503)
        if fields is None:
            return "", ""
        kind_field, id_field = fields
        target = body.get(id_field) if isinstance(body, dict) else None
        target_kind = str(body.get(kind_field, "")) if kind_field and isinstance(body, dict) else ""
        if not isinstance(target, str) or not _HEX.match(target):
            raise ResolveError(f"Software Heritage gave {kind} {ident} no {id_field}.", "provider_unreachable", 502)
        return target_kind, target
