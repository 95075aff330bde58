"""Private repositories in the builder: fetched with the operator's credential, which goes nowhere else.

Real repositories on the loopback git host (tests/support/githost.py), whose ``/private/`` path
answers git only when it sends the right ``Authorization``; its LFS stand-in answers the batch API
(standing in for GitHub's LFS server). The builder's own ``GitFetcher`` checks them out; a GitHub
App's token comes from a stand-in for GitHub's ``POST /app/installations/<id>/access_tokens`` in this
file, which checks the App's JWT with the App's public key.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from kiln_builder.errors import FetchFailed
from kiln_builder.fetch import GitFetcher
from kilnbus.credentials import CredentialStore, GitCredential, GitHubApp, GitHubAppError, credential_for, git_auth_env

from ..support.githost import GitHost, git, make_repo
from .test_checkout_git import with_submodules
from .test_checkout_lfs import ATTRIBUTES, pointer
from .test_hostile_repos import policy

PASSWORD = "bu1ld-s3cret-Zq"


def everything_under(*roots: Path) -> bytes:
    """Every file's bytes under ``roots`` (checkouts, mirrors, their .git): where a secret must not be."""
    data = bytearray()
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                path = os.path.join(folder, name)
                if not os.path.islink(path):
                    data += Path(path).read_bytes()
    return bytes(data)


@pytest.fixture
def private(githost: GitHost) -> GitHost:
    githost.stats.git_auth = GitCredential(url=githost.url, username="kiln", password=SecretStr(PASSWORD)).basic()
    return githost


async def fetch_with(store: CredentialStore, url: str, ref: str, work: Path) -> tuple[Path, list[str]]:
    lines: list[str] = []

    async def on_line(line: str) -> None:
        lines.append(line)

    dest = work / "checkout"
    fetcher = GitFetcher(policy(), work / "cache", store.for_url)
    await asyncio.wait_for(fetcher.fetch(url, ref, dest, on_line), 60)
    return dest, lines


def cred(host: GitHost, prefix: str = "/private/", password: str = PASSWORD) -> GitCredential:
    return GitCredential(url=host.url + prefix, username="kiln", password=SecretStr(password))


