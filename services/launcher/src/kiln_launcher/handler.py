"""Handling a hub launch request: start a server from the image through JupyterHub and report it.

The handler follows kilnbus' contract: spawn progress is reported as it comes (``launching``), the
``ready`` event is returned for the bus to publish before the request counts as handled, and a
launch that cannot succeed raises ``LaunchFailed``, which the bus turns into ``failed``.

The user's token is minted by the hub for that one server, sealed on the bus with a key only the
launcher and the gateway hold, and opened by the gateway for the client that asked.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from typing import Any

from kiln_launcher import metrics
from kiln_launcher.demand import RecentLaunches
from kiln_launcher.hub import Hub, HubError
from kiln_launcher.keyed import keyed_hash, sealing_key
from kiln_launcher.names import user_name
from kiln_launcher.pool import WarmPool, WarmServer
from kiln_launcher.quota import RunningCount, client_key
from kiln_launcher.servers import Servers
from kiln_launcher.settings import Settings
from kilnbus import Bus, Delivery, HubLaunchRequested, KilnError, Outgoing, Phase, PhaseReporter
from kilnbus.sealing import Sealer
from kilnbus.tasks import Tasks

log = logging.getLogger(__name__)

ANSWERED_KEPT = 10_000  # requests whose server this launcher remembers (a redelivery comes within seconds)


class LaunchFailed(KilnError):
    """The launch cannot succeed: the user is told ``message`` (a ``failed`` event with ``cause`` and ``status``)."""

    def __init__(self, message: str, cause: str, status: int = 500) -> None:
        super().__init__(message, cause=cause, status=status)


def classify(message: str) -> str:
    lowered = message.lower()
    if "not present" in lowered or "no such image" in lowered or "not found" in lowered and "image" in lowered \
            or "not allowed" in lowered or "pull access denied" in lowered or "manifest unknown" in lowered:
        return "image_missing"
    if "timeout" in lowered or "took too long" in lowered or "didn't respond" in lowered:
        return "launch_timeout"
    if "exited" in lowered or "died" in lowered or "crash" in lowered:
        return "server_crashed"
    return "spawn_failed"


def launch_environment(req: HubLaunchRequested) -> dict[str, str]:
    """BinderHub's ``BINDER_*`` variables of a launch, as the hub's spawner sets them from the user options."""
    values = {"BINDER_REPO_URL": req.repo_url, "BINDER_REF_URL": req.ref_url, "BINDER_LAUNCH_HOST": req.launch_host,
              "BINDER_REQUEST": f"v2/{req.provider}/{req.spec}",
              "BINDER_PERSISTENT_REQUEST": f"v2/{req.provider}/{req.resolved_spec}" if req.resolved_spec else None,
              "BINDER_CLIENT_IP": req.client_ip}
    return {name: value for name, value in values.items() if value}


class Launcher:
    """The hub-launch-request handler; it also owns the culler watcher (``watch_culled``)."""

    def __init__(self, settings: Settings, bus: Bus, hub: Hub, sealer: Sealer, servers: Servers | None = None,
                 demand: RecentLaunches | None = None, owner: str = "kiln-launcher") -> None:
        self._s = settings
        self._report = PhaseReporter(bus, bus.topics, "launcher")
        self._hub = hub
        self._sealer = sealer
        self._in_flight: set[str] = set()
        self._tag_key = sealing_key(settings)
        logged = None if servers is None else (lambda key: servers.fold.warm_for_client(self._client_tag(key)))
        self._running = RunningCount(hub.active_servers, settings.quota_check_interval_s, logged)
        self._servers = servers
        self._answered: OrderedDict[str, tuple[str, bool | None]] = OrderedDict()  # request id -> (server, warm)
        launched = None if servers is None else (
            lambda: {s.server_name for s in servers.fold.servers() if s.server_name})
        self.pool = WarmPool(settings, hub, demand or RecentLaunches(settings.pool_window_s), self._running, owner,
                             launched)
        # Servers this launcher is starting per hub user: two launches by one user at once must see
        # each other before the hub lists either.
        self._starting: dict[str, set[str]] = {}
        self._tasks = Tasks("launcher")

    def _client_tag(self, key: str) -> str:
        """The phase log's name for a client key: keyed with the sealing key, so only launchers can make it."""
        if self._tag_key is None:
            return ""
        return keyed_hash(self._tag_key, "client", key)[:32]

    def watch_culled(self, servers: Servers, interval_s: float, stop: asyncio.Event) -> None:
        """Report, in the background until ``aclose``, servers the hub's culler stopped (``Servers.watch``)."""
        self._tasks.start(servers.watch(self._hub, interval_s, self.stopped, stop), name="culler watcher")

    def keep_pools(self, stop: asyncio.Event) -> None:
        """Keep the warm pools filled, in the background until ``aclose``."""
        self._tasks.start(self.pool.run(stop), name="warm pool")

    async def aclose(self) -> None:
        """Cancel the launcher's background tasks (the culler watcher, the pools, a hub listing) and wait for them to end."""
        await self._tasks.aclose()
        await self.pool.aclose()
        await self._running.aclose()

    async def stopped(self, request_id: str, server_name: str) -> None:
        await self._report.report(request_id, Phase.STOPPED, server_name=server_name,
                                  message=f"Server {server_name} stopped\n")

    async def handle(self, delivery: Delivery[HubLaunchRequested]) -> list[Outgoing]:
        req = delivery.value
        if req.request_id in self._in_flight:
            return []  # a second delivery while the first is launching: the first answers
        self._in_flight.add(req.request_id)
        started = time.monotonic()
        retries = "-1"  # BinderHub's label: the attempt index on success, -1 otherwise
        try:
            with metrics.INPROGRESS_LAUNCHES.track_inprogress():
                attempt, ready = await self._launch(req)
            retries = str(attempt - 1)
            return [ready]
        except HubError as exc:
            raise LaunchFailed(f"Launching failed: {exc}", exc.cause, exc.status) from exc
        finally:
            self._in_flight.discard(req.request_id)
            status = "failure" if retries == "-1" else "success"
            metrics.LAUNCH_TIME.labels(status=status, retries=retries).observe(time.monotonic() - started)

    async def _launch(self, req: HubLaunchRequested) -> tuple[int, Outgoing]:
        """Start (or find) the server; the attempt that started it, and its ``ready`` event."""
        started = time.monotonic()
        # Delivered again after its ready event was written (a warm server's user is not named from
        # the request id): the server it got, not a second one. The log says so after a restart, this
        # launcher's memory before the log has been read back.
        running = self._servers.fold.get(req.request_id) if self._servers is not None else None
        answered = self._answered.get(req.request_id) or (
            (running.server_name, running.warm) if running is not None and running.server_name else None)
        if answered is not None:
            user, _, server = answered[0].partition("/")
            known = await self._hub.user(user)
            if server in ((known or {}).get("servers") or {}):
                log.info("launch %s: server %s already running (request delivered again)", req.request_id, answered[0])
                return 1, await self._ready_event(req, user, server, answered[1])
        anonymous = req.hub_user is None
        if anonymous and self.pool.enabled:
            await self._check_client_quota(req)
            # Counted for its client at once: concurrent launches from one address must see each other.
            claim = self._running.claim(req.client_ip)
            try:
                warm = self.pool.take(req.image_name)
                metrics.POOL_LAUNCHES.labels(outcome="hit" if warm else "miss").inc()
                if warm is not None and (ready := await self._hand_over(req, warm, started)) is not None:
                    return 1, ready
            finally:
                self._running.release(claim)
        user = req.hub_user or user_name(req.repo_url, req.request_id)
        server = "binder-" + hashlib.sha256(req.request_id.encode()).hexdigest()[:10]
        await self._check_shared_quotas(req)
        await self._report.report(req, Phase.LAUNCHING, message="Launching server...\n", image_name=req.image_name,
                                  warm=False)
        model: dict[str, Any] | None = {"name": user, "servers": {}}  # a user just created has no servers
        # A temporary user exists already if this request was delivered before: then the hub is asked.
        if req.hub_user is not None or not await self._hub.create_user(user):
            model = await self._hub.user(user)
        if model is None:
            raise LaunchFailed(f"The hub has no user {user!r} to launch for.", "hub_error")
        state = (model.get("servers") or {}).get(server)
        if req.hub_user is not None and state is None:
            self._check_user_quota(req.hub_user, server, model)
        starting = self._starting.setdefault(user, set())
        starting.add(server)
        try:
            return await self._start(req, user, server, state, started)
        finally:
            starting.discard(server)
            if not starting:
                self._starting.pop(user, None)

    async def _check_shared_quotas(self, req: HubLaunchRequested) -> None:
        """The total quota, and in the anonymous mode the per-client one, from the hub's cached listing."""
        await self._check_client_quota(req)
        if self._s.total_quota is not None:
            running = await self._running.count()
            # Warm servers only take room users do not: one waiting gives its place up.
            if running >= self._s.total_quota and not await self.pool.release_one():
                raise LaunchFailed(f"Too many users on this Binder ({running} servers running)! Try again soon.", "total_quota", 429)
        # Counted with no wait since the check: the pool must not refill the room just made.
        self._running.started(req.client_ip if req.hub_user is None else None)

    async def _check_client_quota(self, req: HubLaunchRequested) -> None:
        """In the anonymous mode: servers launched from the request's client address."""
        per_client = self._s.servers_per_client if req.hub_user is None and req.client_ip else 0
        if per_client:
            mine = await self._running.count_for(req.client_ip or "")
            if mine >= per_client:
                raise LaunchFailed(f"Too many servers launched from your address: {mine} are running, and this Binder "
                                   f"allows {per_client} per address. Close one you no longer use, or try again "
                                   "once it has been stopped for being idle.", "client_quota", 429)

    async def _hand_over(self, req: HubLaunchRequested, warm: WarmServer, started: float) -> Outgoing | None:
        """Give the launch a warm server; None if that failed (the launch then starts a server of its own)."""
        await self._report.report(req, Phase.LAUNCHING, message="Launching server (one started ahead of time)...\n",
                                  image_name=req.image_name, warm=True)
        try:
            token = await self._hub.token(warm.user, warm.server, self._s.token_lifetime_s)
        except HubError as exc:
            log.warning("launch %s: no token for warm server %s: %s", req.request_id, warm.name, exc)
            self.pool.discard(warm)
            return None
        if not await self.pool.hand_over(warm, token, launch_environment(req)):
            return None
        self._running.handed(warm.name, req.client_ip)
        # The culler counts idleness from the last activity the hub knows: the server's start, for a warm one.
        self._tasks.start(self._activity(warm.user, warm.server), name="activity")
        tag = self._client_tag(client_key(req.client_ip)) if req.client_ip else None
        ready = await self._ready_event(req, warm.user, warm.server, True, token, tag or None)
        metrics.POOL_HANDOVER_TIME.observe(time.monotonic() - started)
        log.info("launch %s: warm server %s handed over", req.request_id, warm.name)
        return ready

    async def _activity(self, user: str, server: str) -> None:
        try:
            await self._hub.activity(user, server)
        except HubError as exc:
            log.warning("could not tell the hub %s/%s is in use: %s", user, server, exc)

    def _check_user_quota(self, hub_user: str, server: str, model: dict[str, Any]) -> None:
        """A logged-in user's servers: the hub's (fresh) model of the user, plus those being started here."""
        if not self._s.servers_per_user:
            return
        theirs = (set(model.get("servers") or {}) | self._starting.get(hub_user, set())) - {server}
        if len(theirs) >= self._s.servers_per_user:
            raise LaunchFailed(f"You already have {len(theirs)} servers running, and this Binder allows "
                               f"{self._s.servers_per_user} per user. Stop one in the hub's control panel "
                               "(File > Hub Control Panel), then launch again.", "user_quota", 429)

    async def _start(self, req: HubLaunchRequested, user: str, server: str, state: dict[str, Any] | None,
                     started: float) -> tuple[int, Outgoing]:
        options = {"image": req.image_name, "repo_url": req.repo_url, "binder_ref_url": req.ref_url,
                   "binder_launch_host": req.launch_host, "binder_request": f"v2/{req.provider}/{req.spec}",
                   "binder_persistent_request": f"v2/{req.provider}/{req.resolved_spec}",
                   "binder_client_ip": req.client_ip or ""}
        attempt = 1
        if state is not None and state.get("ready"):
            log.info("launch %s: server %s/%s already running (request delivered again)", req.request_id, user, server)
        elif state is not None:
            await self._follow(req, user, server, started)
        else:
            attempt = await self._start_with_retries(req, user, server, options, started)
        return attempt, await self._ready_event(req, user, server, False)

    async def _ready_event(self, req: HubLaunchRequested, user: str, server: str, warm: bool | None,
                           token: str | None = None, client_tag: str | None = None) -> Outgoing:
        """The ``ready`` event: the server's URL and a token for it (minted now unless given)."""
        if token is None:
            token = await self._hub.token(user, server, self._s.token_lifetime_s)
        url = f"{self._s.hub_public_url.rstrip('/')}/user/{user}/{server}/"
        self._answered[req.request_id] = (f"{user}/{server}", warm)
        while len(self._answered) > ANSWERED_KEPT:
            self._answered.popitem(last=False)
        # The token is sealed for this request, with the URL it opens: the gateway hands it only to
        # this request's stream, and sends the browser only to this URL.
        sealed = self._sealer.seal(token, request_id=req.request_id, url=url)
        return self._report.event(req, Phase.READY, message=f"server running at {url}\n", url=url, sealed_token=sealed,
                                  image_name=req.image_name, repo_url=req.repo_url, ref_url=req.ref_url,
                                  resolved_spec=req.resolved_spec, launch_host=req.launch_host,
                                  server_name=f"{user}/{server}", ref=req.ref, warm=warm, client_tag=client_tag)

    async def _start_with_retries(self, req: HubLaunchRequested, user: str, server: str, options: dict[str, Any],
                                  started: float) -> int:
        delay = self._s.retry_delay_s
        attempt = 1
        while True:
            try:
                refused = await self._hub.start_server(user, server, options)
                if refused is not None:
                    raise LaunchFailed(f"The server failed to start: {refused}", classify(refused), 500)
                await self._follow(req, user, server, started)
                return attempt
            except LaunchFailed as exc:
                await self._hub.stop_server(user, server)
                if exc.cause in ("image_missing", "launch_timeout") or attempt >= self._s.retries:
                    raise
            await self._report.report(req, Phase.LAUNCHING, message=f"Launch attempt {attempt} failed, retrying...\n")
            await asyncio.sleep(delay)
            delay *= 2
            attempt += 1

    async def _follow(self, req: HubLaunchRequested, user: str, server: str, started: float) -> None:
        """Relay the hub's spawn progress as launching events until the server is ready."""
        remaining = self._s.launch_timeout_s - (time.monotonic() - started)

        async def follow() -> None:
            async for event in self._hub.progress(user, server):
                if event.get("failed"):
                    message = event.get("message", "the server failed to start")
                    raise LaunchFailed(f"The server failed to start: {message}", classify(message))
                if event.get("message"):
                    await self._report.report(req, Phase.LAUNCHING, message=event["message"].rstrip("\n") + "\n")
                if event.get("ready"):
                    return
            raise LaunchFailed("The hub ended the spawn progress before the server was ready.", "spawn_failed")

        try:
            await asyncio.wait_for(follow(), max(1.0, remaining))
        except TimeoutError:
            raise LaunchFailed(f"The server took too long to launch (limit {self._s.launch_timeout_s:.0f} s).",
                               "launch_timeout", 504) from None
