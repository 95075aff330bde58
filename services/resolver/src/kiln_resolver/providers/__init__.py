"""Repository providers: turn a spec into a clone URL and an exact commit."""

from kiln_resolver.providers.base import RepoProvider, Resolution, ResolveError
from kiln_resolver.providers.registry import Providers, make_providers

__all__ = ["Providers", "RepoProvider", "Resolution", "ResolveError", "make_providers"]
