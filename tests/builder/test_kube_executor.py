"""The Kubernetes build executor against the kubernetes client's API objects.

No cluster can run here, so ``FakeCluster`` stands in for the API server's pod endpoints: it keeps
the pods it is given (as the client's V1Pod models, round-tripped through the client's own
serializer), moves them through the states a kubelet would report, serves the build log, and
records deletions. What only a real cluster can show (BuildKit rootless building and pushing, the
exec stream carrying the context) is documented in docs/operators.md and not claimed here.
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from kiln_builder.executor import BuildFailed
from kiln_builder.kube_executor import (
    IMAGE_DIR,
    PULL_KEY,
    PUSH_KEY,
    KubernetesExecutor,
    PodSettings,
    build_command,
    pod_manifest,
    push_address,
    push_command,
    push_target,
)

API = k8s.ApiClient()


def round_trip(pod: k8s.V1Pod) -> k8s.V1Pod:
    """The pod as the API server would receive and return it (JSON, then the client's model)."""
    return API.deserialize(json.dumps(API.sanitize_for_serialization(pod)), "V1Pod", "application/json")


class FakeCluster:
    """The pod endpoints of an API server, for one scenario: how the build and push containers end.

    A pod goes through the stages a kubelet reports: pending, ``context`` running (until the
    context arrives), ``build`` running (until its log ends), ``build`` ended, then, only if the build
    succeeded, ``gate`` running until the pod is relabelled for its push stage (as the NetworkPolicy
    would let it through then; ``gate_fails``: it never is), ``push`` running (until its log ends) and
    ``push`` ended. ``followed`` records which container's log was read and in what stage, and
    ``patched`` in what stage the pod was relabelled, so a test can tell the push never ran alongside
    the build.
    """

    def __init__(self, log: list[bytes], exit_code: int = 0, reason: str | None = None, waiting: str | None = None,
                 hang: bool = False, push_log: list[bytes] | None = None, push_exit: int = 0,
                 gate_fails: bool = False, evicted: str = "", evicted_late: bool = False, gate_exit: int = 1) -> None:
        self.pods: dict[str, k8s.V1Pod] = {}
        self.deleted: list[str] = []
        self.context: dict[str, bytes] = {}
        self.followed: list[tuple[str, str]] = []
        self._log, self._exit, self._reason, self._waiting, self._hang = log, exit_code, reason, waiting, hang
        self._push_log, self._push_exit = push_log if push_log is not None else [b"registry.local:5000/kiln/r@sha256:00\n"], push_exit
        self._stage: dict[str, str] = {}
        self.patched: list[tuple[dict[str, Any], str]] = []
        self._gate_fails = gate_fails or gate_exit != 1
        self._gate_exit = gate_exit  # how the gate ends when it fails
        self._evicted = evicted  # the kubelet's message when it evicts the pod as its build ends
        self._evicted_late = evicted_late  # the first look shows the kill without the reason

    # CoreV1Api methods the executor calls
    def create_namespaced_pod(self, namespace: str, body: k8s.V1Pod) -> k8s.V1Pod:
        pod = round_trip(body)
        assert pod.metadata.namespace == namespace
        self.pods[pod.metadata.name] = pod
        self._stage[pod.metadata.name] = "pending"
        return pod

    def read_namespaced_pod(self, name: str, namespace: str) -> k8s.V1Pod:
        if name in self.deleted:
            raise ApiException(status=404, reason="Not Found")
        stage = self._stage[name]
        running = k8s.V1ContainerState(running=k8s.V1ContainerStateRunning())
        if stage == "pending":  # the next look finds the context container running (or the image not pullable)
            self._stage[name] = "init"
            return self._pod(name, "Pending", context=k8s.V1ContainerState(waiting=k8s.V1ContainerStateWaiting(reason="PodInitializing")))
        if stage == "init":
            if self._waiting:
                return self._pod(name, "Pending", context=k8s.V1ContainerState(waiting=k8s.V1ContainerStateWaiting(reason=self._waiting)))
            return self._pod(name, "Pending", context=running)
        if stage == "building":
            return self._pod(name, "Pending", build=running)
        built = self._ended(self._exit, self._reason)
        if stage == "built" and self._evicted:  # the kubelet killed every container and failed the pod
            pod = self._pod(name, "Failed", build=self._ended(137, "Error"))
            if self._evicted_late:
                self._evicted_late = False
            else:
                pod.status.reason, pod.status.message = "Evicted", self._evicted
            return pod
        if stage == "built" and self._exit != 0:  # an init container failed: the pod fails, push never starts
            return self._pod(name, "Failed", build=built)
        if stage == "built":  # the gate waits for the push side, which the build stage cannot reach
            return self._pod(name, "Pending", build=built, gate=running)
        if stage == "gate-failed":
            return self._pod(name, "Failed", build=built, gate=self._ended(self._gate_exit, None))
        if stage == "relabelled":
            return self._pod(name, "Running", build=built, gate=self._ended(0, None), push=running)
        return self._pod(name, "Succeeded" if self._push_exit == 0 else "Failed", build=built,
                         gate=self._ended(0, None), push=self._ended(self._push_exit, None))

    def read_namespaced_pod_log(self, name: str, namespace: str, container: str, follow: bool,
                                _preload_content: bool) -> Any:
        assert follow and not _preload_content
        self.followed.append((container, self._stage[name]))
        cluster = self

        class Stream:
            def stream(self, size: int) -> Any:
                if container == "build":
                    yield from cluster._log
                    if cluster._hang:
                        import time

                        time.sleep(3)  # a build that never ends; the executor's timer must stop it
                    cluster._stage[name] = "built"
                else:
                    assert container == "push" and cluster._stage[name] == "relabelled"
                    yield from cluster._push_log
                    cluster._stage[name] = "pushed"

        return Stream()

    def patch_namespaced_pod(self, name: str, namespace: str, body: dict[str, Any]) -> None:
        self.patched.append((body, self._stage[name]))
        if self._stage[name] == "built":
            self._stage[name] = "gate-failed" if self._gate_fails else "relabelled"

    def delete_namespaced_pod(self, name: str, namespace: str, grace_period_seconds: int, body: Any) -> None:
        assert grace_period_seconds == 0
        self.deleted.append(name)

    # the exec stream that carries the context
    def exec_stdin(self, api: Any, name: str, namespace: str, container: str, command: list[str], stdin: Any) -> None:
        assert api is self and container == "context" and "tar -xf - -C /workspace" in command[-1]
        assert self._stage[name] == "init", "the context goes to the init container while it waits"
        data = stdin.read()  # a file, read to its end as the exec stream does (not the whole context in memory)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    self.context[member.name] = tar.extractfile(member).read()  # type: ignore[union-attr]
        self._stage[name] = "building"

    @staticmethod
    def _ended(exit_code: int, reason: str | None) -> k8s.V1ContainerState:
        return k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(
            exit_code=exit_code, reason=reason or ("Completed" if exit_code == 0 else "Error")))

    def _pod(self, name: str, phase: str, context: k8s.V1ContainerState | None = None,
             build: k8s.V1ContainerState | None = None, gate: k8s.V1ContainerState | None = None,
             push: k8s.V1ContainerState | None = None) -> k8s.V1Pod:
        pod = self.pods[name]

        def status(container: str, state: k8s.V1ContainerState | None) -> k8s.V1ContainerStatus:
            waiting = k8s.V1ContainerState(waiting=k8s.V1ContainerStateWaiting(reason="PodInitializing"))
            return k8s.V1ContainerStatus(name=container, image="x", image_id="", ready=False, restart_count=0,
                                         state=state or waiting)

        done = self._ended(0, None)
        pod.status = k8s.V1PodStatus(
            phase=phase,
            init_container_statuses=[status("context", context if context else (done if build else None)),
                                     status("build", build), status("gate", gate)],
            container_statuses=[status("push", push)])
        return pod


