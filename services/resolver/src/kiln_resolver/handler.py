"""Handling a launch request: policy, resolution, image name, registry check, then build or launch.

Every outcome is a phase event: ``resolved`` (Kiln's own, with the commit and image), then
``built`` for an image already in the registry, or a build request for the builder; or ``failed``
with a message the user can act on and a machine-readable cause for analytics.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any

from kilnbus import BuildRequested, BusProducer, Delivery, HubLaunchRequested, LaunchRequested, Phase, PhaseEvent, Topics

from kiln_resolver import metrics
from kiln_resolver.images import image_name, split_image
from kiln_resolver.policy import Policy
from kiln_resolver.providers import RepoProvider, ResolveError, Resolution
from kiln_resolver.registry import Registry, RegistryError
from kiln_resolver.running import RunningServers
from kiln_resolver.settings import Settings

log = logging.getLogger(__name__)


class _Recent:
    """A bounded set of recently handled request ids: a redelivered request is not handled twice."""

    def __init__(self, size: int = 10_000) -> None:
        self._items: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def add(self, key: str) -> None:
        self._items[key] = None
        while len(self._items) > self._size:
            self._items.popitem(last=False)


class Resolver:
    def __init__(self, settings: Settings, producer: BusProducer, topics: Topics, providers: dict[str, RepoProvider],
                 registry: Registry, policy: Policy, running: RunningServers) -> None:
        self._s = settings
        self._producer = producer
        self._topics = topics
        self._providers = providers
        self._registry = registry
        self._policy = policy
        self._running = running
        self._cache: dict[tuple[str, str], tuple[float, Resolution]] = {}
        self._handled = _Recent()
        self._in_flight: set[str] = set()
        self.resolutions = 0  # provider calls made (cache misses)

    async def handle(self, delivery: Delivery[LaunchRequested]) -> None:
        request = delivery.value
        rid = request.request_id
        if rid in self._handled or rid in self._in_flight:
            log.info("launch request %s delivered again; already handled", rid)
            return
        self._in_flight.add(rid)  # copies are handled concurrently: a second one must see the first
        try:
            await self._handle(request)
            self._handled.add(rid)
        finally:
            self._in_flight.discard(rid)

    async def _emit(self, request: LaunchRequested, phase: Phase, **fields: Any) -> None:
        await self._producer.publish(self._topics.phase_events, request.request_id, PhaseEvent(
            request_id=request.request_id, phase=phase, service="resolver", provider=request.provider, spec=request.spec,
            **fields))

    async def _fail(self, request: LaunchRequested, message: str, cause: str, status: int) -> None:
        metrics.OUTCOMES.labels(provider=request.provider, outcome=cause).inc()
        log.info("launch %s of %s/%s failed: %s", request.request_id, request.provider, request.spec, cause)
        await self._emit(request, Phase.FAILED, message=message.rstrip("\n") + "\n", failure_cause=cause, status_code=status)

    async def _handle(self, request: LaunchRequested) -> None:
        if refusal := self._policy.refuse_spec(request.provider, request.spec):
            return await self._fail(request, refusal.message, refusal.cause, refusal.status)
        provider = self._providers.get(request.provider)
        if provider is None:
            return await self._fail(request, f"Kiln cannot launch from {request.provider!r} repositories yet.",
                                    "unsupported_provider", 400)
        try:
            resolution = await self._resolve(request, provider)
        except ResolveError as exc:
            return await self._fail(request, f"Error resolving ref for {request.provider}:{request.spec}: {exc}", exc.cause, exc.status)
        image = image_name(self._s.image_prefix, resolution.build_slug, resolution.ref)
        await self._emit(request, Phase.RESOLVED, repo_url=resolution.repo_url, ref=resolution.ref, ref_url=resolution.ref_url,
                         resolved_spec=resolution.resolved_spec, image_name=image,
                         message=f"Resolved {request.spec} to {resolution.ref}\n")
        _, repository, tag = split_image(image)
        try:
            exists = await self._registry.image_exists(repository, tag)
        except RegistryError as exc:
            return await self._fail(request, f"Kiln cannot check for a built image: {exc}. Please try again shortly.",
                                    "registry_unreachable", 503)
        quota = 0 if request.build_only else self._policy.quota_for(request.provider, request.spec)
        if quota and self._running.count(image) >= quota:
            return await self._fail(request, f"Too many users running {resolution.repo_url}! Try again soon.", "repo_quota", 429)
        common = dict(request_id=request.request_id, image_name=image, repo_url=resolution.repo_url, ref=resolution.ref,
                      provider=request.provider, spec=request.spec, ref_url=resolution.ref_url,
                      resolved_spec=resolution.resolved_spec, hub_user=request.hub_user,
                      launch_host=request.launch_host, client_ip=request.client_ip)
        metrics.OUTCOMES.labels(provider=request.provider, outcome="cached" if exists else "build").inc()
        if exists:
            if request.build_only:
                return await self._emit(request, Phase.READY, image_name=image, message="Done! Found built image\n")
            await self._emit(request, Phase.BUILT, image_name=image, message="Found built image, launching...\n")
            await self._producer.publish(self._topics.hub_launch_requested, request.request_id, HubLaunchRequested(**common))
        else:
            await self._producer.publish(self._topics.build_requested, image,
                                         BuildRequested(**common, launch=not request.build_only))

    async def _resolve(self, request: LaunchRequested, provider: RepoProvider) -> Resolution:
        key = (request.provider, request.spec)
        cached = self._cache.get(key)
        if cached and time.monotonic() - cached[0] < self._s.resolve_cache_s:
            return cached[1]
        try:
            resolution = await self._timed(request.provider, provider.resolve(request.spec))
        except ResolveError as exc:
            # BinderHub's fallback: links to master or main keep working when the default branch changed.
            owner_repo, _, ref = request.spec.rpartition("/")
            if exc.cause != "ref_not_found" or request.provider != "gh" or ref not in ("master", "main"):
                raise
            resolution = await self._timed(request.provider, provider.resolve(f"{owner_repo}/HEAD"))
            await self._emit(request, Phase.WAITING, message=f"Ref {ref!r} not found; using the default branch (HEAD) "
                             "instead. Please update your links.\n")
        self.resolutions += 1
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (time.monotonic(), resolution)
        return resolution

    @staticmethod
    async def _timed(provider: str, call: Awaitable[Resolution]) -> Resolution:
        started = time.monotonic()
        status = "failure"
        try:
            resolution = await call
            status = "success"
            return resolution
        finally:
            metrics.RESOLVE_TIME.labels(provider=provider, status=status).observe(time.monotonic() - started)
