"""The providers this resolver offers, made from its settings and checked against ``kilnbus.providers``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from kiln_resolver.providers.base import RepoProvider
from kiln_resolver.providers.data import data_providers
from kiln_resolver.providers.forges import BitbucketProvider, GiteaProvider
from kiln_resolver.providers.git import GitProvider
from kiln_resolver.providers.github import GistProvider, GitHubAPI, GitHubProvider
from kiln_resolver.providers.gitlab import GitLabProvider
from kiln_resolver.settings import Settings
from kilnbus.credentials import CredentialStore
from kilnbus.providers import check_implemented


class Providers(dict[str, RepoProvider]):
    """The resolver's providers by prefix; ``aclose`` closes the clients they were made with."""

    def __init__(self, providers: Iterable[RepoProvider], closers: Iterable[Callable[[], Awaitable[None]]] = ()) -> None:
        super().__init__((p.name, p) for p in providers)
        self._closers = list(closers)

    async def aclose(self) -> None:
        """Close every client (each once, though GitHub and Gist share theirs)."""
        closers, self._closers = self._closers, []
        for close in closers:
            await close()


def make_providers(settings: Settings) -> Providers:
    """One implementation per provider of the shared table; a mismatch stops the resolver at start-up."""
    credentials = CredentialStore(settings.git_credentials, settings.github_app, settings.provider_timeout_s)
    github = GitHubAPI(settings.github_api_url, settings.github_access_token, settings.provider_timeout_s, credentials.app)
    gitlab = GitLabProvider(settings.gitlab_url, settings.gitlab_access_token, settings.provider_timeout_s)
    gitea = GiteaProvider(settings.gitea_url, settings.gitea_access_token, settings.provider_timeout_s)
    bitbucket = BitbucketProvider(settings.bitbucket_url, settings.bitbucket_api_url, settings.bitbucket_access_token,
                                  settings.provider_timeout_s)
    data, data_http = data_providers(settings)
    providers = Providers([
        GitHubProvider(github, settings.github_url),
        GistProvider(github, settings.gist_url, settings.allow_secret_gist),
        gitlab,
        gitea,
        bitbucket,
        GitProvider(settings.git_allowed_protocols, settings.allowed_private_hosts, settings.provider_timeout_s,
                    credentials),
        *data,
    ], closers=[credentials.aclose, github.aclose, gitlab.aclose, gitea.aclose, bitbucket.aclose, data_http.aclose])
    check_implemented(providers)
    return providers
