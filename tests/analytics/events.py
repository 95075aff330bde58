"""Synthetic phase-event histories, shaped as the services write them, for the analytics tests."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from kilnbus import Phase, PhaseEvent


def history(request_id: str, start: datetime, *, provider: str = "gh", spec: str = "org/repo/HEAD",
            repo: str = "https://github.com/org/repo", build: bool = False, outcome: str = "ready",
            cause: str | None = None, stopped: bool = False, origin: str = "binder.example.org") -> list[PhaseEvent]:
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
    events.append(at(0.3, Phase.LAUNCHING, "launcher", provider=provider, spec=spec))
    if outcome == "failed":
        return events + [at(4, Phase.FAILED, "launcher", failure_cause=cause or "spawn_failed")]
    events.append(at(4, Phase.READY, "launcher", server_name=f"u-{request_id}/binder-x", repo_url=repo, ref="a" * 40,
                     url=f"http://hub.example.org/user/u-{request_id}/binder-x/", image_name="img"))
    if stopped:
        events.append(at(600, Phase.STOPPED, "launcher", server_name=f"u-{request_id}/binder-x"))
    return events


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)  # type: ignore[misc]
