"""Builds in Kubernetes pods: the ``BuildExecutor`` the builder uses when it runs on a cluster.

Each build is one pod in the build namespace, removed when the build ends however it ends. Its
containers run one after the other (two init containers, then the pod's one container):

1. ``context`` (the build image, waiting for a marker file) receives the build context as a tar
   stream through the pod ``exec`` API, the way ``kubectl cp`` copies files;
2. ``build`` runs BuildKit rootless (``buildctl-daemonless.sh``): no Docker socket, no privileged
   container. It builds the Dockerfile Kiln generated, whose RUN steps are the repository's code,
   and writes the image as an OCI layout into an ``emptyDir``. It holds no push credential: at most
   the read-only pull credential its ``FROM`` needs;
3. ``gate`` waits until the registry's push side answers a TCP connection. The pod starts in stage
   ``build`` (its ``kiln.build/stage`` label), which the chart's NetworkPolicies let reach the
   registry's pull side but not its push side. Only once ``build`` and every process the
   repository's code left behind have ended (an init container's processes die with it) does the
   executor relabel the pod ``push``, which a second policy lets reach the push side;
4. ``push`` (crane, no shell) pushes that layout to the registry with the push credential, the one
   container the credential is mounted into. Nothing the repository ran can read the credential or
   even reach the push side, whatever it does inside BuildKit's sandbox.

The log of ``build`` then ``push`` is followed line by line into ``building`` events; the pod's own
deadline (``activeDeadlineSeconds``) and the executor's timer both bound it. The pod mounts no
service-account token and its service account is one with no RBAC (the chart's ``<release>-build``).

The kubernetes client is synchronous; its calls run in threads. ``api`` may be any object with the
``CoreV1Api`` methods used here, which is how the unit tests drive it without a cluster.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from kiln_builder.errors import BuildFailed, BuildTimedOut
from kiln_builder.executor import LineSink, ProgressSink, _tar_context

log = logging.getLogger(__name__)
# What a manifest HEAD accepts: OCI and Docker manifests and indexes alike.
_MANIFEST_TYPES = ("application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "
                   "application/vnd.docker.distribution.manifest.v2+json, "
                   "application/vnd.docker.distribution.manifest.list.v2+json")
WORKSPACE = "/workspace"
IMAGE_DIR = "/kiln/image"  # the OCI layout the build writes and the push reads
# BuildKit rootless's state (the image's home directory, in moby/buildkit's rootless image as in
# Kiln's): an emptyDir, so the node's filesystem is under it. On the container's own overlay root
# its overlayfs snapshotter cannot mount and it falls back to copying every layer whole.
BUILDKIT_STATE_DIR = "/home/user/.local/share/buildkit"
PULL_CONFIG_DIR = "/kiln/pull"  # DOCKER_CONFIG of the build container: read-only registry credentials
PUSH_CONFIG_DIR = "/kiln/push"  # DOCKER_CONFIG of the push container: the push credentials
READY_MARKER = ".kiln-context-ready"
PUSH_KEY = "config.json"  # key of the docker-config Secret holding the push credentials
PULL_KEY = "pull.json"  # key of the same Secret holding pull-only credentials (optional)
IMAGE_ERRORS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName")
STAGE_LABEL = "kiln.build/stage"  # "build" while the repository's code may run, then "push"
# The gate's wait for the push side: at most 240 tries (each up to 2 s to connect, 0.5 s apart).
LINE_MAX = 64 * 1024  # longest log line passed on whole
# The gate first checks the layout holds only files and folders: the build's processes could have
# planted links there, which crane (holding the push credential) would follow. Exit 2 says so.
GATE_SCRIPT = ('odd=$(find "$3" ! -type f ! -type d | head -n 1); if [ -n "$odd" ]; then '
               'echo "the image layout holds something other than files: $odd" >&2; exit 2; fi; '
               'i=0; until nc -z -w 2 "$1" "$2" 2>/dev/null; do i=$((i + 1)); if [ "$i" -ge 240 ]; then '
               'echo "the registry\'s push side $1:$2 did not become reachable from the build pod" >&2; exit 1; fi; '
               'sleep 0.5; done')


@dataclass
class PodSettings:
    """How build pods are made: what the operator sets in the chart's ``builder.kubernetes`` values."""

    namespace: str = "default"
    image: str = "moby/buildkit:v0.18.2-rootless"
    # The push step: crane (go-containerregistry), which pushes an OCI layout and has no shell.
    push_image: str = "gcr.io/go-containerregistry/crane:v0.20.2"
    cpu_request: str = "500m"
    cpu_limit: str = ""
    memory_request: str = "1Gi"
    memory_limit: str = "4Gi"
    # Disk the build may fill (BuildKit's state, the image it writes, its own files): a pod over it
    # is evicted, so one repository cannot fill the node's disk for every other pod on it.
    disk_limit: str = "20Gi"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    service_account: str = ""  # the chart's "<release>-build": no RBAC, no token mounted
    # A Secret with key config.json (push credentials, mounted only into the push container) and
    # optionally pull.json (read-only credentials for the build's FROM, if the registry wants them).
    docker_config_secret: str = ""
    insecure_registries: list[str] = field(default_factory=list)  # registries reached over plain HTTP
    # Where the push step sends the image, when that is not the registry its name says: the name is
    # where nodes and builds pull from (a read-only side), this the side that takes pushes.
    push_registry: str = ""
    start_timeout_s: float = 300  # image pull and scheduling
    poll_interval_s: float = 0.5


