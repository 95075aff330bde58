"""What the resolver reacts to: its one ``Routes`` table, and how its consumer runs."""

from __future__ import annotations

from typing import Any

from kiln_resolver.handler import Resolver
from kilnbus import Routes, Topics

GROUP = "kiln-resolver"
# Resolutions wait on networks (APIs, git servers): several run at once.
SERVE_OPTIONS: dict[str, Any] = {"max_in_flight": 16}


def routes(topics: Topics, resolver: Resolver) -> Routes:
    """The resolver's whole logic, topic by topic."""
    return Routes({
        topics.launch_requested: resolver.handle,  # -> resolved, then build-requested | built + hub-launch-requested | failed
    })
