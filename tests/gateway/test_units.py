"""Gateway pieces that need no broker: the slow-client buffer, spec and path rules, event ids."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiln_gateway.eventids import EventIds
from kiln_gateway.ratelimit import RateLimiter
from kiln_gateway.router import Routed, Subscription
from kiln_gateway.specs import SpecError, launch_path, parse
from kilnbus import Phase, PhaseEvent


def ev(offset: int, phase: Phase) -> Routed:
    return Routed(0, offset, PhaseEvent(request_id="r", phase=phase, service="t", message=str(offset)))


async def test_slow_client_loses_log_lines_never_phase_changes() -> None:
    sub = Subscription("r", limit=8)
    phases = [Phase.WAITING] + [Phase.BUILDING] * 40 + [Phase.PUSHING] * 5 + [Phase.BUILT, Phase.LAUNCHING, Phase.READY]
    for offset, phase in enumerate(phases):
        sub.push(ev(offset, phase))
    got = []
    while (item := await sub.next(timeout=0.01)) is not None:
        got.append(item.event.phase)
    assert got[0] is Phase.WAITING and got[-3:] == [Phase.BUILT, Phase.LAUNCHING, Phase.READY]
    assert len(got) == 8 + 3
    assert sub.take_dropped() == 33 + 5  # the building and pushing lines past the first 8
    assert sub.take_dropped() == 0  # counted once, then reset


async def test_subscription_holds_live_events_during_replay_and_dedupes() -> None:
    sub = Subscription("r", limit=100)
    sub.hold()
    sub.push(ev(7, Phase.BUILDING))          # live, arrives while replaying
    sub.push(ev(5, Phase.WAITING), replayed=True)
    sub.push(ev(6, Phase.FETCHING), replayed=True)
    sub.push(ev(7, Phase.BUILDING), replayed=True)
    sub.release()
    got = [(await sub.next(0.01)).offset for _ in range(3)]  # type: ignore[union-attr]
    assert got == [5, 6, 7]
    assert await sub.next(0.01) is None


def test_event_ids_round_trip_and_reject_forgeries() -> None:
    ids = EventIds("secret-a")
    value = ids.format("ab" * 16, 3, 12345)
    parsed = ids.parse(value)
    assert parsed is not None and (parsed.partition, parsed.offset) == (3, 12345)
    assert EventIds("secret-b").parse(value) is None
    assert ids.parse(value.replace(".3.", ".4.", 1)) is None  # the position is signed too (test_security_units)
    assert ids.parse("cd" * 16 + value[32:]) is None


def test_rate_limiter_windows() -> None:
    rl = RateLimiter(limit=2, period_s=60)
    assert [rl.hit("a", now=0).allowed for _ in range(3)] == [True, True, False]
    assert rl.hit("b", now=1).allowed
    assert rl.hit("a", now=61).allowed  # a new window


@pytest.mark.parametrize("provider, spec, ref", [
    ("gh", "org/repo/main", "main"), ("gh", "org/repo/feature/x", "feature/x"), ("gh", "org/repo/HEAD/", "HEAD"),
    ("gl", "group%2Fsub%2Fproject/v1.0", "v1.0"), ("git", "https%3A%2F%2Fh.example%2Fr.git/" + "a" * 40, "a" * 40),
    ("gist", "user/0123abcd", "HEAD"),
])
def test_valid_specs(provider: str, spec: str, ref: str) -> None:
    assert parse(provider, spec).ref == ref


@given(st.text(max_size=300))
def test_any_spec_is_accepted_or_refused_cleanly(spec: str) -> None:
    for provider in ("gh", "gl", "git", "gist", "zenodo", "nope"):
        try:
            parse(provider, spec)
        except SpecError as exc:
            assert 400 <= exc.status < 500 and str(exc)


@given(st.text(max_size=200), st.sampled_from(["urlpath", "labpath", "filepath"]))
def test_any_path_is_accepted_or_refused_cleanly(path: str, kind: str) -> None:
    try:
        result = launch_path(**{"urlpath": None, "labpath": None, "filepath": None, kind: path})
    except SpecError:
        return
    assert ".." not in result.split("/") and "\n" not in result


def test_idle_connections_outlive_the_clients_keep_alive() -> None:
    # httpx and browsers drop idle connections after about 5 s; a gateway closing first would race a
    # client's next request on the same connection, which then fails with no answer (seen under load).
    from kiln_gateway.bootstrap import server
    from kiln_gateway.settings import Settings

    assert server(Settings()).config.timeout_keep_alive == 75
    assert server(Settings(keep_alive_s=120)).config.timeout_keep_alive == 120
