"""Launch URLs with credentials or redirects, at the resolver (the builder's re-check is in test_hostile_repos)."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest

from kiln_resolver.providers import ResolveError
from kiln_resolver.providers.git import GitProvider
from kilnbus.urlguard import UnsafeRepoURL, parse_repo_url, redact

from ..support.githost import GitHost
from .conftest import make_hostile_repo
from .test_hostile_repos import _Redirect

SCHEMES = ["https", "http", "git", "ssh"]


@pytest.mark.parametrize("url", ["https://alice:tok3n@github.com/o/r.git", "https://tok3n@github.com/o/r",
                                 "http://x-oauth:tok3n@example.org/r.git", "ssh://git:tok3n@example.org/r.git",
                                 "git://tok3n@example.org/r.git"])
async def test_resolver_refuses_credentials_in_git_urls(url: str) -> None:
    with pytest.raises(ResolveError) as refused:
        await GitProvider(SCHEMES, [], 5).resolve(f"{quote(url, safe='')}/HEAD")
    assert refused.value.cause == "credentials_in_url" and refused.value.status == 400
    assert "tok3n" not in str(refused.value)


def test_an_ssh_account_name_is_not_a_credential() -> None:
    """Control: ssh://git@host names an account, as every SSH clone URL does."""
    assert parse_repo_url("ssh://git@example.org/o/r.git", SCHEMES).hostname == "example.org"
    assert parse_repo_url("https://example.org/o/r.git", SCHEMES).hostname == "example.org"
    with pytest.raises(UnsafeRepoURL):
        parse_repo_url("https://-oProxyCommand=x/r.git", SCHEMES)
    assert redact("https://alice:tok3n@example.org/r") == "https://***@example.org/r"


async def test_resolver_follows_no_redirect(githost: GitHost, tmp_path: Path) -> None:
    url, ref = make_hostile_repo(githost, "moved", {"index.ipynb": "{}"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (_Redirect,), {"target": githost.url}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    provider = GitProvider(SCHEMES, ["127.0.0.1"], 10)
    try:
        with pytest.raises(ResolveError):
            await provider.resolve(f"{quote(f'http://127.0.0.1:{server.server_address[1]}/t/moved', safe='')}/HEAD")
    finally:
        server.shutdown()
    assert (await provider.resolve(f"{quote(url, safe='')}/HEAD")).ref == ref  # control: the target itself resolves


def test_git_never_sees_kilns_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """git runs against strangers' remotes: Kiln's settings (passwords, keys) stay out of its environment."""
    from kilnbus.urlguard import git_env

    monkeypatch.setenv("KILN_KAFKA_PASSWORD", "s3cret")
    monkeypatch.setenv("KILN_TOKEN_SEAL_KEYS", "k3y")
    monkeypatch.setenv("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
    env = git_env()
    assert not {k for k in env if k.startswith("KILN_")}, env
    assert "s3cret" not in env.values() and "k3y" not in env.values()
    # Control: what git needs to run and reach hosts is passed on.
    assert env["PATH"] and env["SSL_CERT_FILE"] == "/etc/ssl/certs/ca-certificates.crt"
    assert env["GIT_TERMINAL_PROMPT"] == "0" and env["GIT_CONFIG_GLOBAL"] == "/dev/null"
