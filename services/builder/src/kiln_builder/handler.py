"""Handling build requests: fetch, plan, build (environment image, then repository image), push.

``Builder.handle`` waits for its request's build (one per image, ``kiln_builder.builds``) and returns
the request's outcome for the bus to publish: ``built`` and the hub launch request (or, for a
build-only request, ``ready``), or ``failed`` with its message and cause. Its offset is committed
only once those are published, so a builder killed mid-build has its requests delivered again after
restart, and they are built again; ``built`` is only ever said after the push completed, so a
half-pushed image is never reported as built.

While a build runs, its progress (queue position, git's and the engine's log lines, push progress)
goes to every request waiting for it through the ``PhaseReporter``: log lines without waiting for
each acknowledgement, phase changes once the request's own earlier lines are acknowledged.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from kiln_builder import metrics
from kiln_builder.buildpacks import (
    ENTRYPOINT_SCRIPT,
    NB_UID,
    NB_USER,
    REPO_SUBDIR,
    BuildpackError,
    CondaSettings,
    RSettings,
    plan,
)
from kiln_builder.builds import Builds, Job, RequestDropped
from kiln_builder.diagnose import diagnose
from kiln_builder.dockerfile_guard import DockerfileRefused, check_dockerfile, registry_host
from kiln_builder.errors import BuildFailed, BuildTimedOut
from kiln_builder.executor import BuildExecutor, LineSink
from kiln_builder.fetch import Fetcher
from kiln_builder.settings import Settings
from kilnbus import BuildRequested, Delivery, HubLaunchRequested, LayerProgress, Outgoing, Phase, PhaseReporter, Topics

log = logging.getLogger(__name__)
PUSH_EVENT_INTERVAL_S = 1.5  # as BinderHub: a progress bar needs no more
# Sent without waiting for the broker (order kept by the idempotent producer; the next phase change
# waits for them): log lines, and the queue position a build starts from.
LOG_PHASES = (Phase.WAITING, Phase.FETCHING, Phase.BUILDING)
# Past the executor's own time limit, a build that still has not ended (an engine that stopped
# answering) is stopped by the builder, so it cannot hold a build slot for ever.
EXECUTOR_GRACE_S = 60.0
INTERNAL_ERROR = "The builder hit an unexpected error. Please try again; if it persists, tell this Binder's operators."


class PendingSends:
    """Log-line sends not yet acknowledged, per request: each request waits only for its own, so a
    send that failed for one request fails that request alone (``Builds`` drops it from its build, which
    goes on for the others), and no build running beside it."""

    PRUNE_AT = 1000

    def __init__(self) -> None:
        self._by_request: dict[str, list[asyncio.Future[Any]]] = {}

    def add(self, request_id: str, sent: asyncio.Future[Any]) -> None:
        pending = self._by_request.setdefault(request_id, [])
        pending.append(sent)
        if len(pending) > self.PRUNE_AT:
            # A build printing for hours must not keep a future per line until its next phase change;
            # failed sends stay, so that phase change still fails.
            pending[:] = [f for f in pending if not f.done() or f.cancelled() or f.exception() is not None]

    async def flush(self, request_id: str) -> None:
        """Wait until every send for ``request_id`` so far is acknowledged; raise the first that failed."""
        await asyncio.gather(*self._by_request.pop(request_id, []))

    def drop(self, request_id: str) -> None:
        """Forget ``request_id``'s sends (its handler ended: nobody waits for them any more)."""
        self._by_request.pop(request_id, None)


