"""Private repositories in the resolver: seen through the operator's credentials, launched only as the operator says.

GitHub's API is answered by the test git host's stand-in (tests/support/githost.py), which shows a
private repository only to its token; git itself is real, serving ``/private/`` only to git that
sends the right credentials. The hub's user API (for ``forge_token``) is answered by a small local
HTTP server in this file, standing in for JupyterHub's ``GET /users/<name>`` with auth state.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import pytest
from pydantic import SecretStr

from kiln_resolver.providers import ResolveError
from kiln_resolver.providers.git import GitProvider
from kiln_resolver.providers.github import GitHubAPI, GitHubProvider
from kiln_resolver.settings import PrivateRepoRule, Settings
from kilnbus import MemoryBus, Phase
from kilnbus.credentials import CredentialStore, GitCredential

from ..support.githost import GitHost, git, make_repo
from .harness import FakeRegistry, Resolving

PASSWORD = "pr1vate-s3cret"


@pytest.fixture
def private(githost: GitHost) -> GitHost:
    make_repo(githost.root, "private/lab/secret", {"README.md": "private\n"})
    githost.stats.git_auth = GitCredential(url=githost.url, username="kiln", password=SecretStr(PASSWORD)).basic()
    make_repo(githost.root, "lab/secret", {"README.md": "private on GitHub\n"})
    githost.stats.github_private["lab/secret"] = "token operator-token"
    return githost


def credential(host: GitHost, prefix: str = "/private/", password: str = PASSWORD) -> GitCredential:
    return GitCredential(url=host.url + prefix, username="kiln", password=SecretStr(password))


async def test_git_repository_read_only_with_the_credential_is_private(private: GitHost) -> None:
    url = f"{private.url}/private/lab/secret.git"
    sha = git(private.root / "private" / "lab" / "secret", "rev-parse", "HEAD")
    spec = f"{quote(url, safe='')}/main"
    provider = GitProvider(["http"], ["127.0.0.1"], 10, CredentialStore([credential(private)], None))
    r = await provider.resolve(spec)
    assert (r.ref, r.private) == (sha, True)
    assert PASSWORD not in repr(r)
    # A commit given exactly is checked too: a private repository is never taken for public.
    assert (await provider.resolve(f"{quote(url, safe='')}/{sha}")).private
    public = await provider.resolve(f"{quote(private.url + '/org/demo', safe='')}/main")
    assert not public.private, "a repository git reads without the credential is public"
    assert private.stats.git_authorizations.count("") >= 2, "each private lookup was tried anonymously first"


@pytest.mark.parametrize("store", ["none", "wrong password", "another prefix"])
async def test_git_repository_without_a_working_credential_is_not_found(private: GitHost, store: str) -> None:
    credentials = {"none": [], "wrong password": [credential(private, password="nope")],
                   "another prefix": [credential(private, "/elsewhere/")]}[store]
    provider = GitProvider(["http"], ["127.0.0.1"], 10, CredentialStore(credentials, None))
    with pytest.raises(ResolveError) as e:
        await provider.resolve(f"{quote(private.url + '/private/lab/secret.git', safe='')}/main")
    assert e.value.cause == "repo_not_found"


async def test_github_says_which_repositories_are_private(private: GitHost) -> None:
    provider = GitHubProvider(GitHubAPI(private.github_api, "operator-token", 5), private.url)
    assert (await provider.resolve("lab/secret/main")).private
    assert not (await provider.resolve("org/demo/main")).private
    anonymous = GitHubProvider(GitHubAPI(private.github_api, "", 5), private.url)
    with pytest.raises(ResolveError) as e:
        await anonymous.resolve("lab/secret/main")
    assert e.value.cause == "repo_not_found", "without the operator's token it does not exist"
    assert await provider.can_read("lab/secret/main", "operator-token")
    assert not await provider.can_read("lab/secret/main", "someone-elses-token")


class _Hub(BaseHTTPRequestHandler):
    """JupyterHub's ``GET /users/<name>`` for a token with ``admin:auth_state``: each user's auth state."""

    states: dict[str, dict[str, str] | None]
    token = "token resolver-hub-token"

    def do_GET(self) -> None:
        name = self.path.rsplit("/", 1)[1]
        if self.headers.get("Authorization") != self.token or name not in self.states:
            self.send_response(403 if self.headers.get("Authorization") != self.token else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({"name": name, "auth_state": self.states[name]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def hub() -> Iterator[str]:
    handler = type("Hub", (_Hub,), {"states": {"alice": {"access_token": "operator-token"},
                                               "bob": {"access_token": "bobs-token"}, "carol": None}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hub/api"
    server.shutdown()


@pytest.fixture
async def resolving_with(private: GitHost, settings: Settings) -> AsyncIterator[object]:
    started: list[Resolving] = []

    async def start(**changes: object) -> Resolving:
        s = settings.model_copy(update={"github_access_token": "operator-token", **changes})
        r = Resolving(MemoryBus(s), s, FakeRegistry())
        started.append(await r.__aenter__())
        return r

    yield start
    for r in started:
        await r.__aexit__(None, None, None)


# (mode, extra settings, hub user, launched?)
CASES = [
    ("refuse", {}, None, False),
    ("refuse", {}, "alice", False),
    ("anyone", {}, None, True),
    ("signed_in", {}, None, False),
    ("signed_in", {}, "bob", True),
    ("allow_list", {"private_repo_allow": [PrivateRepoRule(user="alice|dave", pattern=r"gh/lab/")]}, "alice", True),
    ("allow_list", {"private_repo_allow": [PrivateRepoRule(user="alice|dave", pattern=r"gh/lab/")]}, "alicex", False),
    ("allow_list", {"private_repo_allow": [PrivateRepoRule(user="bob", pattern=r"gh/other/")]}, "bob", False),
    ("forge_token", {}, "alice", True),  # her own token reads it
    ("forge_token", {}, "bob", False),  # his does not
    ("forge_token", {}, "carol", False),  # the hub keeps no token for her
    ("forge_token", {}, "erin", False),  # the hub does not know her
    ("forge_token", {}, None, False),
]


@pytest.mark.parametrize(("mode", "extra", "user", "launched"), CASES)
async def test_who_may_launch_a_private_repository(resolving_with: object, hub: str, mode: str,
                                                   extra: dict[str, object], user: str | None, launched: bool) -> None:
    start = resolving_with
    r: Resolving = await start(private_repos=mode, hub_api_url=hub,  # type: ignore[operator]
                               hub_auth_state_token="resolver-hub-token", **extra)
    rid = await r.launch("gh", "lab/secret/main", hub_user=user)
    outcome = r.outcome(rid)
    if launched:
        assert outcome.phase is Phase.RESOLVED and len(r.builds()) == 1
    else:
        assert outcome.phase is Phase.FAILED and outcome.failure_cause == "private_repository", outcome
        assert "is a private repository" in (outcome.message or "")
        assert not r.builds() and not any(e.phase is Phase.RESOLVED for e in r.events(rid)), \
            "nothing about the private repository (its commit) was told before the refusal"
    # A public repository launches in every mode, anonymous or not.
    public = await r.launch("gh", "org/demo/main", hub_user=user)
    assert r.outcome(public).phase is Phase.RESOLVED


async def test_a_cached_resolution_is_checked_again_for_each_user(resolving_with: object, hub: str) -> None:
    r: Resolving = await resolving_with(private_repos="forge_token", hub_api_url=hub,  # type: ignore[operator]
                                        hub_auth_state_token="resolver-hub-token")
    assert r.outcome(await r.launch("gh", "lab/secret/main", hub_user="alice")).phase is Phase.RESOLVED
    assert r.outcome(await r.launch("gh", "lab/secret/main", hub_user="bob")).phase is Phase.FAILED
