"""One request's history, folded from its phase events, and the time it spent in each phase.

A request's record keeps only what analytics needs: who asked for what, the first time each phase
was seen, and how it ended. Folding is idempotent (an event delivered twice changes nothing), so
Kafka's at-least-once delivery never counts a launch twice.

Which events start and stop a server is ``kilnbus.servers``' definition, shared with the resolver
and the launcher. The record keeps it per request, because the table is recovered from its
changelog rather than replayed from the log; and, as the record must come out the same however
its events are ordered, a stop is final here (the launcher stops a request's server once).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from kilnbus import Phase, PhaseEvent
from kilnbus.servers import server_started, server_stopped

# The spans an operator sees for a request: (name, from phase, to phases, first that exists wins).
# resolving: the gateway took it until the commit was known (includes waiting in the resolver's topic);
# queued: resolved until the builder started fetching (waiting for a build slot);
# building: fetching until the push started; pushing: until built;
# launching: built (or, on a cache hit, the resolver's "found built image") until the server was ready.
SPANS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("resolving", ("accepted",), ("resolved",)),
    ("queued", ("resolved",), ("fetching",)),
    ("building", ("fetching",), ("pushing", "built")),
    ("pushing", ("pushing",), ("built",)),
    ("launching", ("built", "launching"), ("ready",)),
)
SPAN_NAMES: tuple[str, ...] = tuple(name for name, _, _ in SPANS) + ("total",)
OUTCOMES = (Phase.READY.value, Phase.FAILED.value)
HIDDEN_SERVER = "(a server)"  # a private repository's server: running, but not named


@dataclass
class RequestRecord:
    """What the log says of one request, as stored in the analytics table (JSON)."""

    request_id: str
    provider: str = ""
    spec: str = ""
    repo: str = ""
    ref: str = ""
    origin: str = ""
    request_origin: str = ""
    build_token: bool = False
    marks: dict[str, float] = field(default_factory=dict)  # phase -> first time seen (epoch seconds)
    outcome: str = ""  # "", "ready" or "failed"
    failure_cause: str = ""
    server: str = ""  # "user/server" (or its URL) once kilnbus.servers says one started
    stopped: bool = False
    warm: bool | None = None  # its server was a warm pool's (True) or started for it (False); None: not said
    private: bool = False  # a private repository's: its spec, URL and commit are not kept (see fold)

    @property
    def started(self) -> float:
        """When the request began: the gateway's accepted event, else the earliest event seen."""
        return self.marks.get("accepted") or min(self.marks.values(), default=0.0)

    @property
    def ended(self) -> float | None:
        return self.marks.get(self.outcome) if self.outcome else None

    @property
    def shown_repo(self) -> str | None:
        """The repository as the dashboard and API may show it: only once the resolver said it is
        public. Before (a launch that failed to resolve, or was refused), the spec could be a private
        repository's, and the failure that told the user so says nothing of privacy."""
        if self.private:
            return None
        return (self.repo or self.spec) if "resolved" in self.marks else ""

    @property
    def running(self) -> bool:
        """A server was started for it and has not been seen to stop (see ``kilnbus.servers``)."""
        return bool(self.server) and not self.stopped

    def spans(self) -> dict[str, float]:
        """Seconds spent in each span this request went through (absent spans are left out)."""
        out: dict[str, float] = {}
        for name, starts, ends in SPANS:
            start = next((self.marks[p] for p in starts if p in self.marks), None)
            end = next((self.marks[p] for p in ends if p in self.marks), None)
            if start is not None and end is not None and end >= start:
                out[name] = end - start
        if (ended := self.ended) is not None and "accepted" in self.marks:
            out["total"] = max(0.0, ended - self.marks["accepted"])
        return out

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self), marks=dict(self.marks))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RequestRecord:
        return cls(**data)

    def dumps(self) -> bytes:
        # vars(), not asdict(): the fields are flat, and asdict's deep copy was a hot spot
        return json.dumps(vars(self), separators=(",", ":")).encode()

    @classmethod
    def loads(cls, data: bytes) -> RequestRecord:
        return cls(**json.loads(data))


def fold(record: RequestRecord | None, event: PhaseEvent) -> RequestRecord | None:
    """``record`` updated with ``event``; None when the event adds nothing (the common case of a log line)."""
    phase = event.phase.value
    ts = event.timestamp.timestamp()
    started = server_started(event)
    stops = server_stopped(event)
    if record is None:
        record = RequestRecord(request_id=event.request_id)
    elif phase in record.marks and ts >= record.marks[phase] and not _adds_identity(record, event) \
            and not (started and not record.server) and not (stops and not record.stopped) \
            and not (event.private and not record.private):
        return None  # the fast path for a build's many log lines
    changed = False
    if phase not in record.marks or ts < record.marks[phase]:
        record.marks[phase] = ts
        changed = True
    if event.private and not record.private:
        # A private repository's name is the operator's users' business, not the dashboard's or the
        # public archive's: forgotten whichever event brought it, and never taken again.
        record.private = True
        record.spec = record.repo = record.ref = ""
        if record.server:
            record.server = HIDDEN_SERVER  # an anonymous user's server is named after the repository
        changed = True
    if event.provider and not record.provider:
        record.provider = event.provider
        changed = True
    for name, value in (("spec", event.spec), ("repo", event.repo_url), ("ref", event.ref)):
        if value and not record.private and not getattr(record, name):
            setattr(record, name, value)
            changed = True
    if event.phase is Phase.ACCEPTED:
        record.origin = event.launch_host or record.origin
        record.request_origin = event.request_origin or ""
        record.build_token = bool(event.build_token)
        changed = True
    if phase in OUTCOMES and not record.outcome:
        record.outcome = phase
        record.failure_cause = (event.failure_cause or "unknown") if phase == "failed" else ""
        changed = True
    if started is not None and not record.server:
        record.server = HIDDEN_SERVER if record.private else started.server_name or started.url
        record.warm = started.warm
        changed = True
    if stops and not record.stopped:
        record.stopped = True
        changed = True
    return record if changed else None


def _adds_identity(record: RequestRecord, event: PhaseEvent) -> bool:
    """A repeated phase still matters if it brings a field the record lacks (say, the repository URL)."""
    return bool((not record.private and ((event.repo_url and not record.repo) or (event.ref and not record.ref)))
                or (event.provider and not record.provider))
