"""The builder's settings, read once from the environment (prefix ``KILN_``)."""

from __future__ import annotations

from kilnbus import BusSettings


class Settings(BusSettings):
    """Everything the builder can be told; the bus settings included."""
