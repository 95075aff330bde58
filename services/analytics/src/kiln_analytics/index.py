"""The numbers analytics answers with, computed from the request records it holds.

The records themselves live in the faust table (rebuilt from the log); the index keeps one compact
summary per request beside it so that a question costs one pass over summaries, not a decode of
every record. It is rebuilt whenever the table is recovered, so both always agree.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kiln_analytics.requests import SPAN_NAMES, RequestRecord

WINDOWS = {"hour": 3600, "day": 86400}


PRIVATE = "(a private repository)"  # what the dashboard and the API show in place of its name
UNRESOLVED = "(not resolved)"  # launches that never resolved: their spec may name a private repository


def _shown(record: RequestRecord) -> str:
    shown = record.shown_repo
    return PRIVATE if shown is None else shown or UNRESOLVED


@dataclass(frozen=True)
class Summary:
    """One request as the queries see it."""

    request_id: str
    provider: str
    repo: str
    started: float
    ended: float | None
    outcome: str
    failure_cause: str
    running: bool
    spans: dict[str, float]
    warm: bool | None = None

    @classmethod
    def of(cls, record: RequestRecord) -> Summary:
        return cls(request_id=record.request_id, provider=record.provider, repo=_shown(record),
                   started=record.started, ended=record.ended, outcome=record.outcome,
                   failure_cause=record.failure_cause, running=record.running, spans=record.spans(), warm=record.warm)


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class Index:
    """Summaries of every request held, and the questions asked of them."""

    def __init__(self) -> None:
        self._by_id: dict[str, Summary] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def update(self, record: RequestRecord) -> None:
        self._by_id[record.request_id] = Summary.of(record)

    def rebuild(self, records: Iterable[RequestRecord]) -> None:
        self._by_id = {r.request_id: Summary.of(r) for r in records}

    def get(self, request_id: str) -> Summary | None:
        return self._by_id.get(request_id)

    def _ended_between(self, since: float, until: float) -> Iterable[Summary]:
        return (s for s in self._by_id.values() if s.ended is not None and since <= s.ended < until)

    def launches(self, window: str, since: float, until: float, repo: str | None = None,
                 provider: str | None = None) -> list[dict[str, object]]:
        """Launches that ended in [since, until), per window bucket, with success and failure counts."""
        size = WINDOWS[window]
        buckets: dict[int, Counter[str]] = {}
        for s in self._ended_between(since, until):
            if (repo is not None and s.repo != repo) or (provider is not None and s.provider != provider):
                continue
            assert s.ended is not None
            start = int(s.ended // size * size)
            buckets.setdefault(start, Counter())["success" if s.outcome == "ready" else "failure"] += 1
        return [{"start": start, "success": c["success"], "failure": c["failure"]}
                for start, c in sorted(buckets.items())]

    def by_repo(self, since: float, until: float, limit: int) -> list[dict[str, object]]:
        """The repositories launched most in [since, until), with provider and outcome counts."""
        counts: Counter[tuple[str, str]] = Counter()
        failures: Counter[tuple[str, str]] = Counter()
        for s in self._ended_between(since, until):
            counts[(s.provider, s.repo)] += 1
            failures[(s.provider, s.repo)] += s.outcome != "ready"
        # Ties broken by name: records arrive in partition order, which differs between replicas
        # and rebuilds, and the same log must give the same answer.
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:limit]
        return [{"provider": p, "repo": r, "launches": n, "failures": failures[(p, r)]} for (p, r), n in ranked]

    def by_provider(self, since: float, until: float) -> dict[str, int]:
        return dict(Counter(s.provider for s in self._ended_between(since, until)).most_common())

    def phase_timings(self, since: float, until: float, repo: str | None = None) -> dict[str, dict[str, float | None]]:
        """p50/p95/mean seconds and the count of requests, per span, for requests ended in [since, until)."""
        samples: dict[str, list[float]] = {name: [] for name in SPAN_NAMES}
        for s in self._ended_between(since, until):
            if repo is not None and s.repo != repo:
                continue
            for name, seconds in s.spans.items():
                samples[name].append(seconds)
        out: dict[str, dict[str, float | None]] = {}
        for name, values in samples.items():
            values.sort()
            out[name] = {"count": len(values), "p50": _round(percentile(values, 50)),
                         "p95": _round(percentile(values, 95)),
                         "mean": _round(sum(values) / len(values) if values else math.nan)}
        return out

    def warm_pool(self, since: float, until: float) -> dict[str, Any]:
        """Launches in [since, until) that got a warm server (hits) or had one started (misses), with the
        launching span's p50/p95 of each (launches whose events say neither are left out)."""
        spans: dict[bool, list[float]] = {True: [], False: []}
        counts: Counter[bool] = Counter()
        for s in self._ended_between(since, until):
            if s.outcome == "ready" and s.warm is not None:
                counts[s.warm] += 1
                if "launching" in s.spans:
                    spans[s.warm].append(s.spans["launching"])
        out: dict[str, Any] = {"hits": counts[True], "misses": counts[False]}
        for name, warm in (("hit", True), ("miss", False)):
            values = sorted(spans[warm])
            out[f"{name}_launching_p50"] = _round(percentile(values, 50))
            out[f"{name}_launching_p95"] = _round(percentile(values, 95))
        return out

    def failures(self, since: float, until: float) -> dict[str, int]:
        """Failed requests in [since, until), by cause."""
        return dict(Counter(s.failure_cause for s in self._ended_between(since, until)
                            if s.outcome == "failed").most_common())

    def running(self) -> list[Summary]:
        """Requests whose server is running now (as far as the log says)."""
        return [s for s in self._by_id.values() if s.running]

    def totals(self) -> dict[str, int]:
        outcomes = Counter(s.outcome or "in_progress" for s in self._by_id.values())
        return {"requests": len(self._by_id), "ready": outcomes["ready"], "failed": outcomes["failed"],
                "in_progress": outcomes["in_progress"], "running_servers": len(self.running())}


def _round(value: float) -> float | None:
    """Seconds to the millisecond; None where there is nothing to measure (JSON has no NaN)."""
    return None if math.isnan(value) else round(value, 3)
