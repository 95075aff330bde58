"""Builds in Kubernetes pods: the ``BuildExecutor`` the builder uses when it runs on a cluster.

Each build is one pod in the build namespace, removed when the build ends however it ends:

1. an init container (the build image, waiting for a marker file) receives the build context as a
   tar stream through the pod ``exec`` API, the way ``kubectl cp`` copies files;
2. the build container runs BuildKit rootless (``buildctl-daemonless.sh``): no Docker socket, no
   privileged container; it builds the Dockerfile Kiln generated and pushes the image itself, with
   the registry credentials mounted from a Secret;
3. its log is followed line by line into ``building`` events; the pod's own deadline
   (``activeDeadlineSeconds``) and the executor's timer both bound it.

The kubernetes client is synchronous; its calls run in threads. ``api`` may be any object with the
``CoreV1Api`` methods used here, which is how the unit tests drive it without a cluster.
"""

from __future__ import annotations

import asyncio
import base64
import json
import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from kiln_builder.executor import BuildFailed, LineSink, ProgressSink, _tar_context

log = logging.getLogger(__name__)
WORKSPACE = "/workspace"
READY_MARKER = ".kiln-context-ready"
IMAGE_ERRORS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName")


@dataclass
class PodSettings:
    """How build pods are made: what the operator sets in the chart's ``builder.kubernetes`` values."""

    namespace: str = "default"
    image: str = "moby/buildkit:v0.18.2-rootless"
    cpu_request: str = "500m"
    cpu_limit: str = ""
    memory_request: str = "1Gi"
    memory_limit: str = "4Gi"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    service_account: str = ""
    docker_config_secret: str = ""  # a Secret with key config.json: the registry credentials for pushes
    insecure_registries: list[str] = field(default_factory=list)  # registries reached over plain HTTP
    start_timeout_s: float = 300  # image pull and scheduling
    poll_interval_s: float = 0.5


def pod_name(tag: str) -> str:
    """A pod name unique to a build: the image's hash and the time, within DNS label rules."""
    digest = hashlib.sha256(f"{tag}{time.time_ns()}".encode()).hexdigest()[:16]
    return f"kiln-build-{digest}"


def build_command(tag: str, buildargs: dict[str, str], labels: dict[str, str], insecure: bool) -> list[str]:
    """buildctl's arguments: the generated Dockerfile in the workspace, the image pushed when built."""
    args = ["buildctl-daemonless.sh", "build", "--frontend", "dockerfile.v0",
            "--local", f"context={WORKSPACE}", "--local", f"dockerfile={WORKSPACE}",
            "--opt", "filename=.kiln.Dockerfile", "--progress", "plain"]
    for key, value in sorted(buildargs.items()):
        args += ["--opt", f"build-arg:{key}={value}"]
    for key, value in sorted(labels.items()):
        args += ["--opt", f"label:{key}={value}"]
    output = f"type=image,name={tag},push=true"
    if insecure:
        output += ",registry.insecure=true"
    return args + ["--output", output]


def pod_manifest(name: str, tag: str, settings: PodSettings, timeout_s: float, buildargs: dict[str, str] | None = None,
                 labels: dict[str, str] | None = None) -> k8s.V1Pod:
    """The build pod for ``tag``."""
    registry = tag.split("/", 1)[0]
    workspace = k8s.V1VolumeMount(name="workspace", mount_path=WORKSPACE)
    limits = {"memory": settings.memory_limit} if settings.memory_limit else {}
    if settings.cpu_limit:
        limits["cpu"] = settings.cpu_limit
    mounts = [workspace]
    volumes = [k8s.V1Volume(name="workspace", empty_dir=k8s.V1EmptyDirVolumeSource())]
    if settings.docker_config_secret:
        mounts.append(k8s.V1VolumeMount(name="docker-config", mount_path="/home/user/.docker", read_only=True))
        volumes.append(k8s.V1Volume(name="docker-config", secret=k8s.V1SecretVolumeSource(
            secret_name=settings.docker_config_secret, items=[k8s.V1KeyToPath(key="config.json", path="config.json")])))
    wait = f"until [ -f {WORKSPACE}/{READY_MARKER} ]; do sleep 0.2; done"
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(
            name=name, namespace=settings.namespace,
            labels={"app.kubernetes.io/part-of": "kiln", "app.kubernetes.io/component": "build",
                    "kiln.build/image-hash": hashlib.sha256(tag.encode()).hexdigest()[:40]},
            annotations={"kiln.build/image": tag}),
        spec=k8s.V1PodSpec(
            restart_policy="Never",
            active_deadline_seconds=max(1, int(timeout_s)),
            node_selector=settings.node_selector or None,
            tolerations=[k8s.V1Toleration(**t) for t in settings.tolerations] or None,
            service_account_name=settings.service_account or None,
            automount_service_account_token=False,
            init_containers=[k8s.V1Container(name="context", image=settings.image, command=["sh", "-c", wait],
                                              volume_mounts=[workspace])],
            containers=[k8s.V1Container(
                name="build", image=settings.image,
                command=build_command(tag, buildargs or {}, labels or {}, registry in settings.insecure_registries),
                env=[k8s.V1EnvVar(name="BUILDKITD_FLAGS", value="--oci-worker-no-process-sandbox")],
                resources=k8s.V1ResourceRequirements(
                    requests={"cpu": settings.cpu_request, "memory": settings.memory_request}, limits=limits or None),
                security_context=k8s.V1SecurityContext(
                    run_as_user=1000, run_as_group=1000,
                    seccomp_profile=k8s.V1SeccompProfile(type="Unconfined"),
                    app_armor_profile=k8s.V1AppArmorProfile(type="Unconfined")),
                volume_mounts=mounts)],
            volumes=volumes))


