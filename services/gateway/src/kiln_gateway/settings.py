"""The gateway's settings, read once from the environment (prefix ``KILN_``)."""

from __future__ import annotations

from pydantic import Field

from kilnbus import BusSettings


class Settings(BusSettings):
    """Everything the gateway can be told; the bus settings included."""

    gateway_host: str = Field("127.0.0.1", description="Address the gateway listens on.")
    gateway_port: int = Field(8585, description="Port the gateway listens on (BinderHub's).")
