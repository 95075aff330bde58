"""The launcher's Prometheus metrics, named as BinderHub names them."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LAUNCH_TIME = Histogram("binderhub_launch_time_seconds", "Time from asking the hub for a server until it was ready.",
                        ["status", "retries"], buckets=(2, 5, 10, 20, 30, 60, 120, 300, 600, float("inf")))
INPROGRESS_LAUNCHES = Gauge("binderhub_inprogress_launches", "Launches this launcher is following now.")

POOL_LAUNCHES = Counter("kiln_pool_launches_total", "Anonymous launches while warm pools are on, by whether a warm "
                        "server was there for them.", ["outcome"])
POOL_HANDOVER_TIME = Histogram("kiln_pool_handover_seconds", "Time from a launch request reaching the launcher until a "
                               "warm server was handed over to it.",
                               buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, float("inf")))
POOL_SERVERS = Gauge("kiln_pool_servers", "Warm servers of this launcher: ready to hand over, or starting.", ["state"])
POOL_TARGET = Gauge("kiln_pool_target_servers", "Warm servers this launcher's pools aim at now, in all.")
POOL_FILLS = Counter("kiln_pool_fills_total", "Warm servers started, by outcome.", ["outcome"])
POOL_FILL_TIME = Histogram("kiln_pool_fill_seconds", "Time to start one warm server until it could be handed over.",
                           buckets=(1, 2, 5, 10, 20, 60, 120, float("inf")))