class KubernetesExecutor:
    """Runs each build as a pod (BuildKit rootless), streaming its log; see the module docstring."""

    def __init__(self, settings: PodSettings, api: Any | None = None, registry_url: str = "",
                 registry_auth: tuple[str, str] | None = None, tail_lines: int = 20,
                 exec_stdin: Callable[[Any, str, str, str, list[str], bytes], None] | None = None) -> None:
        self._s = settings
        self._api = api
        self._exec_stdin = exec_stdin or exec_with_stdin
        self._registry_url = registry_url.rstrip("/")
        self._registry_auth = registry_auth
        self._tail = tail_lines

    def _core(self) -> Any:
        if self._api is None:
            from kubernetes import config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self._api = k8s.CoreV1Api()
        return self._api

    async def build(self, context: dict[str, bytes] | Path, dockerfile: str, tag: str, on_line: LineSink,
                    buildargs: dict[str, str] | None = None, timeout_s: float = 3600,
                    extra_files: dict[str, bytes] | None = None, labels: dict[str, str] | None = None,
                    subdir: str = "") -> None:
        api = self._core()
        tar = await asyncio.to_thread(_tar_context, context, dockerfile, extra_files, subdir)
        name = pod_name(tag)
        pod = pod_manifest(name, tag, self._s, timeout_s, buildargs, labels)
        await asyncio.to_thread(api.create_namespaced_pod, self._s.namespace, pod)
        await on_line(f"Kiln: build pod {self._s.namespace}/{name}\n")
        tail: deque[str] = deque(maxlen=self._tail)
        try:
            await asyncio.wait_for(self._run(api, name, tar.getvalue(), on_line, tail), timeout_s)
        except TimeoutError:
            limit = f"{timeout_s / 60:.0f} minutes" if timeout_s >= 120 else f"{timeout_s:.0f} seconds"
            raise BuildFailed(f"The build took longer than the limit of {limit} and was stopped.", "build_timeout") from None
        finally:
            await asyncio.to_thread(self._delete, api, name)

    async def _run(self, api: Any, name: str, tar: bytes, on_line: LineSink, tail: deque[str]) -> None:
        await self._wait_for(api, name, lambda pod: _init_running(pod), "the build pod to start")
        await asyncio.to_thread(self._send_context, api, name, tar)
        await self._wait_for(api, name, lambda pod: _build_started(pod), "the build container to start")
        await self._follow_log(api, name, on_line, tail)
        pod = await self._wait_for(api, name, lambda pod: _build_finished(pod), "the build to finish")
        terminated = _build_state(pod).terminated
        if pod.status.reason == "DeadlineExceeded":
            raise BuildFailed("The build took longer than its limit and was stopped.", "build_timeout")
        if terminated is None:
            raise BuildFailed(f"The build pod ended without a result ({pod.status.phase}).", "builder_error")
        if terminated.reason == "OOMKilled":
            raise BuildFailed(f"The build used more than its memory limit of {self._s.memory_limit} and was stopped.",
                              "build_memory")
        if terminated.exit_code != 0:
            last = next((line for line in reversed(tail) if line.strip()), f"exit code {terminated.exit_code}")
            raise BuildFailed(last.strip())

    async def _wait_for(self, api: Any, name: str, done: Any, what: str) -> Any:
        deadline = time.monotonic() + self._s.start_timeout_s
        while True:
            pod = await asyncio.to_thread(api.read_namespaced_pod, name, self._s.namespace)
            if done(pod):
                return pod
            waiting = _waiting_reason(pod)
            if pod.status.phase in ("Failed", "Succeeded") or waiting in IMAGE_ERRORS:
                raise BuildFailed(f"The build pod could not run: {waiting or pod.status.reason or pod.status.phase}.",
                                  "builder_error")
            if time.monotonic() > deadline:
                raise BuildFailed(f"Timed out waiting for {what} ({waiting or pod.status.phase}).", "builder_error")
            await asyncio.sleep(self._s.poll_interval_s)

    def _send_context(self, api: Any, name: str, tar: bytes) -> None:
        """Stream the context into the init container, then drop the marker that lets it finish."""
        script = f"tar -xf - -C {WORKSPACE} && touch {WORKSPACE}/{READY_MARKER}"
        self._exec_stdin(api, name, self._s.namespace, "context", ["sh", "-c", script], tar)

    async def _follow_log(self, api: Any, name: str, on_line: LineSink, tail: deque[str]) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        done = object()

        def hand_over(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:
                pass  # the build was given up (time limit) and its loop is gone: nobody is listening

        def pump() -> None:
            try:
                response = api.read_namespaced_pod_log(name, self._s.namespace, container="build", follow=True,
                                                       _preload_content=False)
                for line in _lines(response):
                    hand_over(line)
            except BaseException as exc:
                hand_over(exc)
            finally:
                hand_over(done)

        threading.Thread(target=pump, daemon=True, name="pod-log").start()
        while (item := await queue.get()) is not done:
            if isinstance(item, ApiException):
                log.warning("log of build pod %s: %s", name, item.reason)
                continue
            if isinstance(item, BaseException):
                raise item
            tail.append(item)
            await on_line(item + "\n")

    def _delete(self, api: Any, name: str) -> None:
        try:
            api.delete_namespaced_pod(name, self._s.namespace, grace_period_seconds=0,
                                      body=k8s.V1DeleteOptions(propagation_policy="Background"))
        except ApiException as exc:
            if exc.status != 404:
                log.warning("could not delete build pod %s: %s", name, exc.reason)

    async def push(self, image: str, on_progress: ProgressSink) -> None:
        """Nothing to do: the build pod pushed the image as its last step. The client is told so."""
        await on_progress({"id": image.rpartition(":")[2][:12], "status": "Pushed"})

    async def has_image(self, image: str) -> bool:
        """Whether the registry already has ``image`` (there is no local image store to look in)."""
        if not self._registry_url:
            return False
        name, _, tag = image.partition("/")[2].rpartition(":")
        try:
            async with httpx.AsyncClient(timeout=10, auth=self._registry_auth) as http:
                r = await http.head(f"{self._registry_url}/v2/{name}/manifests/{tag}", headers={"Accept": ", ".join((
                    "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
                    "application/vnd.docker.distribution.manifest.v2+json",
                    "application/vnd.docker.distribution.manifest.list.v2+json"))})
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    async def pull(self, image: str) -> bool:
        """A pod builds from the registry directly, so 'pulled' means 'there'."""
        return await self.has_image(image)


def exec_with_stdin(api: Any, name: str, namespace: str, container: str, command: list[str], data: bytes) -> None:
    """Run ``command`` in a container of a pod with ``data`` as its standard input (the pod exec API)."""
    from kubernetes.stream import stream

    ws = stream(api.connect_get_namespaced_pod_exec, name, namespace, container=container, command=command,
                stdin=True, stdout=True, stderr=True, tty=False, _preload_content=False, binary=True)
    try:
        for offset in range(0, len(data), 1 << 20):
            ws.write_stdin(data[offset:offset + (1 << 20)])
        if getattr(ws, "subprotocol", "") == "v5.channel.k8s.io":
            ws.close_channel(0)  # end of standard input; older API servers see it when the socket closes
            ws.run_forever(timeout=120)
            if ws.returncode not in (0, None):
                raise BuildFailed(f"Copying the build context into the pod failed: {ws.read_stderr()[-500:]!r}",
                                  "builder_error")
        else:
            ws.update(timeout=1)
    finally:
        ws.close()


def docker_config_json(registry: str, username: str, password: str) -> str:
    """The config.json a Secret holds for pushes (the form ``kubectl create secret docker-registry`` makes)."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return json.dumps({"auths": {registry: {"auth": token}}})


def _lines(response: Any) -> Iterator[str]:
    partial = b""
    for chunk in response.stream(4096) if hasattr(response, "stream") else response:
        *lines, partial = (partial + chunk).split(b"\n")
        for line in lines:
            yield line.decode(errors="replace")
    if partial:
        yield partial.decode(errors="replace")


def _statuses(pod: Any, init: bool) -> list[Any]:
    return (pod.status.init_container_statuses if init else pod.status.container_statuses) or []


def _init_running(pod: Any) -> bool:
    return any(s.name == "context" and s.state and s.state.running for s in _statuses(pod, True))


def _build_state(pod: Any) -> Any:
    for s in _statuses(pod, False):
        if s.name == "build":
            return s.state
    return k8s.V1ContainerState()


def _build_started(pod: Any) -> bool:
    state = _build_state(pod)
    return bool(state.running or state.terminated)


def _build_finished(pod: Any) -> bool:
    return bool(_build_state(pod).terminated) or pod.status.reason == "DeadlineExceeded"


def _waiting_reason(pod: Any) -> str:
    for s in _statuses(pod, True) + _statuses(pod, False):
        if s.state and s.state.waiting and s.state.waiting.reason:
            return str(s.state.waiting.reason)
    return ""

