"""Prometheus metrics every consuming service shares, and the HTTP server that exposes them.

Services without a web app of their own (resolver, builder, launcher) serve ``/metrics`` on
``KILN_METRICS_PORT``; the gateway and analytics serve it beside their other routes.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram, start_http_server

from kilnbus.settings import BusSettings

log = logging.getLogger(__name__)

HANDLED = Counter("kiln_bus_handled", "Records handled by this consumer.", ["group", "topic"])
HANDLER_RETRIES = Counter("kiln_bus_handler_retries", "Handler failures that were retried.", ["group", "topic"])
DEAD_LETTERED = Counter("kiln_bus_dead_lettered", "Records set aside on the dead-letter topic.", ["group", "topic", "reason"])
HANDLE_SECONDS = Histogram("kiln_bus_handle_seconds", "Time a handler took for one record.", ["group", "topic"],
                           buckets=(0.005, 0.02, 0.1, 0.5, 2, 10, 60, 300, 1800, float("inf")))


def serve_metrics(settings: BusSettings) -> None:
    """Start the /metrics HTTP server in a thread, when a port is configured."""
    if settings.metrics_port is None:
        return
    start_http_server(settings.metrics_port, addr=settings.metrics_host)
    log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