SETTINGS = PodSettings(namespace="binder", image="registry.example/buildkit:rootless", cpu_request="1", cpu_limit="2",
                       memory_request="2Gi", memory_limit="3Gi", node_selector={"hub.jupyter.org/node-purpose": "user"},
                       tolerations=[{"key": "dedicated", "operator": "Equal", "value": "build", "effect": "NoSchedule"}],
                       service_account="kiln-build", docker_config_secret="kiln-push", poll_interval_s=0.01,
                       disk_limit="8Gi",
                       insecure_registries=["registry.local:5000"])


def executor(cluster: FakeCluster) -> KubernetesExecutor:
    return KubernetesExecutor(SETTINGS, api=cluster, exec_stdin=cluster.exec_stdin, tail_lines=5)


async def run(cluster: FakeCluster, tmp_path: Path, timeout_s: float = 60) -> list[str]:
    (tmp_path / "requirements.txt").write_text("numpy\n")
    (tmp_path / "index.ipynb").write_text("{}")
    lines: list[str] = []

    async def on_line(line: str) -> None:
        lines.append(line)

    await executor(cluster).build(tmp_path, "FROM base\nCOPY repo/ /home/jovyan/\n", "registry.local:5000/kiln/r-abc:123",
                                  on_line, buildargs={"NB_USER": "jovyan"}, timeout_s=timeout_s,
                                  extra_files={"kiln-entrypoint": b"#!/bin/sh\n"}, labels={"repo2docker.ref": "123"},
                                  subdir="repo")
    return lines


