"""The analytics service's settings, read once from the environment (prefix ``KILN_``)."""

from __future__ import annotations

from pydantic import Field

from kilnbus import BusSettings


class Settings(BusSettings):
    """Everything the analytics service can be told; the bus settings included."""

    analytics_host: str = Field("127.0.0.1", description="Address the analytics API and dashboard listen on.")
    analytics_port: int = Field(8590, ge=1, le=65535, description="Port of the analytics API and dashboard.")
    analytics_group: str = Field("kiln-analytics", description="Consumer group and faust application id; a new "
                                 "name rebuilds every table from the start of the log.")
    analytics_store: str = Field("memory://", description="Faust table store; memory:// recovers tables from their "
                                 "changelog topic at start.")
    analytics_data_dir: str = Field("/tmp/kiln-analytics", description="Faust's working folder (it keeps little "
                                    "there with the memory store).")
    analytics_batch: int = Field(1000, ge=1, description="Events folded per batch (one table write per request per batch).")
    analytics_batch_wait_s: float = Field(0.2, gt=0, description="Longest wait to fill a batch; bounds how stale the numbers are.")
    analytics_session_timeout_s: float = Field(15.0, gt=0, description="How long the group waits for a silent "
                                               "member (a crashed replica) before its partitions move to another; "
                                               "faust's own default is 60 s.")
    analytics_top_repos: int = Field(10, ge=1, le=1000, description="Repositories listed on the dashboard.")
    analytics_public_url: str = Field("", description="Where people reach the dashboard, for links; empty: as requested.")
