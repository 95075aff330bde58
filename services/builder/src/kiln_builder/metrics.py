"""The builder's Prometheus metrics, named as BinderHub names them."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

BUILD_TIME = Histogram("binderhub_build_time_seconds", "Time a build took, by outcome.", ["status"],
                       buckets=(60, 120, 300, 600, 1800, 3600, 7200, float("inf")))
BUILD_COUNT = Counter("binderhub_build_count", "Builds finished, by outcome, provider and repository.",
                      ["status", "provider", "repo"])
INPROGRESS_BUILDS = Gauge("binderhub_inprogress_builds", "Builds running on this builder now.")
