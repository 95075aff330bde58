"""Providers against real git repositories on a loopback git host.

GitHub's, GitLab's, Gitea's and Bitbucket's REST calls are answered by the test git host's API stand-ins (see
tests/support/githost.py), computed from the same real repositories; git itself is real.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest

from kiln_resolver.providers import ResolveError
from kiln_resolver.providers.forges import BitbucketProvider, GiteaProvider
from kiln_resolver.providers.git import GitProvider
from kiln_resolver.providers.github import GistProvider, GitHubAPI, GitHubProvider
from kiln_resolver.providers.gitlab import GitLabProvider

from ..support.githost import GitHost, commit, git, make_repo


def gh(host: GitHost) -> GitHubProvider:
    return GitHubProvider(GitHubAPI(host.github_api, "", 5), host.url)


async def test_github_resolves_branch_tag_and_sha(githost: GitHost) -> None:
    repo = githost.root / "org" / "demo"
    main, feature = git(repo, "rev-parse", "main"), git(repo, "rev-parse", "feature/x")
    r = await gh(githost).resolve("org/demo/main")
    assert (r.ref, r.repo_url, r.resolved_spec, r.build_slug) == (main, f"{githost.url}/org/demo", f"org/demo/{main}", "org-demo")
    assert r.ref_url == f"{githost.url}/org/demo/tree/{main}"
    assert (await gh(githost).resolve("org/demo/feature/x")).ref == feature
    assert (await gh(githost).resolve("org/demo/v1.0")).ref == main  # the commit an annotated tag points at
    assert (await gh(githost).resolve(f"org/demo/{feature}")).ref == feature
    assert (await gh(githost).resolve("org/demo.git/HEAD")).ref == main


async def test_github_missing_repo_and_ref_say_which(githost: GitHost) -> None:
    with pytest.raises(ResolveError, match="Repository org/nope not found") as e:
        await gh(githost).resolve("org/nope/main")
    assert e.value.cause == "repo_not_found"
    with pytest.raises(ResolveError, match="no such branch, tag or commit") as e:
        await gh(githost).resolve("org/demo/no-such-branch")
    assert e.value.cause == "ref_not_found"


async def test_github_etag_revalidation_costs_no_rate_limit(githost: GitHost) -> None:
    provider = gh(githost)
    first = await provider.resolve("org/demo/main")
    again = await provider.resolve("org/demo/main")
    assert first == again
    assert githost.stats.not_modified == 1, "the second lookup was a conditional request answered 304"


async def test_github_rate_limit_says_when_to_retry(githost: GitHost) -> None:
    githost.stats.rate_limited = True
    with pytest.raises(ResolveError, match=r"GitHub rate limit exceeded\. Try again in 2[45] minutes\.") as e:
        await gh(githost).resolve("org/demo/main")
    assert e.value.cause == "provider_rate_limited"


async def test_github_unreachable() -> None:
    provider = GitHubProvider(GitHubAPI("http://127.0.0.1:9", "", 2), "http://127.0.0.1:9")
    with pytest.raises(ResolveError, match="could not be reached") as e:
        await provider.resolve("org/demo/main")
    assert e.value.cause == "provider_unreachable"


async def test_gitlab_nested_namespace(githost: GitHost) -> None:
    sha = git(githost.root / "gitlab" / "group" / "sub" / "project", "rev-parse", "HEAD")
    provider = GitLabProvider(githost.gitlab, "", 5)
    r = await provider.resolve("group%2Fsub%2Fproject/main")
    assert (r.ref, r.repo_url, r.build_slug) == (sha, f"{githost.gitlab}/group/sub/project.git", "group-sub-project")
    with pytest.raises(ResolveError) as e:
        await provider.resolve("group%2Fnope/main")
    assert e.value.cause == "repo_not_found"


async def test_gist_versions(githost: GitHost) -> None:
    versions = git(githost.root / "gists" / "abc123", "log", "--format=%H").split()
    provider = GistProvider(GitHubAPI(githost.github_api, "", 5), githost.url, allow_secret=False)
    assert (await provider.resolve("someone/abc123")).ref == versions[0]
    assert (await provider.resolve(f"someone/abc123/{versions[1]}")).ref == versions[1]
    with pytest.raises(ResolveError):
        await provider.resolve("someone/abc123/" + "0" * 40)


def git_provider(allowed: list[str]) -> GitProvider:
    return GitProvider(["https", "http", "git", "ssh"], allowed, 10)


async def test_git_provider_uses_ls_remote(githost: GitHost) -> None:
    url = f"{githost.url}/org/demo"
    repo = githost.root / "org" / "demo"
    p = git_provider(["127.0.0.1"])
    assert (await p.resolve(f"{quote(url, safe='')}/HEAD")).ref == git(repo, "rev-parse", "main")
    assert (await p.resolve(f"{quote(url, safe='')}/feature%2Fx")).ref == git(repo, "rev-parse", "feature/x")
    r = await p.resolve(f"{quote(url, safe='')}/v1.0")
    assert r.ref == git(repo, "rev-parse", "main") and r.repo_url == url and r.build_slug == url
    with pytest.raises(ResolveError, match="no such branch") as e:
        await p.resolve(f"{quote(url, safe='')}/nope")
    assert e.value.cause == "ref_not_found"
    with pytest.raises(ResolveError, match="not found") as e:
        await p.resolve(f"{quote(githost.url + '/org/missing', safe='')}/HEAD")
    assert e.value.cause == "repo_not_found"


@pytest.mark.parametrize("url, cause", [
    ("http://127.0.0.1:1/repo.git", "private_host"),
    ("http://localhost:1/repo.git", "private_host"),
    ("http://10.1.2.3/repo.git", "private_host"),
    ("http://169.254.169.254/latest", "private_host"),
    ("http://[::1]/repo.git", "private_host"),
    ("file:///etc/passwd", "banned"),
    ("ext::sh -c touch% /tmp/pwned", "banned"),
])
async def test_git_provider_refuses_internal_and_odd_urls(url: str, cause: str) -> None:
    with pytest.raises(ResolveError) as e:
        await git_provider([]).resolve(f"{quote(url, safe='')}/HEAD")
    assert e.value.cause == cause


# Gitea/Forgejo (Codeberg) and Bitbucket: the test git host answers their REST calls (commit of a
# ref, repository exists) from real repositories it also serves for cloning.

@pytest.fixture
def forges(githost: GitHost) -> GitHost:
    for forge in ("gitea", "bitbucket"):
        repo = make_repo(githost.root, f"{forge}/team/notebooks", {"README.md": f"{forge}\n"})
        git(repo, "tag", "v2")
        git(repo, "checkout", "-q", "-b", "fix/plots")
        commit(repo, {"plot.py": "print('plot')\n"}, "plots")
        git(repo, "checkout", "-q", "main")
    return githost


def gitea(host: GitHost, token: str = "") -> GiteaProvider:
    return GiteaProvider(host.gitea, token, 5)


def bitbucket(host: GitHost, token: str = "") -> BitbucketProvider:
    return BitbucketProvider(host.bitbucket, host.bitbucket_api, token, 5)


@pytest.mark.parametrize("forge", ["gitea", "bitbucket"])
async def test_forges_resolve_branch_tag_sha_and_slashed_ref(forges: GitHost, forge: str) -> None:
    repo = forges.root / forge / "team" / "notebooks"
    main, fix = git(repo, "rev-parse", "main"), git(repo, "rev-parse", "fix/plots")
    provider = gitea(forges) if forge == "gitea" else bitbucket(forges)
    try:
        r = await provider.resolve("team/notebooks/main")
        web = forges.gitea if forge == "gitea" else forges.bitbucket
        assert (r.ref, r.repo_url, r.resolved_spec, r.build_slug) == (
            main, f"{web}/team/notebooks.git", f"team/notebooks/{main}", "team-notebooks")
        assert r.ref_url.startswith(f"{web}/team/notebooks/src/") and main in r.ref_url
        assert (await provider.resolve("team/notebooks/v2")).ref == main
        assert (await provider.resolve("team/notebooks/fix/plots")).ref == fix
        assert (await provider.resolve(f"team/notebooks.git/{fix[:12]}")).ref == fix
        # The repository URL the builder will fetch is a real clone of the resolved commit.
        assert fix in git(forges.root, "ls-remote", r.repo_url)
    finally:
        await provider.aclose()


@pytest.mark.parametrize("forge", ["gitea", "bitbucket"])
async def test_forges_say_which_of_repository_or_ref_is_missing(forges: GitHost, forge: str) -> None:
    provider = gitea(forges) if forge == "gitea" else bitbucket(forges)
    try:
        with pytest.raises(ResolveError, match="Repository team/nope not found") as e:
            await provider.resolve("team/nope/main")
        assert (e.value.cause, e.value.status) == ("repo_not_found", 404)
        with pytest.raises(ResolveError, match="no such branch, tag or commit") as e:
            await provider.resolve("team/notebooks/no-such-branch")
        assert e.value.cause == "ref_not_found"
    finally:
        await provider.aclose()


@pytest.mark.parametrize("spec", ["../etc/main", "team/../main", "te am/x/main", "team/notebooks/", "team/notebooks", "a/b/ref\nX"])
async def test_forges_refuse_names_that_are_not_names(spec: str) -> None:
    for provider in (GiteaProvider("http://127.0.0.1:9", "", 2), BitbucketProvider("http://127.0.0.1:9", "http://127.0.0.1:9", "", 2)):
        with pytest.raises(ResolveError) as e:
            await provider.resolve(spec)
        assert e.value.cause == "bad_spec", "refused before any request (port 9 answers nothing)"
        await provider.aclose()


async def test_forges_unreachable_and_rate_limited(forges: GitHost) -> None:
    for provider in (GiteaProvider("http://127.0.0.1:9", "", 2), BitbucketProvider("http://127.0.0.1:9", "http://127.0.0.1:9", "", 2)):
        with pytest.raises(ResolveError, match="could not be reached") as e:
            await provider.resolve("team/notebooks/main")
        assert (e.value.cause, e.value.status) == ("provider_unreachable", 503)
        await provider.aclose()
    forges.stats.rate_limited = True
    provider = gitea(forges)
    with pytest.raises(ResolveError, match="rate limit") as e:
        await provider.resolve("team/notebooks/main")
    assert e.value.cause == "provider_rate_limited"
    await provider.aclose()


@pytest.mark.parametrize("forge", ["gitea", "bitbucket"])
async def test_forge_token_reaches_a_private_repository_through_the_api_only(forges: GitHost, forge: str) -> None:
    forges.stats.private = "token s3cret" if forge == "gitea" else "Bearer s3cret"
    anonymous = gitea(forges) if forge == "gitea" else bitbucket(forges)
    with pytest.raises(ResolveError) as e:
        await anonymous.resolve("team/notebooks/main")
    assert e.value.cause == "repo_not_found", "without the token the private repository reads as missing"
    provider = gitea(forges, "s3cret") if forge == "gitea" else bitbucket(forges, "s3cret")
    r = await provider.resolve("team/notebooks/main")
    assert r.ref == git(forges.root / forge / "team" / "notebooks", "rev-parse", "main")
    assert "s3cret" not in repr(r), "the resolution (which becomes events) holds no token"
    with pytest.raises(ResolveError) as e:
        await provider.resolve("team/notebooks/no-such-branch")
    assert (e.value.cause, e.value.private) == ("ref_not_found", True), "a private repository's missing ref says so"
    assert str(provider.not_found("team/notebooks/x")) == str(provider.not_found("team/notebooks.git/y"))
    forges.stats.private = None
    with pytest.raises(ResolveError) as e:
        await provider.resolve("team/notebooks/no-such-branch")
    assert (e.value.cause, e.value.private) == ("ref_not_found", False), "control: once public"
    await anonymous.aclose()
    await provider.aclose()


async def test_a_public_gitea_repository_of_a_limited_organisation_is_private(forges: GitHost) -> None:
    """Gitea shows such a repository as public (private and internal false) to a signed-in token; anonymous
    users cannot read it, so it must count as private."""
    provider = gitea(forges, "s3cret")
    assert not (await provider.resolve("team/notebooks/main")).private, "control: a public organisation's"
    forges.stats.gitea_limited_owners.add("team")
    assert (await provider.resolve("team/notebooks/main")).private
    await provider.aclose()