def manifest(settings: PodSettings = SETTINGS) -> k8s.V1Pod:
    return round_trip(pod_manifest("kiln-build-1", "registry.local:5000/kiln/r:1", settings, 1800.7,
                                   {"NB_UID": "1000"}, {"repo2docker.repo": "https://x/y"}))


def containers(pod: k8s.V1Pod) -> dict[str, k8s.V1Container]:
    return {c.name: c for c in (pod.spec.init_containers or []) + pod.spec.containers}


def test_pod_manifest_carries_the_operators_settings() -> None:
    pod = manifest()
    spec = pod.spec
    assert spec.restart_policy == "Never" and spec.active_deadline_seconds == 1800
    assert spec.node_selector == {"hub.jupyter.org/node-purpose": "user"}
    assert spec.tolerations[0].key == "dedicated" and spec.tolerations[0].effect == "NoSchedule"
    build = containers(pod)["build"]
    assert build.resources.requests == {"cpu": "1", "memory": "2Gi"}
    assert build.resources.limits == {"cpu": "2", "memory": "3Gi", "ephemeral-storage": "8Gi"}
    # each scratch volume is held to the disk limit too, so none can fill the node's disk
    assert {v.name: v.empty_dir.size_limit for v in spec.volumes if v.empty_dir} == dict.fromkeys(
        ("workspace", "image", "buildkit"), "8Gi")
    assert "--opt" in build.command and "build-arg:NB_UID=1000" in build.command
    assert "label:repo2docker.repo=https://x/y" in build.command
    assert pod.metadata.labels["app.kubernetes.io/component"] == "build"


def test_build_then_push_in_that_order_the_build_writing_a_layout_not_pushing() -> None:
    pod = manifest()
    # init containers run one after the other and all end before the pod's containers start
    assert [c.name for c in pod.spec.init_containers] == ["context", "build", "gate"]
    assert [c.name for c in pod.spec.containers] == ["push"]
    build, push = containers(pod)["build"], containers(pod)["push"]
    assert build.command[-2:] == ["--output", f"type=oci,name=registry.local:5000/kiln/r:1,dest={IMAGE_DIR},tar=false"]
    assert not any("push=true" in arg for arg in build.command)
    assert push.image == SETTINGS.push_image
    assert push.command == ["crane", "push", "--insecure", IMAGE_DIR, "registry.local:5000/kiln/r:1"]
    image_mounts = {c.name: m for c in (build, push) for m in c.volume_mounts if m.name == "image"}
    assert image_mounts["build"].read_only is None and image_mounts["push"].read_only is True


