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
from kiln_resolver.providers.github import GistProvider, GitHubAPI, GitHubProvider
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
    with pytest.raises(ResolveError) as e:
        await provider.resolve(f"{quote(url, safe='')}/no-such-branch")
    assert (e.value.cause, e.value.private) == ("ref_not_found", True)
    with pytest.raises(ResolveError) as e:
        await provider.resolve(f"{quote(private.url + '/org/demo', safe='')}/no-such-branch")
    assert (e.value.cause, e.value.private) == ("ref_not_found", False)


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
    assert str(e.value) == str(provider.not_found("lab/secret/x"))
    for github, private_ref in ((provider, True), (anonymous, False)):
        with pytest.raises(ResolveError) as e:
            await github.resolve("org/demo/no-such-branch" if github is anonymous else "lab/secret/no-such-branch")
        assert (e.value.cause, e.value.private) == ("ref_not_found", private_ref)
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
def hub_states() -> dict[str, dict[str, str] | None]:
    return {"alice": {"access_token": "operator-token"}, "bob": {"access_token": "bobs-token"}, "carol": None}


@pytest.fixture
def hub(hub_states: dict[str, dict[str, str] | None]) -> Iterator[str]:
    handler = type("Hub", (_Hub,), {"states": hub_states})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
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


GH = {"auth_state_tokens": {"gh": "access_token"}}  # GitHubOAuthenticator keeps the user's token there

# (mode, extra settings, hub user, launched?)
CASES = [
    ("refuse", {}, None, False),
    ("refuse", {}, "alice", False),
    ("anyone", {}, None, True),
    ("signed_in", {}, None, False),
    ("signed_in", {}, "bob", True),
    ("allow_list", {"private_repo_allow": [PrivateRepoRule(user="alice|dave", pattern=r"gh/lab/.*")]}, "alice", True),
    ("allow_list", {"private_repo_allow": [PrivateRepoRule(user="alice|dave", pattern=r"gh/lab/.*")]}, "alicex", False),
    ("allow_list", {"private_repo_allow": [PrivateRepoRule(user="bob", pattern=r"gh/other/.*")]}, "bob", False),
    ("allow_list", {"private_repo_allow": [PrivateRepoRule(user="bob", pattern=r"gh/lab/secre")]}, "bob", False),
    ("allow_list", {"private_repo_allow": [PrivateRepoRule(user="bob", pattern=r"gh/lab/secret")]}, "bob", True),
    ("forge_token", GH, "alice", True),  # her own token reads it
    ("forge_token", GH, "bob", False),  # his does not
    ("forge_token", GH, "carol", False),  # the hub keeps no token for her
    ("forge_token", GH, "erin", False),  # the hub does not know her
    ("forge_token", GH, None, False),
    ("forge_token", {}, "alice", False),  # no provider mapped: her token is sent nowhere
]


@pytest.mark.parametrize(("mode", "extra", "user", "launched"), CASES)
async def test_who_may_launch_a_private_repository(resolving_with: object, hub: str, mode: str,
                                                   extra: dict[str, object], user: str | None, launched: bool) -> None:
    start = resolving_with
    r: Resolving = await start(private_repos=mode, hub_api_url=hub,  # type: ignore[operator]
                               hub_auth_state_token="resolver-hub-token", **extra)
    rid = await r.launch("gh", "lab/secret/main", hub_user=user)
    outcome = r.outcome(rid)
    if mode in ("signed_in", "allow_list", "forge_token") and not launched:
        assert "sign in" in (outcome.message or "") if user is None else "may not" in (outcome.message or "")
    if launched:
        assert outcome.phase is Phase.RESOLVED and len(r.builds()) == 1
        assert outcome.private is True, "analytics is told to keep the repository's name to itself"
    else:
        assert outcome.phase is Phase.FAILED, outcome
        assert not r.builds() and not any(e.phase is Phase.RESOLVED for e in r.events(rid)), \
            "nothing about the private repository (its commit) was told before the refusal"
        # Told exactly what a repository that does not exist tells, whatever the ref: a refused
        # user learns nothing of which private repositories, branches or commits exist.
        for ref in ("main", "no-such-branch", "master", "0" * 40):
            told = [(e.phase, e.failure_cause, (e.message or "").replace("lab/secret", "X"))
                    for e in r.events(await r.launch("gh", f"lab/secret/{ref}", hub_user=user))]
            missing = [(e.phase, e.failure_cause, (e.message or "").replace("lab/absent", "X"))
                       for e in r.events(await r.launch("gh", f"lab/absent/{ref}", hub_user=user))]
            assert told == missing and told[-1][1] == "repo_not_found", (ref, told, missing)
    # A public repository launches in every mode, anonymous or not.
    public = await r.launch("gh", "org/demo/main", hub_user=user)
    assert r.outcome(public).phase is Phase.RESOLVED and r.outcome(public).private is None