async def test_a_private_repository_is_fetched_and_the_credential_is_nowhere_in_it(private: GitHost, tmp_path: Path) -> None:
    repo = make_repo(private.root, "private/lab/secret", {"README.md": "private\n"})
    sha = git(repo, "rev-parse", "HEAD")
    url = f"{private.url}/private/lab/secret.git"
    dest, lines = await fetch_with(CredentialStore([cred(private)], None), url, sha, tmp_path)
    assert (dest / "README.md").read_text() == "private\n"
    assert git(dest, "rev-parse", "HEAD") == sha and git(dest, "remote", "get-url", "origin") == url
    secret_forms = (PASSWORD.encode(), cred(private).basic().encode(), cred(private).basic().split()[1].encode())
    stored = everything_under(dest, tmp_path / "cache")
    assert not any(form in stored for form in secret_forms), "no trace in the checkout, its .git or the mirror"
    assert not any(PASSWORD in line or cred(private).basic() in line for line in lines)
    # A new commit: the mirror fetches again, with the credential again.
    (repo / "more.txt").write_text("more\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "more")
    dest, _ = await fetch_with(CredentialStore([cred(private)], None), url, git(repo, "rev-parse", "HEAD"), tmp_path)
    assert (dest / "more.txt").exists()


@pytest.mark.parametrize("credentials", ["none", "wrong", "elsewhere"])
async def test_without_a_working_credential_the_fetch_fails_saying_so(private: GitHost, tmp_path: Path,
                                                                       credentials: str) -> None:
    repo = make_repo(private.root, "private/lab/secret", {"README.md": "private\n"})
    store = CredentialStore({"none": [], "wrong": [cred(private, password="nope")],
                             "elsewhere": [cred(private, "/other/")]}[credentials], None)
    with pytest.raises(FetchFailed, match="Could not clone") as e:
        await fetch_with(store, f"{private.url}/private/lab/secret.git", git(repo, "rev-parse", "HEAD"), tmp_path)
    assert PASSWORD not in str(e.value) and "nope" not in str(e.value)


async def test_submodules_never_get_the_credential(private: GitHost, tmp_path: Path) -> None:
    """A repository may point a submodule at another private repository the operator's credential reads:
    fetching it with the credential would hand that repository to whoever launches this one."""
    other = make_repo(private.root, "private/lab/other", {"secret.txt": "another team's\n"})
    url, ref = with_submodules(private, "pub", {"README.md": "public\n"},
                               {"vendor": (f"{private.url}/private/lab/other.git", git(other, "rev-parse", "HEAD"))})
    private.stats.git_authorizations.clear()
    with pytest.raises(FetchFailed, match="Could not clone"):
        await fetch_with(CredentialStore([cred(private, "/")], None), url, ref, tmp_path)
    assert private.stats.git_authorizations and set(private.stats.git_authorizations) == {""}, \
        "the submodule's host was asked without any credential"


async def test_the_lfs_batch_request_carries_the_credential_and_downloads_only_their_own_headers(
        private: GitHost, tmp_path: Path) -> None:
    data = os.urandom(50_000)
    oid = hashlib.sha256(data).hexdigest()
    private.lfs.objects[oid] = data
    repo = make_repo(private.root, "private/lab/lfs", {".gitattributes": ATTRIBUTES, "d.bin": pointer(data)})
    dest, _ = await fetch_with(CredentialStore([cred(private)], None), f"{private.url}/private/lab/lfs.git",
                               git(repo, "rev-parse", "HEAD"), tmp_path)
    assert (dest / "d.bin").read_bytes() == data
    assert private.stats.git_authorizations[-1] == cred(private).basic(), "the batch request was authorized"


def test_credentials_cover_what_git_would_send_them_to() -> None:
    host = GitCredential(url="https://git.example.org", password=SecretStr("a"))
    group = GitCredential(url="https://git.example.org/lab/", password=SecretStr("b"))
    assert credential_for("https://git.example.org/lab/x.git", [host, group]) is group, "the most specific"
    assert credential_for("https://git.example.org/laboratory/x.git", [host, group]) is host, "whole segments only"
    assert credential_for("https://git.example.org:8443/lab/x", [host, group]) is None, "another port"
    assert credential_for("http://git.example.org/lab/x", [host, group]) is None, "another scheme"
    assert credential_for("https://git.example.org.evil.test/lab/x", [host, group]) is None
    for odd in ("https://git.example.org/lab/../other/x.git", "https://git.example.org/lab/%2e%2e/other/x",
                "https://git.example.org//lab/x", "https://git.example.org/lab/x?y=1", "https://u@git.example.org/lab/x"):
        assert credential_for(odd, [group]) is None, odd
    env = git_auth_env("https://git.example.org/lab/x.git", group)
    assert env["GIT_CONFIG_KEY_0"] == "http.https://git.example.org/lab/x.git.extraHeader", "scoped to the repository"
    for bad in ("ftp://h/", "https://user@h/", "https://h/?q=1", "h/x"):
        with pytest.raises(ValueError):
            GitCredential(url=bad, password=SecretStr("x"))
    assert "password=SecretStr('**********')" in repr(group), "the password is not shown"


class _GitHubApps(BaseHTTPRequestHandler):
    """GitHub's installation-token endpoint: checks the JWT (RS256, the App's key, iss = app id)."""

    public_key: bytes
    minted: list[str]
    refuse = False

    def do_POST(self) -> None:
        token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        try:
            claims = jwt.decode(token, self.public_key, algorithms=["RS256"])
            ok = claims["iss"] == "4242" and self.path == "/app/installations/77/access_tokens" and not self.refuse
        except jwt.PyJWTError:
            ok = False
        body = {"token": f"ghs_{len(self.minted)}", "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                time.gmtime(time.time() + 3600))}
        if ok:
            self.minted.append(body["token"])
        data = json.dumps(body if ok else {"message": "A JSON web token could not be decoded"}).encode()
        self.send_response(201 if ok else 401)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def github_app() -> Iterator[tuple[GitHubApp, type[_GitHubApps]]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    handler = type("Apps", (_GitHubApps,), {"public_key": public, "minted": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    api = f"http://127.0.0.1:{server.server_address[1]}"
    yield GitHubApp(app_id=4242, installation_id=77, private_key=SecretStr(pem), api_url=api,
                    web_url="https://github.example"), handler
    server.shutdown()


async def test_a_github_app_token_is_minted_once_and_reused(github_app: tuple[GitHubApp, type[_GitHubApps]]) -> None:
    app, handler = github_app
    store = CredentialStore([], app)
    first = await store.for_url("https://github.example/lab/secret")
    again = await store.for_url("https://github.example/lab/other")
    assert first is not None and again is not None
    assert first.password.get_secret_value() == "ghs_0" == again.password.get_secret_value()
    assert first.username == "x-access-token" and handler.minted == ["ghs_0"], "one token for its hour"
    assert await store.for_url("https://elsewhere.example/lab/secret") is None
    await store.aclose()


async def test_a_refused_github_app_says_so_without_its_key(github_app: tuple[GitHubApp, type[_GitHubApps]],
                                                            tmp_path: Path) -> None:
    app, handler = github_app
    handler.refuse = True
    store = CredentialStore([], app)
    with pytest.raises(GitHubAppError, match="refused"):
        await store.for_url("https://github.example/lab/secret")
    with pytest.raises(FetchFailed, match="cannot be fetched") as e:
        await fetch_with(store, "https://github.example/lab/secret", "a" * 40, tmp_path)
    assert "PRIVATE KEY" not in str(e.value)
    await store.aclose()


async def test_a_submodule_cannot_take_a_private_repository_from_the_builders_mirror(private: GitHost, tmp_path: Path) -> None:
    """The private repository is built once, with the credential (its mirror now holds it); a public
    repository then names it as a submodule at a commit it holds: the uncredentialed fetch must ask
    the server (and be refused), not find it in that mirror."""
    secret = make_repo(private.root, "private/lab/secret", {"README.md": "shared start\n"})
    shared = git(secret, "rev-parse", "HEAD")
    url = f"{private.url}/private/lab/secret.git"
    await fetch_with(CredentialStore([cred(private)], None), url, shared, tmp_path)
    top_url, top = with_submodules(private, "pub2", {"README.md": "public\n"}, {"vendor": (url, shared)})
    with pytest.raises(FetchFailed, match="Could not clone"):
        await fetch_with(CredentialStore([cred(private, "/private/")], None), top_url, top, tmp_path)
