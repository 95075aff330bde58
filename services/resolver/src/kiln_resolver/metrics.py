"""The resolver's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RESOLVE_TIME = Histogram("kiln_resolve_time_seconds", "Time to resolve a spec to a commit (provider calls only).",
                         ["provider", "status"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, float("inf")))
OUTCOMES = Counter("kiln_resolver_outcomes", "Launch requests handled, by what came of them.", ["provider", "outcome"])
GITHUB_RATE_LIMIT = Gauge("binderhub_github_rate_limit_remaining", "GitHub API requests left, from its headers.")