def test_push_credentials_are_mounted_only_into_the_push_container() -> None:
    pod = manifest()
    volumes = {v.name: v for v in pod.spec.volumes}
    by_key = {v.secret.items[0].key: name for name, v in volumes.items() if v.secret}
    assert set(by_key) == {PUSH_KEY, PULL_KEY}
    assert all(volumes[name].secret.secret_name == "kiln-push" for name in by_key.values())
    assert volumes[by_key[PULL_KEY]].secret.optional is True  # registries that serve pulls to anyone need none
    mounted = {name: {m.name for m in c.volume_mounts or []} for name, c in containers(pod).items()}
    assert [name for name, mounts in mounted.items() if by_key[PUSH_KEY] in mounts] == ["push"]
    assert [name for name, mounts in mounted.items() if by_key[PULL_KEY] in mounts] == ["build"]
    env = {name: {e.name: e.value for e in c.env or []} for name, c in containers(pod).items()}
    push_dir = next(m.mount_path for m in containers(pod)["push"].volume_mounts if m.name == by_key[PUSH_KEY])
    assert env["push"]["DOCKER_CONFIG"] == push_dir
    assert env["build"]["DOCKER_CONFIG"] != push_dir and "DOCKER_CONFIG" not in env["context"]
    # positive control: without a Secret there is nothing to mount, and the build still writes its layout
    bare = manifest(PodSettings(namespace="binder"))
    assert {v.name for v in bare.spec.volumes} == {"workspace", "image", "buildkit"}
    assert all(e.name != "DOCKER_CONFIG" for c in containers(bare).values() for e in c.env or [])


def test_build_pod_has_no_token_and_a_service_account_without_rights() -> None:
    spec = manifest().spec
    assert spec.service_account_name == "kiln-build" and spec.automount_service_account_token is False
    assert spec.enable_service_links is False
    assert spec.host_network is None and spec.host_pid is None and spec.host_ipc is None
    assert spec.security_context.run_as_non_root is True and spec.security_context.seccomp_profile.type == "RuntimeDefault"


def test_build_container_is_as_tight_as_buildkit_rootless_allows() -> None:
    sc = containers(manifest())["build"].security_context
    assert sc.run_as_user == 1000 and sc.run_as_non_root is True and sc.privileged is False
    # what rootless BuildKit needs and nothing more: newuidmap/newgidmap's file capabilities
    assert sc.capabilities.drop == ["ALL"] and sc.capabilities.add == ["SETUID", "SETGID"]
    assert sc.allow_privilege_escalation is True
    assert sc.seccomp_profile.type == "Unconfined" and sc.app_armor_profile.type == "Unconfined"


@pytest.mark.parametrize("name", ["context", "gate", "push"])
def test_containers_without_user_code_are_locked_down(name: str) -> None:
    sc = containers(manifest())[name].security_context
    assert sc.run_as_non_root is True and sc.run_as_user != 0 and sc.privileged is False
    assert sc.allow_privilege_escalation is False and sc.read_only_root_filesystem is True
    assert sc.capabilities.drop == ["ALL"] and not sc.capabilities.add
    assert sc.seccomp_profile.type == "RuntimeDefault" and sc.app_armor_profile is None


def test_build_and_push_commands_without_insecure_registry() -> None:
    command = build_command("quay.io/org/img:tag", {}, {})
    assert command[0] == "buildctl-daemonless.sh" and command[-1] == f"type=oci,name=quay.io/org/img:tag,dest={IMAGE_DIR},tar=false"
    assert push_command("quay.io/org/img:tag", insecure=False) == ["crane", "push", IMAGE_DIR, "quay.io/org/img:tag"]
    assert "--insecure" not in containers(manifest(PodSettings(namespace="b", docker_config_secret="s")))["push"].command


async def test_successful_build_streams_lines_and_removes_its_pod(tmp_path: Path) -> None:
    cluster = FakeCluster([b"#1 [internal] load build definition\n#2 RUN pip ins", b"tall numpy\n#3 DONE 4.2s\n"])
    lines = await run(cluster, tmp_path)
    assert lines[0].startswith("Kiln: build pod binder/kiln-build-")
    assert lines[1:] == ["#1 [internal] load build definition\n", "#2 RUN pip install numpy\n", "#3 DONE 4.2s\n",
                         "registry.local:5000/kiln/r@sha256:00\n"]
    assert set(cluster.context) == {"repo/requirements.txt", "repo/index.ipynb", "kiln-entrypoint", ".kiln.Dockerfile"}
    assert cluster.context[".kiln.Dockerfile"].startswith(b"FROM base")
    assert cluster.deleted == list(cluster.pods)
    # the push's log follows the build's; the pod was let reach the push side only once the build had ended
    assert cluster.followed == [("build", "building"), ("push", "relabelled")]
    assert cluster.patched == [({"metadata": {"labels": {"kiln.build/stage": "push"}}}, "built")]


