"""Any git repository over HTTP(S), git or ssh, resolved with ``git ls-remote``."""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from kiln_resolver.netguard import check_public, check_shape
from kiln_resolver.providers.base import Resolution, ResolveError
from kiln_resolver.providers.gitcli import ls_remote
from kilnbus.credentials import CredentialStore, GitHubAppError, git_auth_env

_SHA = re.compile(r"^[0-9a-f]{40}$")


class GitProvider:
    """``git/<url-encoded URL>/<ref>``: any git repository, private ones through the operator's credentials."""

    name = "git"

    def __init__(self, allowed_protocols: list[str], allowed_private_hosts: list[str], timeout: float,
                 credentials: CredentialStore | None = None) -> None:
        self._protocols = allowed_protocols
        self._allowed_hosts = allowed_private_hosts
        self._timeout = timeout
        self._credentials = credentials

    async def resolve(self, spec: str) -> Resolution:
        encoded_url, _, ref = spec.rpartition("/")
        url = unquote(encoded_url)
        ref = unquote(ref)
        if m := re.match(r"^([\w.-]+)@([\w.-]+):(.+)$", url):  # scp-like user@host:path
            url = f"ssh://{m.group(1)}@{m.group(2)}/{m.group(3)}"
        # Scheme, remote helpers (ext::), credentials in the URL, host: the rule the builder applies too.
        parts = check_shape(url, self._protocols)
        assert parts.hostname is not None
        await check_public(parts.hostname, self._allowed_hosts)
        private = False
        try:
            credential = await self._credentials.for_url(url) if self._credentials else None
        except GitHubAppError as exc:
            raise ResolveError(f"{exc} Kiln cannot resolve this repository right now.", "provider_unreachable", 503) from None
        if credential:
            # Asked without the credential first: only a repository that needs it is private.
            try:
                found = await ls_remote(url, "HEAD" if _SHA.match(ref) else ref, self._timeout)
            except ResolveError as exc:
                if exc.cause != "repo_not_found":
                    raise
                found = await ls_remote(url, "HEAD" if _SHA.match(ref) else ref, self._timeout, git_auth_env(url, credential))
                private = True
            if not _SHA.match(ref) and found is None:
                raise ResolveError(f"Could not resolve ref {ref!r} of {url}: no such branch, tag or commit.", "ref_not_found", 404)
            sha = ref if _SHA.match(ref) else str(found)
        elif _SHA.match(ref):
            sha = ref  # already exact; the build's fetch will say if it does not exist
        else:
            found = await ls_remote(url, ref, self._timeout)
            if found is None:
                raise ResolveError(f"Could not resolve ref {ref!r} of {url}: no such branch, tag or commit.", "ref_not_found", 404)
            sha = found
        return Resolution(provider=self.name, spec=spec, repo_url=url, ref=sha, ref_url=url,
                          resolved_spec=f"{quote(url, safe='')}/{sha}", build_slug=url, private=private)