def pod_name(tag: str) -> str:
    """A pod name unique to a build: the image's hash and the time, within DNS label rules."""
    digest = hashlib.sha256(f"{tag}{time.time_ns()}".encode()).hexdigest()[:16]
    return f"kiln-build-{digest}"


def build_command(tag: str, buildargs: dict[str, str], labels: dict[str, str]) -> list[str]:
    """buildctl's arguments: the generated Dockerfile in the workspace, the image written as an OCI
    layout for the push container."""
    args = ["buildctl-daemonless.sh", "build", "--frontend", "dockerfile.v0",
            "--local", f"context={WORKSPACE}", "--local", f"dockerfile={WORKSPACE}",
            "--opt", "filename=.kiln.Dockerfile", "--progress", "plain"]
    for key, value in sorted(buildargs.items()):
        args += ["--opt", f"build-arg:{key}={value}"]
    for key, value in sorted(labels.items()):
        args += ["--opt", f"label:{key}={value}"]
    # No push from here: this container runs the repository's code and holds no push credential.
    return args + ["--output", f"type=oci,name={tag},dest={IMAGE_DIR},tar=false"]


def push_target(tag: str, push_registry: str) -> str:
    """Where ``tag`` is pushed: the same repository and tag on ``push_registry`` when one is set."""
    return f"{push_registry}/{tag.split('/', 1)[1]}" if push_registry and "/" in tag else tag


def push_address(target: str, insecure: bool) -> tuple[str, str]:
    """The host and port a push to ``target`` connects to (the registry's default port when none is named)."""
    host = target.split("/", 1)[0]
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and not name.endswith(":"):
        return name.strip("[]"), port
    return host.strip("[]"), "80" if insecure else "443"


def push_command(tag: str, insecure: bool) -> list[str]:
    """crane's arguments: the OCI layout the build wrote, pushed as ``tag``."""
    return ["crane", "push", *(["--insecure"] if insecure else []), IMAGE_DIR, tag]


