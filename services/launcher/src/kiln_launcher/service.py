"""What the launcher reacts to: its one ``Routes`` table, and how its consumer runs."""

from __future__ import annotations

from typing import Any

from kiln_launcher.handler import Launcher
from kilnbus import Routes, Topics

GROUP = "kiln-launcher"
# A launch waits on the hub for seconds: many are in hand at once.
SERVE_OPTIONS: dict[str, Any] = {"max_in_flight": 64, "shutdown_grace_s": 20}


def routes(topics: Topics, launcher: Launcher) -> Routes:
    """The launcher's whole logic, topic by topic."""
    return Routes({
        topics.hub_launch_requested: launcher.handle,  # -> launching..., then ready (sealed token) | failed
    })
