"""Which servers are running: the one definition, as a pure fold of the phase-event log.

The resolver (per-repository quotas), the launcher (noticing servers the idle culler stopped) and
analytics (the running-servers answer and gauge) all count from this, so they agree.

- A server **starts** with a ``ready`` event that carries a URL: the launcher's, once the hub says
  the server is up. A ``ready`` without a URL ends a build-only request: no server.
- It **stops** with a ``stopped`` event for the same request id: the launcher saw the hub no longer
  has it (culled for being idle, stopped by its user).
- Nothing else counts: a launch that fails never sent ``ready``, and log lines change nothing.

Per request id the latest of these in log order wins. Phase events are keyed by request id, so
one request's events share a partition and arrive in order: applying an event twice, or a suffix
of the log again after a redelivery, leaves the same state. A second ``ready`` (the launcher
answering a redelivered request for a server it already runs) changes nothing; a ``ready`` after
``stopped`` is a server the launcher really started again, so it runs again.

Phase events do not say which client address asked, so per-client counts are not here: the
launcher keeps asking the hub for those (each server's user options hold the address). The one
exception is a warm server, started before anyone asked: its ``ready`` event carries a keyed hash of
the client (``client_tag``), which every launcher can count and nobody else can read.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from kilnbus.records import Phase, PhaseEvent


def repo_key(image_name: str) -> str:
    """The image name without its tag: every commit of one repository counts as one repository."""
    last = image_name.rsplit("/", 1)[-1]
    return image_name.rsplit(":", 1)[0] if ":" in last else image_name


@dataclass(frozen=True)
class Server:
    """One running server, as its ``ready`` event described it."""

    request_id: str
    url: str
    since: datetime
    image_name: str | None = None
    server_name: str | None = None  # "user/server", the hub's names
    provider: str | None = None
    spec: str | None = None
    repo_url: str | None = None
    warm: bool | None = None  # started ahead of time (a warm pool's) rather than for this request
    client_tag: str | None = None  # a warm server's client, as a keyed hash (the launcher's per-client quota)

    @property
    def repo(self) -> str | None:
        """The repository key the per-repository quota counts under (None without an image)."""
        return repo_key(self.image_name) if self.image_name else None

    @property
    def hub_user(self) -> str | None:
        """The hub user that owns the server (None if the event did not name it)."""
        return self.server_name.partition("/")[0] if self.server_name else None


def server_started(event: PhaseEvent) -> Server | None:
    """The server ``event`` says is running, or None if it starts none."""
    if event.phase is not Phase.READY or not event.url:
        return None
    return Server(request_id=event.request_id, url=event.url, since=event.timestamp, image_name=event.image_name,
                  server_name=event.server_name, provider=event.provider, spec=event.spec, repo_url=event.repo_url,
                  warm=event.warm, client_tag=event.client_tag)


def server_stopped(event: PhaseEvent) -> bool:
    """Whether ``event`` says the server of its request stopped."""
    return event.phase is Phase.STOPPED


class RunningServers:
    """The servers running now, folded from phase events; counts kept as it goes, so queries are O(1)."""

    def __init__(self) -> None:
        self._servers: dict[str, Server] = {}  # request id -> server
        self._per_repo: Counter[str] = Counter()
        self._per_user: Counter[str] = Counter()
        self._per_tag: dict[str, set[str]] = {}  # client tag -> "user/server" of its warm servers

    def apply(self, event: PhaseEvent) -> None:
        """Fold one event in (any phase; only ``ready`` with a URL and ``stopped`` change anything)."""
        if (server := server_started(event)) is not None:
            if event.request_id not in self._servers:  # a repeated ready keeps the first one's details
                self._add(server)
        elif server_stopped(event) and (gone := self._servers.pop(event.request_id, None)) is not None:
            self._uncount(gone)

    def _add(self, server: Server) -> None:
        self._servers[server.request_id] = server
        if server.repo is not None:
            self._per_repo[server.repo] += 1
        if server.hub_user is not None:
            self._per_user[server.hub_user] += 1
        if server.client_tag and server.server_name:
            self._per_tag.setdefault(server.client_tag, set()).add(server.server_name)

    def _uncount(self, server: Server) -> None:
        if server.client_tag and server.server_name and server.client_tag in self._per_tag:
            self._per_tag[server.client_tag].discard(server.server_name)
            if not self._per_tag[server.client_tag]:
                del self._per_tag[server.client_tag]
        for counter, key in ((self._per_repo, server.repo), (self._per_user, server.hub_user)):
            if key is not None:
                counter[key] -= 1
                if counter[key] <= 0:
                    del counter[key]  # keys of stopped repositories must not pile up

    @property
    def total(self) -> int:
        """Servers running in all."""
        return len(self._servers)

    def __len__(self) -> int:
        return len(self._servers)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._servers

    def get(self, request_id: str) -> Server | None:
        """The running server of ``request_id``, if it runs."""
        return self._servers.get(request_id)

    def servers(self) -> list[Server]:
        """Every running server, in the order they started."""
        return list(self._servers.values())

    def count_for_repo(self, image_name: str) -> int:
        """Servers running any image of the repository ``image_name`` (tagged or not) belongs to."""
        return self._per_repo.get(repo_key(image_name), 0)

    def count_for_user(self, hub_user: str) -> int:
        """Servers running that belong to the hub user ``hub_user``."""
        return self._per_user.get(hub_user, 0)

    def warm_for_client(self, tag: str) -> set[str]:
        """The running warm servers handed to the client ``tag`` names ("user/server" each)."""
        return set(self._per_tag.get(tag, ()))

    def per_repo(self) -> dict[str, int]:
        """Running servers per repository key."""
        return dict(self._per_repo)