def pod_manifest(name: str, tag: str, settings: PodSettings, timeout_s: float, buildargs: dict[str, str] | None = None,
                 labels: dict[str, str] | None = None) -> k8s.V1Pod:
    """The build pod for ``tag``: context, build and push containers, in that order (module docstring)."""
    target = push_target(tag, settings.push_registry)
    insecure = target.split("/", 1)[0] in settings.insecure_registries
    workspace = k8s.V1VolumeMount(name="workspace", mount_path=WORKSPACE)
    limits = {"memory": settings.memory_limit} if settings.memory_limit else {}
    if settings.cpu_limit:
        limits["cpu"] = settings.cpu_limit
    if settings.disk_limit:
        # The pod's whole use (its emptyDirs included) is held to its containers' limits: this one.
        limits["ephemeral-storage"] = settings.disk_limit
    scratch = k8s.V1EmptyDirVolumeSource(size_limit=settings.disk_limit or None)
    build_mounts = [workspace, k8s.V1VolumeMount(name="image", mount_path=IMAGE_DIR),
                    k8s.V1VolumeMount(name="buildkit", mount_path=BUILDKIT_STATE_DIR)]
    push_mounts = [k8s.V1VolumeMount(name="image", mount_path=IMAGE_DIR, read_only=True)]
    volumes = [k8s.V1Volume(name="workspace", empty_dir=scratch), k8s.V1Volume(name="image", empty_dir=scratch),
               k8s.V1Volume(name="buildkit", empty_dir=scratch)]
    build_env = [k8s.V1EnvVar(name="BUILDKITD_FLAGS", value="--oci-worker-no-process-sandbox")]
    if settings.insecure_registries:
        # The FROM may come from a plain-HTTP registry; buildctl-daemonless.sh tells buildkitd so.
        build_env.append(k8s.V1EnvVar(name="BUILDKITD_INSECURE_REGISTRIES", value=",".join(settings.insecure_registries)))
    push_env: list[k8s.V1EnvVar] = []
    if settings.docker_config_secret:
        # Two volumes from one Secret, each with one key: the build container can see only the
        # pull credentials (optional: a registry that serves pulls to anyone needs none).
        volumes += [
            k8s.V1Volume(name="push-config", secret=k8s.V1SecretVolumeSource(
                secret_name=settings.docker_config_secret, items=[k8s.V1KeyToPath(key=PUSH_KEY, path="config.json")])),
            k8s.V1Volume(name="pull-config", secret=k8s.V1SecretVolumeSource(
                secret_name=settings.docker_config_secret, optional=True,
                items=[k8s.V1KeyToPath(key=PULL_KEY, path="config.json")]))]
        build_mounts.append(k8s.V1VolumeMount(name="pull-config", mount_path=PULL_CONFIG_DIR, read_only=True))
        push_mounts.append(k8s.V1VolumeMount(name="push-config", mount_path=PUSH_CONFIG_DIR, read_only=True))
        build_env.append(k8s.V1EnvVar(name="DOCKER_CONFIG", value=PULL_CONFIG_DIR))
        push_env.append(k8s.V1EnvVar(name="DOCKER_CONFIG", value=PUSH_CONFIG_DIR))
    wait = f"until [ -f {WORKSPACE}/{READY_MARKER} ]; do sleep 0.2; done"
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(
            name=name, namespace=settings.namespace,
            labels={"app.kubernetes.io/part-of": "kiln", "app.kubernetes.io/component": "build",
                    "kiln.build/image-hash": hashlib.sha256(tag.encode()).hexdigest()[:40], STAGE_LABEL: "build"},
            annotations={"kiln.build/image": tag}),
        spec=k8s.V1PodSpec(
            restart_policy="Never",
            active_deadline_seconds=max(1, int(timeout_s)),
            node_selector=settings.node_selector or None,
            tolerations=[k8s.V1Toleration(**t) for t in settings.tolerations] or None,
            service_account_name=settings.service_account or None,
            # No API token in any container, whatever the service account's default says.
            automount_service_account_token=False,
            # No KAFKA_SERVICE_HOST-style variables: the repository's code is not told where Kiln's
            # services are (the NetworkPolicies stop it reaching them anyway).
            enable_service_links=False,
            security_context=k8s.V1PodSecurityContext(
                run_as_non_root=True, seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")),
            init_containers=[
                k8s.V1Container(name="context", image=settings.image, command=["sh", "-c", wait],
                                volume_mounts=[workspace], security_context=_locked_down(1000)),
                k8s.V1Container(
                    name="build", image=settings.image,
                    command=build_command(tag, buildargs or {}, labels or {}), env=build_env,
                    resources=k8s.V1ResourceRequirements(
                        requests={"cpu": settings.cpu_request, "memory": settings.memory_request}, limits=limits or None),
                    security_context=_buildkit_rootless(), volume_mounts=build_mounts),
                k8s.V1Container(name="gate", image=settings.image,
                                 command=["sh", "-c", GATE_SCRIPT, "gate", *push_address(target, insecure), IMAGE_DIR],
                                 volume_mounts=[k8s.V1VolumeMount(name="image", mount_path=IMAGE_DIR, read_only=True)],
                                 resources=k8s.V1ResourceRequirements(requests={"cpu": "10m", "memory": "16Mi"},
                                                                      limits={"memory": "64Mi"}),
                                 security_context=_locked_down(1000))],
            containers=[k8s.V1Container(
                name="push", image=settings.push_image,
                command=push_command(target, insecure), env=push_env or None,
                resources=k8s.V1ResourceRequirements(requests={"cpu": "50m", "memory": "64Mi"},
                                                     limits={"memory": "512Mi"}),
                security_context=_locked_down(65532), volume_mounts=push_mounts)],
            volumes=volumes))


