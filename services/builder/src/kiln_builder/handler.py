"""Handling build requests: fetch, plan, build (environment image, then repository image), push.

The handler returns, and the request's offset is committed, only once its build has ended and
``built`` (with the hub launch request) or ``failed`` has been published. A builder killed mid-build
therefore has its requests delivered again after restart, and they are built again; ``built`` is
only ever said after the push completed, so a half-pushed image is never reported as built.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from kilnbus import BuildRequested, BusProducer, Delivery, HubLaunchRequested, LayerProgress, Phase, PhaseEvent, Topics

from kiln_builder.buildpacks import ENTRYPOINT_SCRIPT, NB_UID, NB_USER, REPO_SUBDIR, BuildpackError, plan
from kiln_builder import metrics
from kiln_builder.builds import Builds, Job
from kiln_builder.diagnose import diagnose
from kiln_builder.dockerfile_guard import DockerfileRefused, check_dockerfile, registry_host
from kiln_builder.executor import BuildExecutor, BuildFailed
from kiln_builder.fetch import FetchPolicy, fetch
from kiln_builder.settings import Settings

log = logging.getLogger(__name__)
PUSH_EVENT_INTERVAL_S = 1.5  # as BinderHub: a progress bar needs no more
# Sent without waiting for the broker (order kept by the idempotent producer; the next phase change
# waits for them): log lines, and the queue position a build starts from.
LOG_PHASES = (Phase.WAITING, Phase.FETCHING, Phase.BUILDING)


class Builder:
    """The build-request handler: one ``Builds`` queue, fetch and plan here, builds on the executor."""

    def __init__(self, settings: Settings, producer: BusProducer, topics: Topics, executor: BuildExecutor) -> None:
        self._s = settings
        self._producer = producer
        self._topics = topics
        self._executor = executor
        self.builds = Builds(settings.concurrent_builds, self._build, self._emit,
                             history_bytes=settings.build_log_memory_bytes, max_line_chars=settings.max_log_line_chars)
        self._fetch_policy = FetchPolicy(max_bytes=settings.max_repo_bytes, max_entries=settings.max_repo_entries,
                                         max_fetch_bytes=settings.max_fetch_bytes,
                                         allowed_schemes=settings.git_allowed_protocols,
                                         allowed_private_hosts=settings.allowed_private_hosts)
        self._in_flight: set[str] = set()
        # Log-line sends not yet acknowledged, per request: each waits only for its own, so a send that
        # failed for one build fails that build and no other running beside it.
        self._pending: dict[str, list[asyncio.Future[Any]]] = {}
        self.completed = 0

    async def aclose(self) -> None:
        """Stop every build still running (their requests are delivered again after a restart), then
        close the executor's client."""
        await self.builds.aclose()
        await self._executor.aclose()

    async def _emit(self, request: BuildRequested, phase: Phase, fields: dict[str, Any]) -> None:
        event = PhaseEvent(request_id=request.request_id, phase=phase, service="builder", **fields)
        if phase in LOG_PHASES:
            # Log lines are not awaited one by one (a broker round trip each): the idempotent producer
            # keeps them in order, and the request's next phase change waits for them.
            sent = await self._producer.send(self._topics.phase_events, request.request_id, event)
            pending = self._pending.setdefault(request.request_id, [])  # after the await: a phase change may have taken the list
            pending.append(sent)
            if len(pending) > 1000:
                # A build printing for hours must not keep a future per line until its next phase change;
                # failed sends stay, so that phase change still fails.
                pending[:] = [f for f in pending if not f.done() or f.cancelled() or f.exception() is not None]
            return
        await asyncio.gather(*self._pending.pop(request.request_id, []))
        await self._producer.publish(self._topics.phase_events, request.request_id, event)

    async def handle(self, delivery: Delivery[BuildRequested]) -> None:
        request = delivery.value
        if request.request_id in self._in_flight:
            return  # delivered twice while its build runs: the first delivery answers
        self._in_flight.add(request.request_id)
        try:
            job = await self.builds.submit(request)
            try:
                await asyncio.shield(job.done)
            except BuildFailed:
                pass  # every request of the job was told why
            except asyncio.CancelledError:
                await self.builds.abandon(job, request.request_id)
                raise
        finally:
            self._in_flight.discard(request.request_id)
            self._pending.pop(request.request_id, None)  # sends after its last phase change: nobody waits

    # -- one build -----------------------------------------------------------------------------

    async def _build(self, job: Job, builds: Builds) -> None:
        started = time.monotonic()
        status = "failure"
        with metrics.INPROGRESS_BUILDS.track_inprogress():
            try:
                await self._build_and_announce(job, builds)
                status = "success"
            finally:
                metrics.BUILD_TIME.labels(status=status).observe(time.monotonic() - started)
                metrics.BUILD_COUNT.labels(status=status, provider=job.first.provider, repo=job.first.repo_url).inc()

    async def _build_and_announce(self, job: Job, builds: Builds) -> None:
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
                await fetch(request.repo_url, request.ref, workdir, fetching, self._s.max_repo_bytes,
                            Path(self._s.work_dir) / "git-cache", policy=self._fetch_policy)
                await self._build_image(job, workdir, building)
            await self._push(job, builds)
        except (BuildFailed, BuildpackError) as exc:
            cause = getattr(exc, "cause", "unsupported_environment")
            message = str(exc)
            if isinstance(exc, BuildFailed) and cause == "build_failed":
                message, cause = diagnose(message, job.lines, self._s.log_tail_lines)
            log.info("build of %s failed (%s) after %.0fs", job.image, cause, time.monotonic() - started)
            await builds.emit(job, Phase.FAILED, message=message.rstrip("\n") + "\n", failure_cause=cause, image_name=job.image)
            raise BuildFailed(message, cause) from None
        except Exception:
            # The details (which may name Kiln's internals) go to the log, not to the user.
            log.exception("build of %s hit an unexpected error", job.image)
            message = "The builder hit an unexpected error. Please try again; if it persists, tell this Binder's operators."
            await builds.emit(job, Phase.FAILED, message=message + "\n", failure_cause="internal_error", image_name=job.image)
            raise BuildFailed(message, "internal_error") from None
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        log.info("built %s in %.0fs for %d request(s)", job.image, time.monotonic() - started, len(job.subscribers))
        self.completed += 1
        await builds.emit(job, Phase.BUILT, message="Built image, launching...\n", image_name=job.image)
        for req in list(job.subscribers.values()):
            if req.launch:
                await self._producer.publish(self._topics.hub_launch_requested, req.request_id, HubLaunchRequested(
                    request_id=req.request_id, image_name=req.image_name, repo_url=req.repo_url, ref=req.ref,
                    provider=req.provider, spec=req.spec, ref_url=req.ref_url, resolved_spec=req.resolved_spec,
                    hub_user=req.hub_user, launch_host=req.launch_host, client_ip=req.client_ip))
            else:
                await self._emit(req, Phase.READY, {"message": "Done! Image built\n", "image_name": req.image_name})

    async def _check_dockerfile(self, text: str) -> None:
        """Refuse what the Docker engine would fetch on Kiln's own network (dockerfile_guard), and base
        images with ONBUILD triggers, which would run such instructions in this build."""
        kiln_registries = [h for h in (registry_host(self._s.base_image), registry_host(self._s.env_image_prefix)) if h]
        try:
            images = await check_dockerfile(text, kiln_registries)
        except DockerfileRefused as exc:
            raise BuildpackError(str(exc), "dockerfile_refused") from None
        for image in images:
            if await self._executor.onbuild_triggers(image, registry_host(image) in kiln_registries):
                raise BuildpackError(f"The image {image} has ONBUILD triggers, which Kiln does not run (they would run "
                                     "in this build unchecked). Start from an image without them.", "dockerfile_refused")

    async def _build_image(self, job: Job, repo: Path, building: Any) -> None:
        request = job.first
        labels = {"repo2docker.repo": request.repo_url, "repo2docker.ref": request.ref,
                  "repo2docker.version": f"kiln-{version('kiln-builder')}"}
        the_plan = plan(repo, self._s.base_image, self._s.offered_pythons, labels, max_file_bytes=self._s.max_config_file_bytes)
        for line in the_plan.summary:
            await building(f"Kiln: {line}\n")
        timeout = self._s.build_timeout_s
        if the_plan.kind == "dockerfile":
            await self._check_dockerfile(the_plan.dockerfile_text or "")
            await self._executor.build(repo, the_plan.dockerfile_text, job.image, building,
                                       buildargs={"NB_USER": NB_USER, "NB_UID": str(NB_UID)}, timeout_s=timeout,
                                       labels=the_plan.labels)
            return
        env_image = f"{self._s.env_image_prefix}:{the_plan.env_key}"
        if await self._executor.has_image(env_image) or await self._executor.pull(env_image):
            await building(f"Kiln: reusing the environment image {env_image} (same base image and environment files)\n")
        else:
            await building(f"Kiln: building the environment image {env_image}\n")
            assert the_plan.env_dockerfile is not None
            await self._executor.build(the_plan.env_files, the_plan.env_dockerfile, env_image, building, timeout_s=timeout)
            job.env_image_to_push = env_image
        await self._executor.build(repo, the_plan.repo_dockerfile.replace("{env_image}", env_image), job.image, building,
                                   timeout_s=timeout, extra_files={"kiln-entrypoint": ENTRYPOINT_SCRIPT.encode()},
                                   subdir=REPO_SUBDIR)

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
