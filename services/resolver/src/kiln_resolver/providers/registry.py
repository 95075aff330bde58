"""The providers this resolver offers, made from its settings."""

from __future__ import annotations

from kiln_resolver.providers.base import RepoProvider
from kiln_resolver.providers.git import GitProvider
from kiln_resolver.providers.github import GistProvider, GitHubAPI, GitHubProvider
from kiln_resolver.providers.gitlab import GitLabProvider
from kiln_resolver.settings import Settings


def make_providers(settings: Settings) -> dict[str, RepoProvider]:
    github = GitHubAPI(settings.github_api_url, settings.github_access_token, settings.provider_timeout_s)
    providers: list[RepoProvider] = [
        GitHubProvider(github, settings.github_url),
        GistProvider(github, settings.gist_url, settings.allow_secret_gist),
        GitLabProvider(settings.gitlab_url, settings.gitlab_access_token, settings.provider_timeout_s),
        GitProvider(settings.git_allowed_protocols, settings.allowed_private_hosts, settings.provider_timeout_s),
    ]
    return {p.name: p for p in providers}