def _locked_down(uid: int) -> k8s.V1SecurityContext:
    """Containers that run no user code need nothing: no capabilities, no privilege gain, no writes
    outside their volumes, the runtime's default seccomp profile."""
    return k8s.V1SecurityContext(
        run_as_user=uid, run_as_group=uid, run_as_non_root=True, privileged=False, allow_privilege_escalation=False,
        read_only_root_filesystem=True, capabilities=k8s.V1Capabilities(drop=["ALL"]),
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"))


def _buildkit_rootless() -> k8s.V1SecurityContext:
    """As tight as BuildKit rootless allows (docs/operators.md has the trade-off).

    - seccomp and AppArmor ``Unconfined``: rootlesskit and the RUN steps' sandbox make user and mount
      namespaces (``unshare``, ``mount``), which the runtime's default profiles forbid;
    - privilege escalation stays allowed and SETUID/SETGID stay in the bounding set: ``newuidmap``
      and ``newgidmap`` gain exactly those two through file capabilities to write the namespace's ID
      maps, and no_new_privs would refuse them. Every other capability is dropped: inside its own
      user namespace BuildKit gets a full set regardless (the kernel resets the bounding set there),
      and outside it nothing needs one;
    - uid 1000, never root, never privileged. The root filesystem stays writable: BuildKit keeps its
      state and the rootless runtime directory on it, and the pod is deleted after the build.
    """
    return k8s.V1SecurityContext(
        run_as_user=1000, run_as_group=1000, run_as_non_root=True, privileged=False, allow_privilege_escalation=True,
        capabilities=k8s.V1Capabilities(drop=["ALL"], add=["SETUID", "SETGID"]),
        seccomp_profile=k8s.V1SeccompProfile(type="Unconfined"),
        app_armor_profile=k8s.V1AppArmorProfile(type="Unconfined"))


class KubernetesExecutor:
    """Runs each build as a pod (BuildKit rootless), streaming its log; see the module docstring."""

    def __init__(self, settings: PodSettings, api: Any | None = None, registry_url: str = "",
                 registry_auth: tuple[str, str] | None = None, tail_lines: int = 20,
                 exec_stdin: Callable[[Any, str, str, str, list[str], IO[bytes]], None] | None = None) -> None:
        self._s = settings
        self._api = api
        self._owns_api = api is None  # an API handed in is its giver's to close
        self._exec_stdin = exec_stdin or exec_with_stdin
        self._registry_url = registry_url.rstrip("/")
        self._registry_auth = registry_auth
        self._tail = tail_lines

    def _core(self) -> Any:
        if self._api is None:
            from kubernetes import config

            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except config.ConfigException:
                config.load_kube_config()  # type: ignore[no-untyped-call]
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
        try:
            await asyncio.to_thread(api.create_namespaced_pod, self._s.namespace, pod)
        except ApiException as exc:
            # The operator's to fix (RBAC, quota, admission); the log has the API server's answer.
            log.error("could not create build pod in %s: %s %s", self._s.namespace, exc.status, exc.body)
            raise BuildFailed(f"The builder could not start a build pod ({exc.status} {exc.reason}). "
                              "Please tell this Binder's operators.", "builder_error") from None
        await on_line(f"Kiln: build pod {self._s.namespace}/{name}\n")
        tail: deque[str] = deque(maxlen=self._tail)
        try:
            # The context goes from its spool file a chunk at a time: a repository with its history
            # may be larger than the builder's memory.
            with tar:
                tar.seek(0)
                await asyncio.wait_for(self._run(api, name, tar, on_line, tail), timeout_s)
        except TimeoutError:
            raise BuildTimedOut(timeout_s) from None
        finally:
            await asyncio.to_thread(self._delete, api, name)

    async def _run(self, api: Any, name: str, tar: IO[bytes], on_line: LineSink, tail: deque[str]) -> None:
        await self._wait_for(api, name, lambda pod: _running(pod, "context"), "the build pod to start")
        await asyncio.to_thread(self._send_context, api, name, tar)
        await self._wait_for(api, name, lambda pod: _started(pod, "build"), "the build container to start")
        await self._follow_log(api, name, "build", on_line, tail)
        pod = await self._wait_for(api, name, lambda pod: _finished(pod, "build"), "the build to finish")
        terminated = self._ended(pod, "build")
        if terminated.reason == "OOMKilled":
            raise BuildFailed(f"The build used more than its memory limit of {self._s.memory_limit} and was stopped.",
                              "build_memory")
        if terminated.exit_code == 137:
            # Killed: by an eviction whose reason the pod's status may show a moment after the kill.
            await self._settle_eviction(api, name)
        if terminated.exit_code != 0:
            last = next((line for line in reversed(tail) if line.strip()), f"exit code {terminated.exit_code}")
            raise BuildFailed(last.strip())
        # The build's processes are gone: only now may the pod reach the push side (module docstring).
        try:
            await asyncio.to_thread(api.patch_namespaced_pod, name, self._s.namespace,
                                    {"metadata": {"labels": {STAGE_LABEL: "push"}}})
        except ApiException as exc:
            raise BuildFailed(f"Could not move the build pod to its push stage: {exc.reason}.", "builder_error") from None
        pod = await self._wait_for(api, name, lambda pod: _started(pod, "push") or _finished(pod, "gate"),
                                   "the push to start")
        gate = _state(pod, "gate").terminated
        if gate is not None and gate.exit_code == 2:
            raise BuildFailed("The build left links or devices among the image's files, so it was not pushed.",
                              "build_failed")
        if gate is not None and gate.exit_code != 0:
            raise BuildFailed("The build pod could not reach the registry's push side (its NetworkPolicy?).",
                              "push_failed")
        tail.clear()
        await self._follow_log(api, name, "push", on_line, tail)
        pod = await self._wait_for(api, name, lambda pod: _finished(pod, "push"), "the push to finish")
        terminated = self._ended(pod, "push")
        if terminated.exit_code != 0:
            last = next((line for line in reversed(tail) if line.strip()), f"exit code {terminated.exit_code}")
            raise BuildFailed(f"Pushing the image to the registry failed: {last.strip()}", "push_failed")

    def _ended(self, pod: Any, container: str) -> Any:
        """How ``container`` ended, once ``_finished`` said it has; the pod's deadline is a time-out."""
        self._evicted(pod)
        if pod.status.reason == "DeadlineExceeded":
            raise BuildFailed("The build took longer than its limit and was stopped.", "build_timeout")
        terminated = _state(pod, container).terminated
        if terminated is None:
            raise BuildFailed(f"The build pod ended without a result ({pod.status.phase}).", "builder_error")
        return terminated

    async def _settle_eviction(self, api: Any, name: str, wait_s: float = 5) -> None:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            self._evicted(await asyncio.to_thread(api.read_namespaced_pod, name, self._s.namespace))
            await asyncio.sleep(self._s.poll_interval_s)

    def _evicted(self, pod: Any) -> None:
        """The kubelet stopped the pod: over its disk limit (the user's to fix), or the node ran short."""
        if pod.status.reason != "Evicted":
            return
        message = pod.status.message or ""
        if "ephemeral" in message.lower() or "emptydir" in message.lower():
            raise BuildFailed(f"The build used more than its disk limit of {self._s.disk_limit} and was stopped.",
                              "build_disk")
        raise BuildFailed(f"The build pod was evicted from its node: {message or 'no reason given'}", "builder_error")

    async def _wait_for(self, api: Any, name: str, done: Any, what: str) -> Any:
        deadline = time.monotonic() + self._s.start_timeout_s
        while True:
            pod = await asyncio.to_thread(api.read_namespaced_pod, name, self._s.namespace)
            if done(pod):
                return pod
            waiting = _waiting_reason(pod)
            self._evicted(pod)
            if pod.status.phase in ("Failed", "Succeeded") or waiting in IMAGE_ERRORS:
                raise BuildFailed(f"The build pod could not run: {waiting or pod.status.reason or pod.status.phase}.",
                                  "builder_error")
            if time.monotonic() > deadline:
                raise BuildFailed(f"Timed out waiting for {what} ({waiting or pod.status.phase}).", "builder_error")
            await asyncio.sleep(self._s.poll_interval_s)

    def _send_context(self, api: Any, name: str, tar: IO[bytes]) -> None:
        """Stream the context into the init container, then drop the marker that lets it finish."""
        script = f"tar -xf - -C {WORKSPACE} && touch {WORKSPACE}/{READY_MARKER}"
        self._exec_stdin(api, name, self._s.namespace, "context", ["sh", "-c", script], tar)

    async def _follow_log(self, api: Any, name: str, container: str, on_line: LineSink, tail: deque[str]) -> None:
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
                response = api.read_namespaced_pod_log(name, self._s.namespace, container=container, follow=True,
                                                       _preload_content=False)
                for line in _lines(response):
                    hand_over(line)
            except BaseException as exc:  # noqa: BLE001 - handed to the loop, raised there
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
                r = await http.head(f"{self._registry_url}/v2/{name}/manifests/{tag}", headers={"Accept": _MANIFEST_TYPES})
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    async def onbuild_triggers(self, image: str, kiln_registry: bool) -> list[str]:
        """None looked for: BuildKit runs in the build pod, whose NetworkPolicy bounds what any
        instruction, a trigger's included, can fetch (the engine-side fetches this guards against
        on the Docker path do not exist here)."""
        return []

    async def pull(self, image: str) -> bool:
        """A pod builds from the registry directly, so 'pulled' means 'there'."""
        return await self.has_image(image)

    async def aclose(self) -> None:
        """Close the Kubernetes API client this executor made (its connection pool and thread pool)."""
        if self._owns_api and self._api is not None:
            api, self._api = self._api, None
            await asyncio.to_thread(api.api_client.close)


def exec_with_stdin(api: Any, name: str, namespace: str, container: str, command: list[str], data: IO[bytes]) -> None:
    """Run ``command`` in a container of a pod with ``data`` (read to its end) as its standard input (the pod exec API)."""
    from kubernetes.stream import stream

    ws = stream(api.connect_get_namespaced_pod_exec, name, namespace, container=container, command=command,
                stdin=True, stdout=True, stderr=True, tty=False, _preload_content=False, binary=True)
    try:
        while chunk := data.read(1 << 20):
            ws.write_stdin(chunk)
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
    """The log's lines; one longer than LINE_MAX comes in pieces, so an endless line from a build
    cannot grow in the builder's memory."""
    partial = b""
    for chunk in response.stream(4096) if hasattr(response, "stream") else response:
        *lines, partial = (partial + chunk).split(b"\n")
        for line in lines:
            yield line.decode(errors="replace")
        while len(partial) >= LINE_MAX:
            yield partial[:LINE_MAX].decode(errors="replace")
            partial = partial[LINE_MAX:]
    if partial:
        yield partial.decode(errors="replace")


def _statuses(pod: Any, init: bool) -> list[Any]:
    return (pod.status.init_container_statuses if init else pod.status.container_statuses) or []


def _state(pod: Any, container: str) -> Any:
    """The state of one container of the pod, init or not (an empty state until it is reported)."""
    for s in _statuses(pod, True) + _statuses(pod, False):
        if s.name == container and s.state:
            return s.state
    return k8s.V1ContainerState()


def _running(pod: Any, container: str) -> bool:
    return bool(_state(pod, container).running)


def _started(pod: Any, container: str) -> bool:
    state = _state(pod, container)
    return bool(state.running or state.terminated)


def _finished(pod: Any, container: str) -> bool:
    return bool(_state(pod, container).terminated) or pod.status.reason == "DeadlineExceeded"


def _waiting_reason(pod: Any) -> str:
    for s in _statuses(pod, True) + _statuses(pod, False):
        if s.state and s.state.waiting and s.state.waiting.reason:
            return str(s.state.waiting.reason)
    return ""