async def test_failed_build_reports_its_last_line_and_removes_its_pod(tmp_path: Path) -> None:
    cluster = FakeCluster([b"#5 ERROR: process \"pip install nosuch\" did not complete successfully: exit code: 1\n"], exit_code=1)
    with pytest.raises(BuildFailed) as failed:
        await run(cluster, tmp_path)
    assert failed.value.cause == "build_failed" and "did not complete successfully" in str(failed.value)
    assert cluster.deleted == list(cluster.pods)
    assert [container for container, _ in cluster.followed] == ["build"], "a failed build is not pushed"
    assert cluster.patched == [], "nor let reach the push side"


async def test_a_push_side_the_pod_cannot_reach_is_named_and_removes_its_pod(tmp_path: Path) -> None:
    """The gate gave up (a NetworkPolicy without the push stage's egress): said so, not a bare 'Failed'."""
    cluster = FakeCluster([b"#3 DONE 1.0s\n"], gate_fails=True)
    with pytest.raises(BuildFailed) as failed:
        await run(cluster, tmp_path)
    assert failed.value.cause == "push_failed" and "push side" in str(failed.value)
    assert [container for container, _ in cluster.followed] == ["build"]
    assert cluster.deleted == list(cluster.pods)


async def test_a_failed_push_is_named_and_removes_its_pod(tmp_path: Path) -> None:
    cluster = FakeCluster([b"#3 DONE 1.0s\n"], push_log=[b"Error: PUT https://r/v2/x/blobs: UNAUTHORIZED\n"], push_exit=1)
    with pytest.raises(BuildFailed) as failed:
        await run(cluster, tmp_path)
    assert failed.value.cause == "push_failed" and "UNAUTHORIZED" in str(failed.value)
    assert "#3 DONE" not in str(failed.value), "the reason is the push's, not the build's last line"
    assert cluster.deleted == list(cluster.pods)


async def test_out_of_memory_is_named(tmp_path: Path) -> None:
    cluster = FakeCluster([b"#4 RUN python big.py\n"], exit_code=137, reason="OOMKilled")
    with pytest.raises(BuildFailed) as failed:
        await run(cluster, tmp_path)
    assert failed.value.cause == "build_memory" and "3Gi" in str(failed.value)
    assert cluster.deleted


async def test_a_build_over_its_disk_limit_is_named(tmp_path: Path) -> None:
    """The kubelet evicted the pod for its disk use: the user is told the limit, not 'exit code 137'."""
    cluster = FakeCluster([b"#4 RUN dd if=/dev/zero of=/big\n"],
                          evicted='Usage of EmptyDir volume "buildkit" exceeds the limit "8Gi". ')
    with pytest.raises(BuildFailed) as failed:
        await run(cluster, tmp_path)
    assert failed.value.cause == "build_disk" and "disk limit of 8Gi" in str(failed.value)
    assert cluster.patched == [], "an evicted build is not pushed"
    assert cluster.deleted == list(cluster.pods)


async def test_an_eviction_reported_after_the_kill_is_still_named(tmp_path: Path) -> None:
    """The kubelet may show the killed container before the pod's reason: the executor looks again."""
    cluster = FakeCluster([b"#4 RUN dd if=/dev/zero of=/big\n"], evicted="Pod ephemeral local storage usage exceeds "
                          "the total limit of containers 8Gi. ", evicted_late=True)
    with pytest.raises(BuildFailed) as failed:
        await run(cluster, tmp_path)
    assert failed.value.cause == "build_disk", failed.value


async def test_a_pod_evicted_for_the_nodes_sake_says_so(tmp_path: Path) -> None:
    cluster = FakeCluster([b"#4 RUN pip install x\n"], evicted="The node was low on resource: memory. ")
    with pytest.raises(BuildFailed) as failed:
        await run(cluster, tmp_path)
    assert failed.value.cause == "builder_error" and "low on resource: memory" in str(failed.value)


