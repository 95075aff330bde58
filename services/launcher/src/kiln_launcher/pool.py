"""Warm pools: servers of popular images started ahead of time, each handed to one launch.

A launch that finds a warm server of its image takes it instead of starting one: the server is
already running under a hub user of its own (JupyterHub owns it like any other: the same spawner,
isolation and limits, the same idle culler), so the launch only mints the user's token for it and
hands it over (``kiln_handover``, the server extension in Kiln's base image, sets the launch's
``BINDER_*`` environment; it answers only the server's own token, and only once). A warm server
is taken out of the pool before anything else happens to it, so no two launches can share one,
and never goes back: the pool starts a fresh one in its place.

What is kept warm: the images an operator names (``pool_images``), and the most launched images
of the recent past (``demand.RecentLaunches``), ``pool_size`` each, within a memory budget. An
image that goes cold has its pool emptied; a warm server older than ``pool_max_age_s`` is replaced
(well before the idle culler would take it). Warm servers count towards the total quota, so they
only take room users do not: pools fill only below the quota, and a launch that finds the quota
full while warm servers wait retires one to make room.

Warm servers serve the anonymous mode (BinderHub's, and mybinder.org's): a logged-in user's server
must belong to that user from its start, which the hub cannot change, so those launches start a
server as before.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kiln_launcher import metrics
from kiln_launcher.demand import RecentLaunches
from kiln_launcher.hub import Hub, HubError
from kiln_launcher.keyed import keyed_hash, sealing_key
from kiln_launcher.names import user_name
from kiln_launcher.quota import RunningCount
from kiln_launcher.settings import Settings
from kilnbus.tasks import Tasks

log = logging.getLogger(__name__)

OWNER_OPTION = "kiln_pool"  # user option naming the launcher whose pool a server belongs to
PROOF_OPTION = "kiln_pool_proof"  # the launcher's keyed hash of owner and server: only it can make one
FIRST_BACKOFF_S = 30.0  # after a failed start, the first wait before that image is tried again (it doubles)


@dataclass(frozen=True)
class WarmServer:
    """A server started ahead of time and not handed over yet."""

    user: str
    server: str
    image: str
    ready_at: float  # monotonic clock

    @property
    def name(self) -> str:
        return f"{self.user}/{self.server}"


class FillFailed(Exception):
    """A warm server could not be started; the pool backs off from that image for a while."""


class WarmPool:
    """This launcher's warm servers per image, kept at the targets by ``run`` in the background."""

    def __init__(self, settings: Settings, hub: Hub, demand: RecentLaunches, running: RunningCount, owner: str,
                 launched: Callable[[], set[str]] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._s = settings
        self._hub = hub
        self._demand = demand
        self._running = running
        self._owner = owner
        # "user/server" of every running server the phase log says was handed to a launch
        self._launched = launched
        self._proof_key = sealing_key(settings)
        self._clock = clock
        self._ready: dict[str, list[WarmServer]] = {}  # image -> warm servers, oldest first
        self._starting: Counter[str] = Counter()
        self._unpoolable: set[str] = set()  # images whose servers lack the hand-over extension
        self._backoff: dict[str, tuple[float, float]] = {}  # image -> (no fill before, next delay)
        self._wake = asyncio.Event()
        self._last_targets: dict[str, int] = {}
        self._tasks = Tasks("warm pool")

    @property
    def enabled(self) -> bool:
        return self._s.pool_size > 0 and self.capacity > 0

    @property
    def capacity(self) -> int:
        """Warm servers the memory budget allows in all."""
        return self._s.pool_memory_budget_mb // self._s.pool_server_memory_mb

    def targets(self) -> dict[str, int]:
        """How many warm servers each image should have now: operator's images first, then by launches."""
        if not self.enabled:
            return {}
        wanted: list[str] = []
        hot = [image for image, _ in self._demand.top(self._s.pool_top_images, self._s.pool_min_launches)]
        for image in [*self._s.pool_images, *hot]:
            if image not in wanted and image not in self._unpoolable:
                wanted.append(image)
        targets: Counter[str] = Counter()
        room = self.capacity
        for _ in range(self._s.pool_size):  # one more for each image per round, so the budget is shared
            for image in wanted:
                if room <= 0:
                    break
                targets[image] += 1
                room -= 1
        return dict(targets)

    def take(self, image: str) -> WarmServer | None:
        """A warm server of ``image``, now out of the pool for good; None when there is none."""
        servers = self._ready.get(image) or []
        now = self._clock()
        while servers:
            warm = servers.pop(0)  # the oldest first, used before it ages out
            if now - warm.ready_at < self._s.pool_max_age_s:
                self._wake.set()  # refill
                self._update_gauges()
                return warm
            self.discard(warm)
        return None

    async def hand_over(self, warm: WarmServer, token: str, environment: dict[str, str]) -> bool:
        """Give ``warm`` the launch's environment; False if it cannot be used (the launch starts one instead)."""
        status = await self._hub.handover(warm.user, warm.server, token, environment)
        if status == 200:
            return True
        if status == 409:
            # Only this launcher hands its warm servers over, and it has not: the server's own code
            # (the image's start script, say) claimed it. Nobody's server: retired, the image not pooled again.
            log.error("warm server %s of %s says it was handed over already; retiring it and not pooling "
                      "that image again", warm.name, warm.image)
            self._unpoolable.add(warm.image)
            self.discard(warm)
        else:
            log.warning("warm server %s could not be handed over (%s); retiring it", warm.name, status)
            self.discard(warm)
        return False

    def discard(self, warm: WarmServer) -> None:
        """Retire a warm server taken for a launch that could not use it."""
        self._tasks.start(self._retire(warm.user, warm.server), name="retire warm server")

    async def release_one(self) -> bool:
        """Retire one warm server to make room for a launch (the least launched image's); False if none waits."""
        images = [image for image, servers in self._ready.items() if servers]
        if not images:
            return False
        image = min(images, key=self._demand.launches)
        warm = self._ready[image].pop(0)
        self._update_gauges()
        await self._retire(warm.user, warm.server)
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Adopt this launcher's warm servers left from before, then keep the pools at their targets until ``stop``."""
        # Turned off (or shrunk to nothing), a launcher retires the warm servers it left before.
        try:
            await self._adopt(retire=not self.enabled)
        except Exception:
            log.exception("warm pool: adopting the warm servers left from before failed")
        while not stop.is_set():
            if self.enabled:
                try:
                    await self._reconcile(stop)
                except HubError as exc:
                    log.warning("warm pool: the hub failed (%s); trying again later", exc)
                except Exception:  # a pool that stops would leave launches slow for everyone, not fail them
                    log.exception("warm pool: filling failed unexpectedly; trying again later")
            self._wake.clear()
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
            await asyncio.wait(waits, timeout=self._s.pool_check_interval_s, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()

    async def aclose(self) -> None:
        """End retirements still under way. Warm servers stay: a restarted launcher adopts them."""
        await self._tasks.aclose()

    async def _reconcile(self, stop: asyncio.Event) -> None:
        targets = self.targets()
        metrics.POOL_TARGET.set(sum(targets.values()))
        if targets != self._last_targets:
            log.info("warm pool: keeping %s", ", ".join(f"{n} of {image}" for image, n in targets.items()) or "none")
            self._last_targets = targets
        now = self._clock()
        for image, servers in list(self._ready.items()):
            fresh = [w for w in servers if now - w.ready_at < self._s.pool_max_age_s]
            keep = fresh[max(0, len(fresh) - targets.get(image, 0)):] if targets.get(image, 0) else []  # the youngest
            self._ready[image] = keep
            for warm in servers:
                if warm not in keep:
                    await self._retire(warm.user, warm.server)
            if not keep:
                del self._ready[image]
        self._update_gauges()
        for image, target in targets.items():
            while not stop.is_set() and len(self._ready.get(image, [])) + self._starting[image] < target:
                if (image in self._unpoolable or self._clock() < self._backoff.get(image, (0.0, 0.0))[0]
                        or not await self._room()):
                    break
                await self._fill_one(image)

    async def _room(self) -> bool:
        """Whether one more server fits below the total quota."""
        return self._s.total_quota is None or await self._running.count() + 1 <= self._s.total_quota

    async def _fill_one(self, image: str) -> None:
        repo = self._demand.repo_url(image) or image.rsplit(":", 1)[0].split("/", 1)[-1]
        user = user_name(repo, f"warm-{uuid.uuid4()}")
        server = "binder-" + secrets.token_hex(5)
        self._starting[image] += 1
        self._running.started()
        self._update_gauges()
        started = self._clock()
        try:
            await self._hub.create_user(user)
            options = {"image": image, OWNER_OPTION: self._owner, PROOF_OPTION: self._proof(user, server)}
            refused = await self._hub.start_server(user, server, options)
            if refused is not None:
                raise FillFailed(refused)
            await asyncio.wait_for(self._until_ready(user, server), self._s.launch_timeout_s)
            status = await self._probe(user, server)
            if status == 404:
                self._unpoolable.add(image)
                raise FillFailed("the image has no kiln_handover extension (not built on Kiln's base image)")
            if status != 200:
                raise FillFailed(f"its hand-over extension answered {status}")
        except (FillFailed, HubError, TimeoutError) as exc:  # anything else: the run loop logs it
            metrics.POOL_FILLS.labels(outcome="failed").inc()
            await self._retire(user, server)
            _, delay = self._backoff.get(image, (0.0, FIRST_BACKOFF_S))
            self._backoff[image] = (self._clock() + delay, min(delay * 2, 600.0))  # from now: retiring takes a while
            log.warning("warm pool: a server of %s could not be started (%s); next try in %.1f s", image, exc, delay)
        else:
            self._backoff.pop(image, None)
            self._ready.setdefault(image, []).append(WarmServer(user, server, image, self._clock()))
            metrics.POOL_FILLS.labels(outcome="ready").inc()
            metrics.POOL_FILL_TIME.observe(self._clock() - started)
            log.info("warm pool: %s/%s of %s is ready", user, server, image)
        finally:
            self._starting[image] -= 1
            self._update_gauges()

    def _proof(self, user: str, server: str) -> str:
        if self._proof_key is None:
            return ""
        return keyed_hash(self._proof_key, self._owner, f"{user}/{server}")

    async def _probe(self, user: str, server: str) -> int | None:
        """Whether a server of this pool was handed over (409) or not (200), with a token revoked once used."""
        token, token_id = await self._hub.probe_token(user, server)
        try:
            return await self._hub.handover(user, server, token, None)
        finally:
            await self._hub.revoke(user, token_id)

    async def _until_ready(self, user: str, server: str) -> None:
        async for event in self._hub.progress(user, server):
            if event.get("failed"):
                raise FillFailed(str(event.get("message", "the server failed to start")))
            if event.get("ready"):
                return
        raise FillFailed("the hub ended the spawn progress before the server was ready")

    async def _retire(self, user: str, server: str) -> None:
        """Stop a warm server and remove its user (a pool's user is nobody's)."""
        try:
            await self._hub.stop_server(user, server)
            await self._hub.delete_user(user)
            log.info("warm pool: retired %s/%s", user, server)
        except HubError as exc:
            log.warning("warm pool: could not remove %s/%s: %s", user, server, exc)
        finally:
            self._running.stopped()

    async def _adopt(self, retire: bool = False) -> None:
        """Take back (or ``retire``) this launcher's warm servers that were never handed over (from before a restart).

        A server counts as this pool's only with the launcher's proof in its user options (a logged-in
        user can put anything else there), and as never handed over only if no ``ready`` event in the
        phase log names it: the server's own answer is a stranger's say-so and only confirms.
        """
        if self._proof_key is None or self._launched is None:
            return
        users = await self._hub.active_users()
        launched = self._launched()
        for model in users:
            user = str(model.get("name", ""))
            for server, state in (model.get("servers") or {}).items():
                options = (state or {}).get("user_options") or {}
                proof = options.get(PROOF_OPTION)
                if options.get(OWNER_OPTION) != self._owner or not isinstance(proof, str) \
                        or not hmac.compare_digest(proof, self._proof(user, server)):
                    continue
                if f"{user}/{server}" in launched:
                    continue  # a user's server now
                await self._adopt_one(user, server, str(options.get("image", "")), state, retire)
        self._update_gauges()

    async def _adopt_one(self, user: str, server: str, image: str, state: dict[str, Any], retire: bool) -> None:
        try:
            status = await self._probe(user, server) if state.get("ready") else None
        except HubError as exc:
            log.warning("warm pool: cannot check %s/%s: %s", user, server, exc)
            return
        if status != 200 or not image or retire:
            await self._retire(user, server)  # nobody's (the log names no launch of it): removed
            return
        age = _age(state.get("started"))
        self._ready.setdefault(image, []).append(WarmServer(user, server, image, self._clock() - age))
        self._ready[image].sort(key=lambda w: w.ready_at)
        log.info("warm pool: adopted %s/%s of %s", user, server, image)

    def _update_gauges(self) -> None:
        metrics.POOL_SERVERS.labels(state="ready").set(sum(len(s) for s in self._ready.values()))
        metrics.POOL_SERVERS.labels(state="starting").set(sum(self._starting.values()))


def _age(started: object) -> float:
    """Seconds since the hub's ISO timestamp ``started`` (0 when it cannot be read)."""
    if not isinstance(started, str):
        return 0.0
    try:
        then = datetime.fromisoformat(started)
    except ValueError:
        return 0.0
    return max(0.0, time.time() - then.timestamp())
