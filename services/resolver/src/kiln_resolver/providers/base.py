"""The provider interface: one ``resolve(spec)`` per provider, returning where and what to build.

DOI-based providers (Zenodo, Figshare, Dataverse, ...) fit the same interface: their ``ref`` is a
record version and their ``repo_url`` what the builder's content fetcher understands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Resolution:
    """An immutable answer: build ``repo_url`` at ``ref``, and call the result ``build_slug``."""

    provider: str
    spec: str
    repo_url: str
    ref: str  # a full commit sha (or a record version for DOI providers)
    ref_url: str  # a page a person can open for that version
    resolved_spec: str  # the spec with the exact ref, for the persistent launch link
    build_slug: str  # what the image is named after
    content: str = "git"  # what the builder fetches repo_url as: git, or a data repository's kind (zenodo, ...)
    private: bool = False  # readable only with the operator's credentials (the policy decides who may launch it)


class ResolveError(Exception):
    """Resolution failed in a way the user should be told about.

    ``cause`` is machine-readable (for analytics), ``status`` the HTTP-like status BinderHub uses.
    """

    def __init__(self, message: str, cause: str, status: int = 404) -> None:
        super().__init__(message)
        self.cause = cause
        self.status = status


class RepoProvider(Protocol):
    name: str  # the URL prefix: gh, gl, git, gist, ...

    async def resolve(self, spec: str) -> Resolution: ...


class ReadCheck(Protocol):
    """A forge that can say whether a user's own token reads a repository (``private_repos=forge_token``)."""

    async def can_read(self, spec: str, user_token: str) -> bool: ...
