"""The launcher's Prometheus metrics, named as BinderHub names them."""

from __future__ import annotations

from prometheus_client import Gauge, Histogram

LAUNCH_TIME = Histogram("binderhub_launch_time_seconds", "Time from asking the hub for a server until it was ready.",
                        ["status", "retries"], buckets=(2, 5, 10, 20, 30, 60, 120, 300, 600, float("inf")))
INPROGRESS_LAUNCHES = Gauge("binderhub_inprogress_launches", "Launches this launcher is following now.")
