"""The repository providers Kiln can launch from: one table the gateway, resolver and analytics share.

A provider is here only if the resolver implements it (``kiln_resolver.providers.make_providers``
checks its registry against this table at start-up, and a test does the same), so the gateway's
form and ``/api/repoproviders`` never offer what cannot be launched. Everything a service needs to
know about a provider without resolving anything lives here: the spec's shape (BinderHub's
``validateRegex``), where the ref sits in a spec, what the form shows, and the name BinderHub's
launch-event schema gives it (analytics' export).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


class RefLayout(enum.Enum):
    """Where a spec keeps its ref (BinderHub's providers differ)."""

    AFTER_OWNER_REPO = "after_owner_repo"  # gh: owner/repo/<ref, which may contain "/">
    OPTIONAL_AFTER_ID = "optional_after_id"  # gist: owner/id[/ref], HEAD when left out
    LAST_SEGMENT = "last_segment"  # gl, git: <url-encoded repository>/<ref>
    NONE = "none"  # data repositories: the spec names a record; its version is found by the resolver


@dataclass(frozen=True)
class Provider:
    """One provider: its URL prefix, what the form shows and how its specs are shaped."""

    id: str  # the URL prefix: /v2/<id>/<spec>, /build/<id>/<spec>
    display_name: str
    spec_pattern: str  # BinderHub's spec.validateRegex; the whole spec must match it
    ref_layout: RefLayout
    repo_label: str
    placeholder: str
    url_encode: bool  # the form percent-encodes the repository part (a URL or a nested namespace)
    schema_name: str | None  # the name BinderHub's launch-event schema (v6) has for it; None: it has none
    detect: str | None = None  # strips a pasted URL down to the repository part (named group "repo")
    ref_enabled: bool = True  # the form asks for a ref (git providers; data repositories have none)

    def split_ref(self, spec: str) -> tuple[str, str]:
        """``spec`` as (repository part, ref); the spec is assumed to match ``spec_pattern``."""
        if self.ref_layout is RefLayout.AFTER_OWNER_REPO:
            owner, repo, ref = spec.split("/", 2)
            return f"{owner}/{repo}", ref
        if self.ref_layout is RefLayout.NONE:
            return spec, ""
        if self.ref_layout is RefLayout.OPTIONAL_AFTER_ID:
            parts = spec.split("/", 2)
            return "/".join(parts[:2]), parts[2] if len(parts) > 2 else "HEAD"
        repo, _, ref = spec.rpartition("/")
        return repo, ref

    def display_config(self) -> dict[str, Any]:
        """This provider as BinderHub's ``/api/repoproviders`` lists it (``RepoProvider.display_config``)."""
        return {"id": self.id, "displayName": self.display_name, "spec": {"validateRegex": self.spec_pattern},
                "detect": {"regex": self.detect} if self.detect else None,
                "repo": {"label": self.repo_label, "placeholder": self.placeholder, "urlEncode": self.url_encode},
                "ref": {"enabled": True, "default": "HEAD"} if self.ref_enabled else {"enabled": False}}


# A DOI pasted as a doi.org link or with "doi:" is reduced to the DOI itself.
_DOI_DETECT = r"^((https?://)?(dx\.)?doi\.org/|doi:)?(?P<repo>10\..*[^/])/?$"

_TABLE = (
    Provider("gh", "GitHub", r"[^/]+/[^/]+/.+", RefLayout.AFTER_OWNER_REPO, "GitHub repository name or URL",
             "example: binder-examples/requirements", False, "GitHub",
             detect=r"^(https?://github\.com/)?(?P<repo>.*[^/])/?$"),
    Provider("gist", "Gist", r"[^/]+/[^/]+(/.*)?", RefLayout.OPTIONAL_AFTER_ID, "Gist ID (username/gistId) or URL",
             "example: jakevdp/7d3e2d3b39fcd1e1a8e3", False, "Gist",
             detect=r"^(https?://gist\.github\.com/)?(?P<repo>.*[^/])/?$"),
    Provider("gl", "GitLab.com", r"[^/]+/.+", RefLayout.LAST_SEGMENT, "GitLab.com repository or URL",
             "example: gitlab-org/gitlab-foss", True, "GitLab",
             detect=r"^(https?://gitlab\.com/)?(?P<repo>.*[^/])/?$"),
    # Forges BinderHub never finished (BinderHub's launch-event schema v6 has no names for them).
    Provider("gitea", "Codeberg / Gitea", r"[^/]+/[^/]+/.+", RefLayout.AFTER_OWNER_REPO,
             "Codeberg (or the operator's Gitea/Forgejo) repository name or URL", "example: forgejo/forgejo", False, None,
             detect=r"^(https?://codeberg\.org/)?(?P<repo>.*[^/])/?$"),
    Provider("bb", "Bitbucket", r"[^/]+/[^/]+/.+", RefLayout.AFTER_OWNER_REPO, "Bitbucket repository name or URL",
             "example: atlassian/python-bitbucket", False, None,
             detect=r"^(https?://bitbucket\.org/)?(?P<repo>.*[^/])/?$"),
    Provider("git", "Git repository", r"[^/]+/.+", RefLayout.LAST_SEGMENT, "Arbitrary git repository URL",
             "example: http://git.example.com/repo.git", True, "Git"),
    # Data repositories (BinderHub's spec formats); kiln_resolver.providers.data resolves them.
    Provider("zenodo", "Zenodo DOI", r"10\.\d+\/(.)+", RefLayout.NONE, "Zenodo DOI", "example: 10.5281/zenodo.3242074",
             False, "Zenodo", detect=_DOI_DETECT, ref_enabled=False),
    Provider("figshare", "FigShare DOI", r"10\.\d+\/(.)+", RefLayout.NONE, "FigShare DOI",
             "example: 10.6084/m9.figshare.9782777.v1", False, "Figshare",
             detect=_DOI_DETECT, ref_enabled=False),
    Provider("hydroshare", "Hydroshare resource", r"[^/]+", RefLayout.NONE, "Hydroshare resource id or URL",
             "example: 8f7c2f0341ef4180b0dbe97f59130756", True, "Hydroshare", ref_enabled=False),
    Provider("dataverse", "Dataverse DOI", r"10\.\d+\/(.)+", RefLayout.NONE, "Dataverse DOI",
             "example: 10.7910/DVN/TJCLKP", False, "Dataverse", detect=_DOI_DETECT, ref_enabled=False),
    Provider("ckan", "CKAN dataset", r"[^/]+", RefLayout.NONE, "CKAN dataset URL",
             "https://demo.ckan.org/dataset/my-sample-dataset-001", True, "CKAN", ref_enabled=False),
    # Kiln's own, beyond BinderHub (v6 has no names for them): an archived tree by its SWHID, and any DOI,
    # launched from whichever data repository above serves it.
    Provider("doi", "DOI", r"10\.\d+\/(.)+", RefLayout.NONE,
             "DOI of a Zenodo record, Figshare article, HydroShare resource or Dataverse dataset",
             "example: 10.5281/zenodo.3242074", False, None, detect=_DOI_DETECT, ref_enabled=False),
    # Kiln's own: an archived directory, revision, release or snapshot by its SWHID (BinderHub has none; nor has v6).
    # Any three-letter kind passes here so the resolver can say why a file's (cnt) or origin's (ori) will not do.
    Provider("swh", "Software Heritage", r"swh:1:[a-z]{3}:[0-9a-f]{40}(;.*)?", RefLayout.NONE,
             "Software Heritage identifier (SWHID) of a directory, revision, release or snapshot",
             "example: swh:1:rev:309cf2674ee7a0749978cf8265ab91a60aea0f7d", False, None,
             detect=r"^(https?://archive\.softwareheritage\.org/)?(?P<repo>swh:1:.*[^/])/?$", ref_enabled=False),
)

# In the order the form lists them (the first is its default, as in BinderHub).
PROVIDERS: Mapping[str, Provider] = MappingProxyType({p.id: p for p in _TABLE})

class UnknownProvider(LookupError):
    """A provider prefix that is not in the table."""

    def __init__(self, provider_id: str) -> None:
        super().__init__(f"No provider found for prefix {provider_id!r}. Kiln knows: {', '.join(PROVIDERS)}.")
        self.provider_id = provider_id


def provider(provider_id: str) -> Provider:
    """The provider with this prefix; ``UnknownProvider`` (saying which ones exist) if there is none."""
    try:
        return PROVIDERS[provider_id]
    except KeyError:
        raise UnknownProvider(provider_id) from None


class ProviderTableMismatch(RuntimeError):
    """A service's provider implementations and the table disagree."""


def check_implemented(implemented: Iterable[str], service: str = "the resolver") -> None:
    """Raise ``ProviderTableMismatch`` unless ``implemented`` holds exactly the table's providers.

    The resolver calls this on its registry, so a provider added to one and not the other fails at
    start-up (and in the tests), not on a user's launch.
    """
    have = set(implemented)
    missing, extra = sorted(set(PROVIDERS) - have), sorted(have - set(PROVIDERS))
    if missing or extra:
        problems = ([f"in the table but not implemented by {service}: {', '.join(missing)}"] if missing else []) + \
                   ([f"implemented by {service} but not in kilnbus.providers: {', '.join(extra)}"] if extra else [])
        raise ProviderTableMismatch("; ".join(problems))


__all__ = ["PROVIDERS", "Provider", "ProviderTableMismatch", "RefLayout", "UnknownProvider", "check_implemented",
           "provider"]
