"""Handling a launch request: policy, resolution, image name, registry check, then build or launch.

The handler follows kilnbus' contract. Progress the user should see at once (``resolved``, with
the commit and image, and the default-branch fallback notice) is reported as it happens; the
outcome is returned for the bus to publish before the request counts as handled: ``built`` and a
hub launch request for an image already in the registry, ``ready`` for a build-only request that
finds one, or a build request for the builder. A refusal is a ``KilnError`` carrying the message
the user can act on and a machine-readable cause for analytics, which the bus turns into ``failed``.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable

from kiln_resolver import metrics
from kiln_resolver.images import image_name, split_image
from kiln_resolver.policy import Policy, Refusal
from kiln_resolver.private import PrivateAccess
from kiln_resolver.providers import RepoProvider, Resolution, ResolveError
from kiln_resolver.registry import Registry, RegistryError
from kiln_resolver.running import RunningServers
from kiln_resolver.settings import Settings
from kilnbus import (
    BadRequest,
    BuildRequested,
    Bus,
    Delivery,
    HubLaunchRequested,
    KilnError,
    LaunchRequested,
    Outgoing,
    Phase,
    PhaseReporter,
    TooManyRequests,
    Unavailable,
)

log = logging.getLogger(__name__)


# A user part (user:password@) in a URL, written plainly, or percent-encoded as in git specs.
_USERINFO = (re.compile(r"(://)[^/@]*(@)"), re.compile(r"(?i)(%3A%2F%2F)(?:[^%/@]|%(?!2F|40))*(%40)"))


def without_userinfo(spec: str) -> str:
    """``spec`` with any URL's user part replaced by ``***@``: a password pasted into a launch link is
    refused (kilnbus.urlguard), and must not be repeated in the refusal, the log or the event log."""
    for pattern in _USERINFO:
        spec = pattern.sub(lambda m: m.group(1) + "***" + m.group(2), spec)
    return spec


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
    """The launch-request handler; ``running`` is its count of running servers, which it does not start."""

    def __init__(self, settings: Settings, bus: Bus, providers: dict[str, RepoProvider], registry: Registry,
                 running: RunningServers) -> None:
        self._s = settings
        self._topics = bus.topics
        self._report = PhaseReporter(bus, bus.topics, "resolver")
        self._providers = providers
        self._registry = registry
        self._policy = Policy(settings)
        self.private = PrivateAccess(settings)
        self.running = running
        self._cache: dict[tuple[str, str], tuple[float, tuple[Resolution, str] | ResolveError]] = {}
        self._handled = _Recent()
        self._in_flight: set[str] = set()
        self.resolutions = 0  # provider calls made (cache misses)

    async def handle(self, delivery: Delivery[LaunchRequested]) -> list[Outgoing]:
        request = delivery.value
        rid = request.request_id
        if rid in self._handled or rid in self._in_flight:
            log.info("launch request %s delivered again; already handled", rid)
            return []
        self._in_flight.add(rid)  # copies are handled concurrently: a second one must see the first
        try:
            outcome = await self._handle(request)
        except KilnError as exc:
            metrics.OUTCOMES.labels(provider=request.provider, outcome=exc.cause).inc()
            log.info("launch %s of %s/%s failed: %s", rid, request.provider, without_userinfo(request.spec), exc.cause)
            if not exc.retriable:
                self._handled.add(rid)  # an answer, as much as a build request is
            raise
        finally:
            self._in_flight.discard(rid)
        self._handled.add(rid)
        return outcome

    async def _handle(self, request: LaunchRequested) -> list[Outgoing]:
        if refusal := self._policy.refuse_spec(request.provider, request.spec):
            raise KilnError(refusal.message, cause=refusal.cause, status=refusal.status)
        provider = self._providers.get(request.provider)
        if provider is None:
            raise BadRequest(f"Kiln cannot launch from {request.provider!r} repositories yet.", cause="unsupported_provider")
        try:
            resolution, fell_back = await self._resolve(request, provider)
        except ResolveError as exc:
            if exc.private:  # a missing ref of a private repository: said only to who may launch it
                await self._check_private(request, provider)
            raise self._failure(request, exc) from exc
        if resolution.private:
            await self._check_private(request, provider)
        if fell_back:
            await self._report.report(request, Phase.WAITING, message=f"Ref {fell_back!r} not found; using the default "
                                      "branch (HEAD) instead. Please update your links.\n")
        image = image_name(self._s.image_prefix, resolution.build_slug, resolution.ref)
        await self._report.report(request, Phase.RESOLVED, repo_url=resolution.repo_url, ref=resolution.ref,
                                  ref_url=resolution.ref_url, resolved_spec=resolution.resolved_spec, image_name=image,
                                  private=resolution.private or None,
                                  message=f"Resolved {request.spec} to {resolution.ref}\n")
        _, repository, tag = split_image(image)
        try:
            exists = await self._registry.image_exists(repository, tag)
        except RegistryError as exc:
            # Told at once, as BinderHub does: retrying the handler would say "resolved" again.
            # What failed (the registry's address, its token server) is the operators' business: the log's.
            log.warning("cannot ask the registry for %s:%s: %s", repository, tag, exc)
            raise Unavailable("Kiln cannot reach its image registry right now; please try again shortly.",
                              cause="registry_unreachable", retriable=False) from exc
        quota = 0 if request.build_only else self._policy.quota_for(request.provider, request.spec)
        if quota and self.running.count(image) >= quota:
            raise TooManyRequests(f"Too many users running {resolution.repo_url}! Try again soon.", cause="repo_quota")
        build = BuildRequested(request_id=request.request_id, image_name=image, repo_url=resolution.repo_url,
                               ref=resolution.ref, provider=request.provider, spec=request.spec,
                               ref_url=resolution.ref_url, resolved_spec=resolution.resolved_spec,
                               launch=not request.build_only, hub_user=request.hub_user,
                               launch_host=request.launch_host, client_ip=request.client_ip,
                               content=resolution.content)
        metrics.OUTCOMES.labels(provider=request.provider, outcome="cached" if exists else "build").inc()
        if not exists:
            return [Outgoing(self._topics.build_requested, image, build)]
        if request.build_only:
            return [self._report.event(request, Phase.READY, image_name=image, message="Done! Found built image\n")]
        return [self._report.event(request, Phase.BUILT, image_name=image, message="Found built image, launching...\n"),
                Outgoing(self._topics.hub_launch_requested, request.request_id, HubLaunchRequested.from_build(build))]

    async def _check_private(self, request: LaunchRequested, provider: RepoProvider) -> None:
        """Refuse a private repository to who may not launch it, as if it did not exist: its name,
        refs and commits are told to nobody who could not read them anyway."""
        try:
            refusal = await self.private.refusal(request.provider, provider, request.spec, request.hub_user)
        except Exception as exc:  # noqa: BLE001 (a check that cannot run refuses, and says nothing else)
            log.warning("launch %s of %s/%s refused: the check of who may launch it failed: %r", request.request_id,
                        request.provider, request.spec, exc)
            refusal = Refusal("the check failed", "private_repository", 403)
        if refusal is None:
            return
        log.info("launch %s of %s/%s refused: %s", request.request_id, request.provider, request.spec, refusal.message)
        not_found = getattr(provider, "not_found", None)
        missing = not_found(request.spec) if not_found else ResolveError("Repository not found (or not public).",
                                                                         "repo_not_found", 404)
        raise self._failure(request, missing)

    def _failure(self, request: LaunchRequested, exc: ResolveError) -> KilnError:
        message = f"Error resolving ref for {request.provider}:{without_userinfo(request.spec)}: {exc}"
        if exc.cause == "repo_not_found":
            message += self.private.hint(request.hub_user)
        return KilnError(message, cause=exc.cause, status=exc.status)

    async def _resolve(self, request: LaunchRequested, provider: RepoProvider) -> tuple[Resolution, str]:
        """The resolution, and the ref it fell back from to the default branch ("" when it did not).

        Answers that a repository or ref does not exist are cached as long as resolutions: were
        only found ones cached, a second ask answered at once would tell a private repository
        (found, then refused) from a missing one (asked of the forge each time)."""
        key = (request.provider, request.spec)
        cached = self._cache.get(key)
        if cached and time.monotonic() - cached[0] < self._s.resolve_cache_s:
            if isinstance(cached[1], ResolveError):
                known = cached[1]
                raise ResolveError(str(known), known.cause, known.status, private=known.private)
            return cached[1]
        fell_back = ""
        try:
            try:
                resolution = await self._timed(request.provider, provider.resolve(request.spec))
            except ResolveError as exc:
                # BinderHub's fallback: links to master or main keep working when the default branch changed.
                owner_repo, _, ref = request.spec.rpartition("/")
                if exc.cause != "ref_not_found" or request.provider != "gh" or ref not in ("master", "main"):
                    raise
                if exc.private:  # refused before asking more of it, as a missing repository is asked no more
                    await self._check_private(request, provider)
                resolution = await self._timed(request.provider, provider.resolve(f"{owner_repo}/HEAD"))
                fell_back = ref
        except ResolveError as exc:
            if exc.cause in ("repo_not_found", "ref_not_found"):
                self._remember(key, exc)
            raise
        self.resolutions += 1
        self._remember(key, (resolution, fell_back))
        return resolution, fell_back

    def _remember(self, key: tuple[str, str], answer: tuple[Resolution, str] | ResolveError) -> None:
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (time.monotonic(), answer)

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
