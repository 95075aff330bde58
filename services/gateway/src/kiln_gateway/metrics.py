"""The gateway's Prometheus metrics, with BinderHub's names where the concept is the same."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LAUNCHES = Counter("binderhub_launch_count", "Launch requests that ended, by outcome.", ["status", "provider"])
TIME_TO_READY = Histogram("kiln_time_to_ready_seconds", "From request to a ready server, as the client saw it.",
                          buckets=(2, 5, 10, 20, 30, 60, 120, 300, 600, float("inf")))
LAUNCH_REQUESTS = Counter("kiln_launch_requests", "Launch requests accepted and published.", ["provider"])
REFUSED = Counter("kiln_requests_refused", "Requests refused at the door, by reason.", ["reason"])
OPEN_STREAMS = Gauge("kiln_open_streams", "Event streams open on this gateway.")
RESUMES = Counter("kiln_stream_resumes", "Streams resumed with Last-Event-ID.")
