"""Synthetic phase-event histories, shaped as the services write them, for the analytics tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from kilnbus import Phase, PhaseEvent


def history(request_id: str, start: datetime, *, provider: str = "gh", spec: str = "org/repo/HEAD",
            repo: str = "https://github.com/org/repo", build: bool = False, outcome: str = "ready",
            cause: str | None = None, stopped: bool = False, origin: str = "binder.example.org",
            warm: bool | None = None, launch_s: float = 4) -> list[PhaseEvent]:
    """The events of one request: accepted, resolved, [a build], launching, then ready or failed."""
    t = start

    def at(seconds: float, phase: Phase, service: str, **fields: object) -> PhaseEvent:
        nonlocal t
        t = t + timedelta(seconds=seconds)
        return PhaseEvent(request_id=request_id, phase=phase, service=service, timestamp=t, **fields)  # type: ignore[arg-type]

    events = [at(0, Phase.ACCEPTED, "gateway", provider=provider, spec=spec, launch_host=origin,
                 request_origin="https://example.org", build_token=False)]
    if outcome == "failed" and cause == "repo_not_found":
        return events + [at(0.5, Phase.FAILED, "resolver", failure_cause=cause, message="Could not resolve ref\n")]
    events.append(at(1, Phase.RESOLVED, "resolver", provider=provider, spec=spec, repo_url=repo, ref="a" * 40))
    if build:
        events += [at(2, Phase.FETCHING, "builder", message="cloning\n")]
        events += [at(1, Phase.BUILDING, "builder", message=f"step {i}\n") for i in range(5)]
        if outcome == "failed" and cause == "build_failed":
            return events + [at(1, Phase.FAILED, "builder", failure_cause=cause, message="pip failed\n")]
        events += [at(10, Phase.PUSHING, "builder", message="Pushing\n"), at(3, Phase.BUILT, "builder", image_name="img")]
    else:
        events.append(at(0.2, Phase.BUILT, "resolver", image_name="img"))
    events.append(at(0.3, Phase.LAUNCHING, "launcher", provider=provider, spec=spec, warm=warm))
    if outcome == "failed":
        return events + [at(4, Phase.FAILED, "launcher", failure_cause=cause or "spawn_failed")]
    events.append(at(launch_s, Phase.READY, "launcher", server_name=f"u-{request_id}/binder-x", repo_url=repo,
                     ref="a" * 40, url=f"http://hub.example.org/user/u-{request_id}/binder-x/", image_name="img",
                     warm=warm))
    if stopped:
        events.append(at(600, Phase.STOPPED, "launcher", server_name=f"u-{request_id}/binder-x"))
    return events


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc,arg-type]


ODD = 'https://git.example.org/<script>alert("x")</script>/ünï cödé'


def month_of_requests() -> list[list[PhaseEvent]]:
    """Thirty varied requests from May 2026, one every 7 hours: cache hits, builds, failed builds of a
    GitLab repository, unresolvable refs, and stopped servers of an oddly named git repository."""
    out = []
    start = utc(2026, 5, 1)
    for i in range(30):
        kind = i % 5
        kwargs: dict[str, Any] = {}
        if kind == 1:
            kwargs = {"build": True}
        elif kind == 2:
            kwargs = {"build": True, "outcome": "failed", "cause": "build_failed", "provider": "gl",
                      "repo": "https://gitlab.com/g/x", "spec": "g/x/HEAD"}
        elif kind == 3:
            kwargs = {"outcome": "failed", "cause": "repo_not_found"}
        elif kind == 4:
            kwargs = {"provider": "git", "repo": ODD, "spec": "odd/HEAD", "stopped": True}
        out.append(history(f"req-{i}", start + timedelta(hours=7 * i), **kwargs))
    return out