class Builder:
    """The build-request handler: one ``Builds`` queue; fetch and plan here, builds on the executor.

    Its ports: ``reporter`` (phase events), ``executor`` (builds, the registry behind its pushes and
    pulls), ``fetcher`` (the repository's files); ``topics`` names where launch requests go.
    """

    def __init__(self, settings: Settings, reporter: PhaseReporter, topics: Topics, executor: BuildExecutor,
                 fetcher: Fetcher, *, executor_grace_s: float = EXECUTOR_GRACE_S) -> None:
        self._s = settings
        self._reporter = reporter
        self._topics = topics
        self._executor = executor
        self._fetcher = fetcher
        self._executor_grace_s = executor_grace_s
        self.builds = Builds(settings.concurrent_builds, self._build, self._emit,
                             history_bytes=settings.build_log_memory_bytes, max_line_chars=settings.max_log_line_chars)
        self._in_flight: set[str] = set()
        self._pending = PendingSends()
        self.completed = 0

    async def aclose(self) -> None:
        """Stop every build still running (their requests are delivered again after a restart).

        The executor is its maker's to close (``bootstrap``), after this."""
        await self.builds.aclose()

    async def _emit(self, request: BuildRequested, phase: Phase, fields: dict[str, Any]) -> None:
        if phase in LOG_PHASES:
            # Log lines are not awaited one by one (a broker round trip each): the idempotent producer
            # keeps them in order, and the request's next phase change waits for them.
            self._pending.add(request.request_id, await self._reporter.send(request, phase, **fields))
            return
        await self._pending.flush(request.request_id)
        await self._reporter.report(request, phase, **fields)

    async def handle(self, delivery: Delivery[BuildRequested]) -> list[Outgoing] | None:
        """Build ``delivery``'s image (or follow the build already running for it); return the outcome."""
        request = delivery.value
        if request.request_id in self._in_flight:
            return None  # delivered twice while its build runs: the first delivery answers
        self._in_flight.add(request.request_id)
        try:
            followed = await self.builds.submit(request)
            try:
                await asyncio.shield(followed.outcome)
                outcome = self._succeeded(request)
            except BuildFailed as exc:
                outcome = [self._failed(request, exc)]
            except RequestDropped:
                # Its own events could not be sent: it fails alone; the build goes on for the others.
                log.exception("request %s was dropped from the build of %s", request.request_id, request.image_name)
                self._pending.drop(request.request_id)  # the lost send is told above; the others are moot
                outcome = [self._failed(request, BuildFailed(INTERNAL_ERROR, "internal_error"))]
            except asyncio.CancelledError:
                await self.builds.abandon(followed.job, request.request_id)
                raise
            try:
                await self._pending.flush(request.request_id)  # its log so far goes out before its outcome
            except Exception:
                log.exception("a log line for request %s was not delivered", request.request_id)
                outcome = [self._failed(request, BuildFailed(INTERNAL_ERROR, "internal_error"))]
            return outcome
        finally:
            self._in_flight.discard(request.request_id)
            self._pending.drop(request.request_id)

    def _succeeded(self, request: BuildRequested) -> list[Outgoing]:
        built = self._reporter.event(request, Phase.BUILT, message="Built image, launching...\n",
                                     image_name=request.image_name)
        if request.launch:
            return [built, Outgoing(self._topics.hub_launch_requested, request.request_id,
                                    HubLaunchRequested.from_build(request))]
        return [built, self._reporter.event(request, Phase.READY, message="Done! Image built\n",
                                            image_name=request.image_name)]

    def _failed(self, request: BuildRequested, exc: BuildFailed) -> Outgoing:
        # As BinderHub's build failures: a message and a cause, no HTTP status.
        return self._reporter.event(request, Phase.FAILED, message=exc.message.rstrip("\n") + "\n",
                                    failure_cause=exc.cause, image_name=request.image_name)

    # -- one build -----------------------------------------------------------------------------

    async def _build(self, job: Job, builds: Builds) -> None:
        started = time.monotonic()
        status = "failure"
        with metrics.INPROGRESS_BUILDS.track_inprogress():
            try:
                await self._build_and_push(job, builds)
                status = "success"
            finally:
                metrics.BUILD_TIME.labels(status=status).observe(time.monotonic() - started)
                metrics.BUILD_COUNT.labels(status=status, provider=job.first.provider, repo=job.first.repo_url).inc()

    async def _build_and_push(self, job: Job, builds: Builds) -> None:
        """Build and push ``job``'s image; BuildFailed with the message every request of it is told."""
        request = job.first
        started = time.monotonic()
        workdir = Path(self._s.work_dir) / "checkouts" / hashlib.sha256(job.image.encode()).hexdigest()[:16]

        async def fetching(line: str) -> None:
            await builds.emit(job, Phase.FETCHING, message=line)

        async def building(line: str) -> None:
            await builds.emit(job, Phase.BUILDING, message=line)

        try:
            if await self._executor.has_image(job.image):
                await building(f"Found {job.image} on this builder; pushing it.\n")
            else:
                await self._fetcher.fetch(request.repo_url, request.ref, workdir, fetching, request.content)
                await self._build_image(job, workdir, building)
            await self._push(job, builds)
        except (BuildFailed, BuildpackError) as exc:
            message, cause = str(exc), exc.cause
            if isinstance(exc, BuildFailed) and cause == "build_failed":
                message, cause = diagnose(message, job.lines, self._s.log_tail_lines)
            log.info("build of %s failed (%s) after %.0fs", job.image, cause, time.monotonic() - started)
            raise BuildFailed(message, cause) from None
        except Exception:
            # The details (which may name Kiln's internals) go to the log, not to the user.
            log.exception("build of %s hit an unexpected error", job.image)
            raise BuildFailed(INTERNAL_ERROR, "internal_error") from None
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        log.info("built %s in %.0fs for %d request(s)", job.image, time.monotonic() - started, len(job.subscribers))
        self.completed += 1

    async def _check_dockerfile(self, text: str) -> None:
        """Refuse what the Docker engine would fetch on Kiln's own network (dockerfile_guard), and base
        images with ONBUILD triggers, which would run such instructions in this build."""
        kiln_registries = [h for h in (registry_host(self._s.base_image), registry_host(self._s.env_image_prefix)) if h]
        try:
            images = await check_dockerfile(text, kiln_registries)
        except DockerfileRefused as exc:
            raise BuildFailed(str(exc), "dockerfile_refused") from None
        for image in images:
            if await self._executor.onbuild_triggers(image, registry_host(image) in kiln_registries):
                raise BuildFailed(f"The image {image} has ONBUILD triggers, which Kiln does not run (they would run "
                                  "in this build unchecked). Start from an image without them.", "dockerfile_refused")

    async def _run_build(self, context: dict[str, bytes] | Path, dockerfile: str, tag: str, on_line: LineSink,
                         **options: Any) -> None:
        """One build on the executor, within the time limit (the executor's own, and ours past it)."""
        limit = self._s.build_timeout_s
        try:
            async with asyncio.timeout(limit + self._executor_grace_s):
                await self._executor.build(context, dockerfile, tag, on_line, timeout_s=limit, **options)
        except TimeoutError:
            log.warning("the executor did not stop the build of %s at its time limit; stopped here", tag)
            raise BuildTimedOut(limit) from None

    async def _build_image(self, job: Job, repo: Path, building: Callable[[str], Awaitable[None]]) -> None:
        request = job.first
        labels = {"repo2docker.repo": request.repo_url, "repo2docker.ref": request.ref,
                  "repo2docker.version": f"kiln-{version('kiln-builder')}"}
        # In a thread: a hostile environment.yml can take PyYAML many seconds, and the event loop carries
        # every other build's log and the consumer's heartbeats.
        the_plan = await asyncio.to_thread(
            plan, repo, self._s.base_image, self._s.offered_pythons, labels, max_file_bytes=self._s.max_config_file_bytes,
                        base_images=self._s.base_images,
                        conda=CondaSettings(self._s.conda_channel_alias, tuple(self._s.conda_channels)),
                        r_settings=RSettings(self._s.r_cran_url, tuple(self._s.r_versions.items())))
        for line in the_plan.summary:
            await building(f"Kiln: {line}\n")
        if the_plan.kind == "dockerfile":
            await self._check_dockerfile(the_plan.dockerfile_text or "")
            await self._run_build(repo, the_plan.dockerfile_text or "", job.image, building,
                                  buildargs={"NB_USER": NB_USER, "NB_UID": str(NB_UID)}, labels=the_plan.labels)
            return
        env_image = f"{self._s.env_image_prefix}:{the_plan.env_key}"
        if await self._executor.has_image(env_image) or await self._executor.pull(env_image):
            await building(f"Kiln: reusing the environment image {env_image} (same base image and environment files)\n")
        else:
            await building(f"Kiln: building the environment image {env_image}\n")
            assert the_plan.env_dockerfile is not None
            await self._run_build(the_plan.env_files, the_plan.env_dockerfile, env_image, building)
            job.env_image_to_push = env_image
        await self._run_build(repo, the_plan.repo_dockerfile.replace("{env_image}", env_image), job.image, building,
                              extra_files={"kiln-entrypoint": ENTRYPOINT_SCRIPT.encode()}, subdir=REPO_SUBDIR)

    @staticmethod
    async def _ignore(_: dict[str, Any]) -> None:
        return None

    async def _push(self, job: Job, builds: Builds) -> None:
        layers: dict[str, LayerProgress] = {}
        last = 0.0
        await builds.emit(job, Phase.PUSHING, message=f"Pushing {job.image}\n", progress={})

        async def progress(chunk: dict[str, Any]) -> None:
            nonlocal last
            layer = chunk.get("id")
            if not layer or "status" not in chunk:
                return
            detail = chunk.get("progressDetail") or {}
            if detail.get("total"):
                layers[layer] = LayerProgress(current=detail.get("current"), total=detail["total"])
            elif chunk["status"] in ("Pushed", "Layer already exists", "Mounted from", "Waiting", "Preparing"):
                layers[layer] = LayerProgress(status=chunk["status"])
            now = time.monotonic()
            if now - last >= PUSH_EVENT_INTERVAL_S:
                last = now
                await builds.emit(job, Phase.PUSHING, message="Pushing image\n", progress=dict(layers))

        await self._executor.push(job.image, progress)
        await builds.emit(job, Phase.PUSHING, message="Pushed image\n", progress=dict(layers))
        if job.env_image_to_push:
            # After the image built on it, whose push carried its layers: this costs only a manifest.
            await self._executor.push(job.env_image_to_push, self._ignore)
