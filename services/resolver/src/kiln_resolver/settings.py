"""The resolver's settings, read once from the environment (prefix ``KILN_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from kilnbus import BusSettings
from kilnbus.credentials import GitCredential, GitHubApp


class SpecRule(BaseModel):
    """A pattern over ``<provider>/<spec>`` (matched from the start, case-insensitively), with a reason."""

    pattern: str
    reason: str = ""


class PrivateRepoRule(BaseModel):
    """Hub users (``user``, a regular expression matched whole) who may launch the private repositories
    whose ``<provider>/<repository>`` (the spec without its ref) ``pattern`` matches whole, case-insensitively."""

    user: str
    pattern: str


class Settings(BusSettings):
    """Everything the resolver can be told; the bus settings included. Names follow BinderHub's."""

    # Providers. Base URLs are settings so GitHub Enterprise and self-hosted GitLab work.
    github_url: str = Field("https://github.com", description="GitHub's web and clone base URL (GitHub Enterprise: yours).")
    github_api_url: str = Field("https://api.github.com", description="GitHub's REST API (GitHub Enterprise: https://HOST/api/v3).")
    github_access_token: str = Field("", description="GitHub token: higher rate limit, private repositories.")
    gist_url: str = Field("https://gist.github.com", description="Where gists are cloned from.")
    allow_secret_gist: bool = Field(False, description="Allow launching secret (unlisted) gists.")
    gitlab_url: str = Field("https://gitlab.com", description="GitLab's base URL; its API is under /api/v4.")
    gitlab_access_token: str = Field("", description="GitLab token (sent as PRIVATE-TOKEN).")
    gitea_url: str = Field("https://codeberg.org", description="The Gitea or Forgejo the gitea provider launches from "
                           "(Codeberg by default); its API is under /api/v1.")
    gitea_access_token: str = Field("", description="Gitea/Forgejo token for its API (higher rate limits).")
    bitbucket_url: str = Field("https://bitbucket.org", description="Bitbucket's web and clone base URL.")
    bitbucket_api_url: str = Field("https://api.bitbucket.org/2.0", description="Bitbucket's REST API (2.0).")
    bitbucket_access_token: str = Field("", description="Bitbucket access token for its API (sent as a bearer token).")
    git_credentials: list[GitCredential] = Field(
        default_factory=list,
        description="Credentials for private repositories, each for a URL prefix (a host, or a group on it): a JSON list "
                    "of {url, username, password}. The same list for the resolver and the builder, which uses one "
                    "only for the repository itself (never its submodules).")
    private_repos: Literal["refuse", "anyone", "signed_in", "allow_list", "forge_token"] = Field(
        "refuse", description="Who may launch a repository only the operator's credentials read: refuse (nobody), "
        "anyone (anonymous launches too), signed_in (any hub user), allow_list (private_repo_allow), forge_token (users "
        "whose own forge token in the hub's auth state reads it).")
    private_repo_allow: list[PrivateRepoRule] = Field(default_factory=list, description="For private_repos=allow_list: "
                                                      "JSON list of {user, pattern} (regular expressions).")
    hub_api_url: str = Field("", description="For private_repos=forge_token: JupyterHub's API (http://hub:8081/hub/api).")
    hub_auth_state_token: str = Field("", description="For private_repos=forge_token: a hub API token "
                                            "with the admin:auth_state scope (reads users' forge tokens).")
    auth_state_tokens: dict[str, str] = Field(default_factory=dict, description="For private_repos=forge_token: "
                                              "JSON {provider: auth-state key}, which key of the hub's auth state holds "
                                              "the user's token for which provider, e.g. {\"gh\": \"access_token\"} "
                                              "with GitHubOAuthenticator. A token is sent to its provider only; private "
                                              "repositories of providers not listed are refused. No default: which "
                                              "forge the hub signs users in with is the operator's to say.")
    github_app: GitHubApp | None = Field(None, description="A GitHub App installation whose short-lived tokens "
                                         "resolve private repositories: JSON {app_id, installation_id, private_key, "
                                         "api_url, web_url}. Set it for the resolver and the builder alike.")
    git_allowed_protocols: list[str] = Field(["https", "http", "git"], description="Schemes the git provider accepts "
                                             "(the builder fetches over these; ssh needs keys Kiln does not hold).")
    allowed_private_hosts: list[str] = Field(
        default_factory=list,
        description="Git hosts that may resolve to private, loopback or link-local addresses (e.g. 127.0.0.1). "
                    "Any other such host is refused, so Kiln cannot be used to probe internal networks.",
    )
    # Data repositories (kiln_resolver.providers.data): bases are settings, as installations are many.
    doi_resolver_url: str = Field("https://doi.org", description="Where DOIs are resolved: <url>/<doi> answers with a "
                                  "redirect to the record's landing page.")
    zenodo_url: str = Field("https://zenodo.org", description="The Zenodo (or other InvenioRDM) installation whose DOIs "
                            "the zenodo provider launches; its API is under /api.")
    figshare_url: str = Field("https://figshare.com", description="Figshare's web site, where its DOIs lead.")
    figshare_api_url: str = Field("https://api.figshare.com/v2", description="Figshare's API (articles and versions).")
    dataverse_urls: list[str] = Field(["https://dataverse.harvard.edu", "https://dataverse.nl", "https://borealisdata.ca",
                                       "https://dataverse.no", "https://demo.dataverse.org"],
                                      description="The Dataverse installations whose DOIs may be launched (base URLs; "
                                      "their API is under /api). A DOI leading anywhere else is refused.")
    hydroshare_url: str = Field("https://www.hydroshare.org", description="The HydroShare whose resources the hydroshare "
                                "provider launches (its API under /hsapi, its bags under /django_s3).")
    ckan_urls: list[str] = Field(default_factory=list, description="The CKAN sites whose datasets may be launched (base "
                                 "URLs, a path prefix included); empty: any public site, as BinderHub.")
    swh_url: str = Field("https://archive.softwareheritage.org", description="The Software Heritage archive the swh "
                         "provider resolves SWHIDs with; its API is under /api/1 (the builder's swh_url names its vault).")
    swh_access_token: str = Field("", description="Software Heritage API token (sent as a bearer token to its API "
                                  "only): higher rate limits than anonymous requests.")
    resolve_cache_s: float = Field(60.0, ge=0, description="How long a branch or tag stays resolved to the same commit.")
    provider_timeout_s: float = Field(20.0, gt=0, description="Timeout of one provider API call or git ls-remote.")

    # Images and the registry.
    image_prefix: str = Field("127.0.0.1:5000/kiln/binder-", description="Prefix of every image name, registry host included.")
    registry_url: str = Field("http://127.0.0.1:5000", description="The registry's API base URL.")
    registry_username: str = Field("", description="Registry user (basic auth, or for the token server).")
    registry_password: str = Field("", description="Registry password.")
    registry_token_url: str = Field("", description="Token endpoint (e.g. https://auth.docker.io/token?service=registry.docker.io); "
                                                    "empty: discovered from the registry's WWW-Authenticate challenge.")
    registry_not_found_401: bool | None = Field(None, description="Treat 401 as 'not found' (Docker Hub's habit); default: only for *.docker.io.")

    # Policy.
    banned_specs: list[SpecRule] = Field(default_factory=list, description="Refused specs, with the reason shown to users.")
    allowed_specs: list[str] = Field(default_factory=list, description="If any, only matching specs may launch.")
    high_quota_specs: list[str] = Field(default_factory=list, description="Specs that get per_repo_quota_higher.")
    per_repo_quota: int = Field(0, ge=0, description="Running servers allowed per repository; 0: no limit.")
    per_repo_quota_higher: int = Field(0, ge=0, description="The quota for high_quota_specs.")

    @field_validator("auth_state_tokens")
    @classmethod
    def _one_key_per_provider(cls, tokens: dict[str, str]) -> dict[str, str]:
        # One auth-state key read for two providers would send one forge's token to the other.
        keys = list(tokens.values())
        if len(set(keys)) != len(keys):
            raise ValueError("auth_state_tokens gives two providers the same auth-state key; each forge's token is its own")
        return tokens