async def test_a_build_over_its_time_limit_is_stopped(tmp_path: Path) -> None:
    cluster = FakeCluster([b"#1 RUN sleep 3600\n"], hang=True)
    with pytest.raises(BuildFailed) as failed:
        await run(cluster, tmp_path, timeout_s=0.5)
    assert failed.value.cause == "build_timeout"
    assert cluster.deleted == list(cluster.pods)


async def test_an_image_that_cannot_be_pulled_fails_clearly(tmp_path: Path) -> None:
    cluster = FakeCluster([], waiting="ImagePullBackOff")
    with pytest.raises(BuildFailed) as failed:
        await run(cluster, tmp_path)
    assert failed.value.cause == "builder_error" and "ImagePullBackOff" in str(failed.value)
    assert cluster.deleted


async def test_push_reports_done_since_the_pod_pushed() -> None:
    seen: list[dict[str, Any]] = []

    async def progress(chunk: dict[str, Any]) -> None:
        seen.append(chunk)

    await executor(FakeCluster([])).push("registry.local:5000/kiln/r:abc", progress)
    assert seen == [{"id": "abc", "status": "Pushed"}]
    assert await executor(FakeCluster([])).has_image("registry.local:5000/kiln/r:abc") is False  # no registry URL set



def test_a_separate_push_side_gets_the_push_the_name_keeps_the_pull_side() -> None:
    """A registry whose pulls are served read-only at the name's host and whose pushes go elsewhere
    (deploy/k8s/infra.yaml): the build writes the image under its name, crane sends it to the push side."""
    settings = PodSettings(namespace="b", docker_config_secret="s", push_registry="registry-push.infra:5001",
                           insecure_registries=["registry-push.infra:5001"])
    pod = round_trip(pod_manifest("kiln-build-1", "10.0.0.5:30500/kiln/r:1", settings, 60))
    build, push = containers(pod)["build"], containers(pod)["push"]
    assert build.command[-1] == f"type=oci,name=10.0.0.5:30500/kiln/r:1,dest={IMAGE_DIR},tar=false"
    assert push.command == ["crane", "push", "--insecure", IMAGE_DIR, "registry-push.infra:5001/kiln/r:1"]
    assert push_target("r.example/a/b:1", "") == "r.example/a/b:1"


def test_a_plain_http_registry_is_named_to_buildkit_for_the_from_pull() -> None:
    """buildkitd pulls the FROM itself: a registry reached over plain HTTP must be named to it (the
    image's buildctl-daemonless.sh writes a buildkitd.toml from this variable); none named, none set."""
    env = {e.name: e.value for e in containers(manifest())["build"].env}
    assert env["BUILDKITD_INSECURE_REGISTRIES"] == "registry.local:5000"
    plain = containers(manifest(PodSettings(namespace="b")))["build"].env
    assert "BUILDKITD_INSECURE_REGISTRIES" not in {e.name for e in plain}


def test_the_pod_starts_in_its_build_stage_and_the_gate_waits_for_the_push_side() -> None:
    """The stage label the NetworkPolicies select on starts at "build"; the gate, locked down like the
    other containers without user code, waits for the host and port the push will connect to."""
    pod = manifest()
    assert pod.metadata.labels["kiln.build/stage"] == "build"
    gate = containers(pod)["gate"]
    assert gate.command[:2] == ["sh", "-c"] and "nc -z" in gate.command[2]
    assert gate.command[-3:] == ["registry.local", "5000", IMAGE_DIR]
    assert [(m.mount_path, m.read_only) for m in gate.volume_mounts] == [(IMAGE_DIR, True)]
    assert gate.security_context.capabilities.drop == ["ALL"] and gate.security_context.read_only_root_filesystem
    assert push_address("quay.io/org/img:1", insecure=False) == ("quay.io", "443")
    assert push_address("r.local/img:1", insecure=True) == ("r.local", "80")
    assert push_address("[fd00::5]:5001/kiln/img:1", insecure=True) == ("fd00::5", "5001")