async def test_a_cached_resolution_is_checked_again_for_each_user(resolving_with: object, hub: str) -> None:
    r: Resolving = await resolving_with(private_repos="forge_token", hub_api_url=hub,  # type: ignore[operator]
                                        hub_auth_state_token="resolver-hub-token", **GH)
    assert r.outcome(await r.launch("gh", "lab/secret/main", hub_user="alice")).phase is Phase.RESOLVED
    assert r.outcome(await r.launch("gh", "lab/secret/main", hub_user="bob")).phase is Phase.FAILED


async def test_a_users_forge_token_is_sent_to_its_own_forge_only(
        resolving_with: object, hub: str, hub_states: dict[str, dict[str, str] | None], private: GitHost) -> None:
    """alice's auth state holds a GitHub token; a private Gitea repository must never be asked about
    with it (Gitea would receive her GitHub credential) unless the operator maps a Gitea key."""
    make_repo(private.root, "gitea/team/notebooks", {"README.md": "gitea\n"})
    private.stats.private = "token gitea-operator"  # Gitea shows the repository to the operator's token only
    common = {"private_repos": "forge_token", "hub_api_url": hub, "hub_auth_state_token": "resolver-hub-token",
              "gitea_url": private.gitea, "gitea_access_token": "gitea-operator"}
    r: Resolving = await resolving_with(**common)  # type: ignore[operator]
    outcome = r.outcome(await r.launch("gitea", "team/notebooks/main", hub_user="alice"))
    assert (outcome.phase, outcome.failure_cause) == (Phase.FAILED, "repo_not_found")
    assert set(private.stats.authorizations) == {"token gitea-operator"}, "only the operator's token reached Gitea"
    # Mapped, her token for Gitea (here under another key) is the one Gitea checks.
    hub_states["alice"] = {"access_token": "operator-token", "gitea_token": "gitea-operator"}
    r = await resolving_with(auth_state_tokens={"gh": "access_token", "gitea": "gitea_token"},  # type: ignore[operator]
                             **common)
    assert r.outcome(await r.launch("gitea", "team/notebooks/main", hub_user="alice")).phase is Phase.RESOLVED


async def test_a_gist_is_private_when_git_reads_it_only_with_the_operators_credential(private: GitHost) -> None:
    """As on a GitHub Enterprise in private mode: the gist host under /private/ serves git only to the credential."""
    history = make_repo(private.root, "gists/feed42", {"nb.ipynb": "{}"})
    for where in ("private/g/ann/feed42", "g/ann/feed42"):
        git(private.root, "clone", "-q", "--bare", str(history), str(private.root / f"{where}.git"))
    store = CredentialStore([credential(private, "/")], None)
    api = GitHubAPI(private.github_api, "operator-token", 5)
    secret_host = GistProvider(api, private.url + "/private/g", False, store, 5)
    assert (await secret_host.resolve("ann/feed42")).private
    assert not (await GistProvider(api, private.url + "/g", False, store, 5).resolve("ann/feed42")).private, \
        "git reads it without the credential: public"
    assert not (await GistProvider(api, private.url + "/private/g", False, None, 5).resolve("ann/feed42")).private, \
        "no credential: the builder clones anonymously, and fails"
    assert str(secret_host.not_found("ann/feed42")) == str(secret_host.not_found("ann/feed42/v1"))


