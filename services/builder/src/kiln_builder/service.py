"""What the builder reacts to: its one ``Routes`` table, and how its consumer runs."""

from __future__ import annotations

from typing import Any

from kiln_builder.handler import Builder
from kilnbus import Routes, Topics

GROUP = "kiln-builder"
# Requests wait for their build inside the handler (their offsets are committed when it ends), so
# many are in hand at once: the queue and the attachments live in kiln_builder.builds. A crash
# counts against a request only once its build has taken a slot (Builds calls begin_attempt).
# cancel_on_revoke: a build whose partition moved is stopped (its pod deleted), never built by two members at once.
SERVE_OPTIONS: dict[str, Any] = {"max_in_flight": 256, "shutdown_grace_s": 10, "attempts_begin_in_handler": True,
                                 "cancel_on_revoke": True}


def routes(topics: Topics, builder: Builder) -> Routes:
    """The builder's whole logic, topic by topic."""
    return Routes({
        topics.build_requested: builder.handle,  # -> waiting/fetching/building/pushing, then built + hub-launch-requested | ready | failed
    })