async def test_a_pod_the_api_refuses_is_a_clear_builder_error(tmp_path: Path) -> None:
    """RBAC or a quota refusing the pod: the client is told the build could not start, not 'unexpected'."""
    cluster = FakeCluster([])

    def refuse(namespace: str, body: k8s.V1Pod) -> k8s.V1Pod:
        raise ApiException(status=403, reason="Forbidden")

    cluster.create_namespaced_pod = refuse  # type: ignore[method-assign]
    with pytest.raises(BuildFailed) as failed:
        await run(cluster, tmp_path)
    assert failed.value.cause == "builder_error" and "403 Forbidden" in str(failed.value)
    assert cluster.deleted == []


def test_buildkits_state_is_on_an_emptydir_only_the_build_container_mounts() -> None:
    """Its overlay snapshotter needs a real filesystem under it (not the container's overlay root),
    and nothing else in the pod needs what the build left there."""
    pod = manifest()
    volumes = {v.name: v for v in pod.spec.volumes}
    assert volumes["buildkit"].empty_dir is not None
    mounted = {c.name for c in containers(pod).values() for m in c.volume_mounts or [] if m.name == "buildkit"}
    assert mounted == {"build"}
    state = next(m for m in containers(pod)["build"].volume_mounts if m.name == "buildkit")
    assert state.mount_path == "/home/user/.local/share/buildkit"


def test_an_endless_log_line_comes_in_pieces() -> None:
    """A build that writes one line forever cannot grow it in the builder's memory."""
    from kiln_builder.kube_executor import LINE_MAX, _lines

    chunks = [b"x" * 4096] * 100 + [b"y\nshort\n"]  # 400 KiB without a newline, then two lines
    lines = list(_lines(chunks))
    assert all(len(line) <= LINE_MAX for line in lines)
    assert "".join(lines[:-1]) == "x" * 4096 * 100 + "y" and lines[-1] == "short"


def test_the_context_goes_to_the_pod_a_chunk_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """exec_with_stdin reads its file as it sends: no more than 1 MiB of the context in hand at once.
    The websocket stands in for the API server's exec stream (tests/k8s sends real contexts)."""
    import kubernetes.stream

    from kiln_builder.kube_executor import exec_with_stdin

    sent: list[bytes] = []

    class Socket:
        subprotocol = "v5.channel.k8s.io"
        returncode = 0

        def write_stdin(self, chunk: bytes) -> None:
            sent.append(chunk)

        def close_channel(self, channel: int) -> None:
            assert channel == 0

        def run_forever(self, timeout: float) -> None: ...

        def close(self) -> None: ...

    monkeypatch.setattr(kubernetes.stream, "stream", lambda *args, **kwargs: Socket())
    data = bytes(range(256)) * (3 * 4096 + 1)  # 3 MiB and a bit
    api = k8s.CoreV1Api(k8s.ApiClient())  # its method is only named to the stream, never called here
    exec_with_stdin(api, "p", "ns", "context", ["sh"], io.BytesIO(data))
    assert max(len(c) for c in sent) <= 1 << 20 and b"".join(sent) == data



def test_the_gate_refuses_a_layout_holding_a_link(tmp_path: Path) -> None:
    """The gate's script, run by a real shell: a symlink the build planted among the image's files
    (crane would follow it holding the push credential) stops the pod before the push stage."""
    import subprocess

    from kiln_builder.kube_executor import GATE_SCRIPT

    (tmp_path / "blobs").mkdir()
    (tmp_path / "index.json").write_text("{}")
    (tmp_path / "blobs" / "sha256").symlink_to("/kiln/push-config/config.json")
    done = subprocess.run(["sh", "-c", GATE_SCRIPT, "gate", "127.0.0.1", "9", str(tmp_path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "blobs/sha256" in done.stderr, (done.returncode, done.stderr)


async def test_a_refused_layout_is_named_and_never_pushed(tmp_path: Path) -> None:
    cluster = FakeCluster([b"#3 DONE 1.0s\n"], gate_exit=2)
    with pytest.raises(BuildFailed) as failed:
        await run(cluster, tmp_path)
    assert "links or devices" in str(failed.value)
    assert [container for container, _ in cluster.followed] == ["build"], "no push"


if __name__ == "__main__":  # pragma: no cover
    asyncio.run(test_successful_build_streams_lines_and_removes_its_pod(Path("/tmp")))
