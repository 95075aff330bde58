"""The analytics service's own Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

EVENTS = Counter("kiln_analytics_events", "Phase events read from the log.")
MALFORMED = Counter("kiln_analytics_malformed_events", "Events that could not be decoded and were set aside.")
RUNNING_SERVERS = Gauge("kiln_running_servers", "Servers running now, as the event log tells it.")
