"""The resolver's settings, read once from the environment (prefix ``KILN_``)."""

from __future__ import annotations

from kilnbus import BusSettings


class Settings(BusSettings):
    """Everything the resolver can be told; the bus settings included."""