async def test_forge_token_asks_for_the_code_not_the_project(private: GitHost) -> None:
    """A GitLab project can be public while its repository is for members only: a stranger's token
    sees the project (200) but not the files, and must not count as able to read it."""
    from kiln_resolver.providers.gitlab import GitLabProvider

    make_repo(private.root, "gitlab/lab/members", {"README.md": "members only\n"})
    private.stats.gitlab_code_readers["lab/members"] = {"operator-token", "Bearer member-token"}
    provider = GitLabProvider(private.gitlab, "operator-token", 5)
    try:
        assert (await provider.resolve("lab%2Fmembers/main")).private, "members-only code counts as private"
        assert await provider.can_read("lab%2Fmembers/main", "member-token")
        assert not await provider.can_read("lab%2Fmembers/main", "stranger-token"), "seeing the project is not enough"
    finally:
        await provider.aclose()


async def test_a_check_that_fails_refuses_as_not_found(resolving_with: object, hub: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The forge answering the user's check with 429 or 5xx (``can_read`` raises) must not become an
    internal error, which a missing repository never gives: it is a refusal like any other."""
    r: Resolving = await resolving_with(private_repos="forge_token", hub_api_url=hub,  # type: ignore[operator]
                                        hub_auth_state_token="resolver-hub-token", **GH)

    async def forge_down(spec: str, user_token: str) -> bool:
        raise ResolveError("GitHub's API answered 502; try again shortly.", "provider_unreachable", 503)

    monkeypatch.setattr(GitHubProvider, "can_read", lambda self, spec, token: forge_down(spec, token))
    told = r.outcome(await r.launch("gh", "lab/secret/main", hub_user="alice"))
    missing = r.outcome(await r.launch("gh", "lab/absent/main", hub_user="alice"))
    assert (told.phase, told.failure_cause, told.status_code) == (missing.phase, missing.failure_cause,
                                                                   missing.status_code) == (Phase.FAILED, "repo_not_found", 404)
    assert (told.message or "").replace("lab/secret", "X") == (missing.message or "").replace("lab/absent", "X")


async def test_not_found_is_remembered_as_long_as_found(resolving_with: object, private: GitHost) -> None:
    """Only found repositories were cached: asked twice, a private one (found, then refused) answered the
    second time at once and a missing one did not, which told them apart by time."""
    r: Resolving = await resolving_with()  # type: ignore[operator]
    for spec in ("lab/secret/main", "lab/absent/main", "lab/secret/no-such-branch"):
        await r.launch("gh", spec)
        asked = private.stats.requests
        again = r.outcome(await r.launch("gh", spec))
        assert private.stats.requests == asked and again.failure_cause == "repo_not_found", spec


async def test_a_password_in_a_launch_link_is_refused_and_not_repeated(resolving_with: object,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    r: Resolving = await resolving_with()  # type: ignore[operator]
    for url in ("http://alice:pr1vate-pw@127.0.0.1/lab/x.git", "http://alice%40lab:pr1vate-pw@127.0.0.1/lab/x.git"):
        outcome = r.outcome(await r.launch("git", f"{quote(url, safe='')}/main"))
        assert outcome.phase is Phase.FAILED and "credentials" in (outcome.message or "")
        assert "pr1vate-pw" not in (outcome.message or "") and "alice" not in (outcome.message or ""), outcome.message
    assert "pr1vate-pw" not in caplog.text and "alice" not in caplog.text
