"""CKAN: a dataset by its URL on any CKAN installation (or those the operator lists), at a version.

As BinderHub: the spec is the dataset's URL (``<site>/dataset/<name>``, CKAN possibly under a path
prefix), optionally at an activity (``.../dataset/<name>/history/<activity id>`` or
``?activity_id=<id>``); the version is the dataset's ``metadata_modified`` in whole seconds, so the
image is tagged ``<name>.v<seconds>`` (BinderHub's ref) and named ``ckan-<site>-<name>``: BinderHub's
``ckan-<name>`` would let anyone's CKAN site, with a dataset of the same name and time, have its
image served for another site's dataset. The builder is handed the API call that
returns that exact version (``package_show``, or ``activity_data_show`` for an activity) and
downloads the resources it lists.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from kiln_resolver.providers.base import Resolution, ResolveError
from kiln_resolver.providers.datahttp import api_json, under
from kilnbus.guardedhttp import GuardedHTTP

# A dataset's name or id as CKAN allows them (lowercase letters, digits, - and _), or an activity's id.
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,200}$")


class CKANProvider:
    """``ckan/<url-encoded dataset URL>``."""

    name = "ckan"
    content = "ckan"

    def __init__(self, http: GuardedHTTP, allowed_sites: list[str]) -> None:
        self._http = http
        self._sites = [s.rstrip("/") for s in allowed_sites]

    async def resolve(self, spec: str) -> Resolution:
        url = unquote(spec)
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname or "/dataset/" not in parts.path:
            raise ResolveError(f"{url!r} is not a CKAN dataset's URL (https://<site>/dataset/<name>).", "bad_spec", 400)
        if self._sites and not any(under(url, site) is not None for site in self._sites):
            raise ResolveError(f"{parts.hostname} is not a CKAN site this Binder launches from.", "banned", 403)
        prefix, _, rest = parts.path.partition("/dataset/")
        segments = rest.strip("/").split("/")
        dataset = segments[0]
        activity = segments[segments.index("history") + 1] if "history" in segments[:-1] else \
            parse_qs(parts.query).get("activity_id", [""])[0]
        if not _NAME.match(dataset) or activity and not _NAME.match(activity):
            raise ResolveError(f"{url!r} names no CKAN dataset.", "bad_spec", 400)
        api = parts._replace(path=f"{prefix}/api/3/action/", query="", fragment="").geturl()
        call = f"{api}activity_data_show?{urlencode({'id': activity, 'object_type': 'package'})}" if activity else \
            f"{api}package_show?{urlencode({'id': dataset})}"
        status, body = await api_json(self._http, call, "CKAN")
        result = body.get("result") if isinstance(body, dict) else None
        if status in (403, 404) or status == 200 and not isinstance(result, dict):
            what = f"activity {activity} of dataset {dataset}" if activity else f"dataset {dataset}"
            raise ResolveError(f"CKAN at {parts.hostname} has no {what} (or it is not public).", "repo_not_found", 404)
        if status != 200:
            raise ResolveError(f"CKAN answered {status} for dataset {dataset}.", "provider_unreachable", 503)
        assert isinstance(result, dict)
        try:
            stamp = int(datetime.fromisoformat(str(result.get("metadata_modified"))).replace(tzinfo=UTC).timestamp())
        except ValueError:
            raise ResolveError(f"CKAN gave dataset {dataset} no modification time.", "provider_unreachable", 502) from None
        return Resolution(provider=self.name, spec=spec, repo_url=call, ref=f"{dataset}.v{stamp}", ref_url=url,
                          resolved_spec=spec, build_slug=f"ckan-{parts.hostname}-{dataset}", content=self.content)
