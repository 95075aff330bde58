"""The launcher's projection of running servers (kilnbus.servers' fold) and its culler watcher, in memory."""

from __future__ import annotations

import asyncio
from typing import Any

from kiln_launcher.servers import Servers
from kilnbus import Phase, PhaseEvent


def ready(rid: str, user: str = "u", url: bool = True) -> PhaseEvent:
    return PhaseEvent(request_id=rid, phase=Phase.READY, service="launcher" if url else "builder",
                      url=f"http://hub/user/{user}/{rid}/" if url else None,
                      server_name=f"{user}/{rid}" if url else None, image_name="r/binder-x:1")


class Hub:
    """Answers ``user`` as JupyterHub would, for the users and servers it holds."""

    def __init__(self, servers: dict[str, set[str]]) -> None:
        self.servers = servers

    async def user(self, name: str) -> dict[str, Any] | None:
        if name not in self.servers:
            return None
        return {"name": name, "servers": {s: {"ready": True} for s in self.servers[name]}}


def test_running_is_the_shared_fold() -> None:
    servers = Servers()
    for event in (ready("a"), ready("b", user="v"), ready("c"), ready("build-only", url=False),
                  PhaseEvent(request_id="c", phase=Phase.STOPPED, service="launcher"), ready("a")):
        servers.apply(event)
    assert servers.running == {"a": "u/a", "b": "v/b"}
    assert servers.fold.count_for_user("u") == 1


async def test_the_watcher_reports_a_server_the_hub_no_longer_has_once() -> None:
    servers = Servers()
    for rid in ("kept", "culled"):
        servers.apply(ready(rid))
    hub = Hub({"u": {"kept"}})  # the culler stopped u/culled
    reported: list[tuple[str, str]] = []
    stop = asyncio.Event()

    async def stopped(request_id: str, server_name: str) -> None:
        reported.append((request_id, server_name))
        if len(reported) == 1:
            asyncio.get_running_loop().call_later(0.05, stop.set)  # a few more rounds, then stop

    await asyncio.wait_for(servers.watch(hub, 0.005, stopped, stop), 5)  # type: ignore[arg-type]
    assert reported == [("culled", "u/culled")]  # once, though the watcher went round again
    assert servers.running == {"kept": "u/kept"}
    # The stopped event read back from the log changes nothing more.
    servers.apply(PhaseEvent(request_id="culled", phase=Phase.STOPPED, service="launcher"))
    assert servers.running == {"kept": "u/kept"}

