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
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
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


def test_git_reads_no_credentials_of_the_service(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Neither git (curl: ~/.netrc) nor ssh (~/.ssh) may hand a stranger's remote the service's credentials."""
    import os
    import stat

    from kilnbus.urlguard import git_env

    service_home = tmp_path / "service-home"
    (service_home / ".ssh").mkdir(parents=True)
    (service_home / ".netrc").write_text("machine git.example.org login kiln password s3cret\n")
    monkeypatch.setenv("HOME", str(service_home))
    monkeypatch.setenv("ALL_PROXY", "http://proxy.example.org:3128")
    monkeypatch.setenv("all_proxy", "http://proxy.example.org:3128")
    env = git_env()
    home = Path(env["HOME"])
    assert home != service_home and home.is_dir() and list(home.iterdir()) == [], "an empty HOME of git's own"
    assert stat.S_IMODE(home.stat().st_mode) == 0o700 and home.stat().st_uid == os.getuid()
    assert str(service_home) not in " ".join(env.values())
    ssh = env["GIT_SSH_COMMAND"].split()
    assert ssh[:3] == ["ssh", "-F", "/dev/null"] and "IdentitiesOnly=yes" in ssh and "IdentityFile=/dev/null" in ssh
    assert "BatchMode=yes" in ssh
    # Control: the proxies the service is told to use still reach git.
    assert env["ALL_PROXY"] == env["all_proxy"] == "http://proxy.example.org:3128"
    assert git_env()["HOME"] != env["HOME"], "each caller gets its own"


async def test_a_private_host_is_refused_without_telling_its_address(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from kilnbus.urlguard import public_addresses

    caplog.set_level(logging.INFO, logger="kilnbus.urlguard")
    with pytest.raises(UnsafeRepoURL) as refused:
        await public_addresses("localhost", [])
    assert str(refused.value) == "The host 'localhost' is on a private network; this Binder does not launch from there."
    assert refused.value.cause == "private_host" and refused.value.status == 403
    assert "127.0.0.1" in caplog.text or "::1" in caplog.text, "control: the address it resolved to is in the log"
    assert await public_addresses("localhost", ["localhost"]), "control: an allowed host resolves"
