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
from kiln_builder.kube_executor import KubernetesExecutor, PodSettings, build_command, pod_manifest

API = k8s.ApiClient()


def round_trip(pod: k8s.V1Pod) -> k8s.V1Pod:
    """The pod as the API server would receive and return it (JSON, then the client's model)."""
    return API.deserialize(json.dumps(API.sanitize_for_serialization(pod)), "V1Pod", "application/json")


class FakeCluster:
    """The pod endpoints of an API server, for one scenario: how the build container ends."""

    def __init__(self, log: list[bytes], exit_code: int = 0, reason: str | None = None, waiting: str | None = None,
                 hang: bool = False) -> None:
        self.pods: dict[str, k8s.V1Pod] = {}
        self.deleted: list[str] = []
        self.context: dict[str, bytes] = {}
        self._log, self._exit, self._reason, self._waiting, self._hang = log, exit_code, reason, waiting, hang
        self._stage: dict[str, str] = {}

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
        if stage == "pending":  # the next look finds the init container running (or the image not pullable)
            self._stage[name] = "init"
            return self._pod(name, "Pending", init=k8s.V1ContainerState(waiting=k8s.V1ContainerStateWaiting(reason="PodInitializing")))
        if stage == "init":
            if self._waiting:
                return self._pod(name, "Pending", init=k8s.V1ContainerState(waiting=k8s.V1ContainerStateWaiting(reason=self._waiting)))
            return self._pod(name, "Pending", init=k8s.V1ContainerState(running=k8s.V1ContainerStateRunning()))
        if stage == "building":
            return self._pod(name, "Running", build=k8s.V1ContainerState(running=k8s.V1ContainerStateRunning()))
        terminated = k8s.V1ContainerStateTerminated(exit_code=self._exit, reason=self._reason or ("Completed" if self._exit == 0 else "Error"))
        return self._pod(name, "Succeeded" if self._exit == 0 else "Failed", build=k8s.V1ContainerState(terminated=terminated))

    def read_namespaced_pod_log(self, name: str, namespace: str, container: str, follow: bool,
                                _preload_content: bool) -> Any:
        assert container == "build" and follow and not _preload_content
        cluster = self

        class Stream:
            def stream(self, size: int) -> Any:
                yield from cluster._log
                if cluster._hang:
                    import time

                    time.sleep(3)  # a build that never ends; the executor's timer must stop it
                cluster._stage[name] = "done"

        return Stream()

    def delete_namespaced_pod(self, name: str, namespace: str, grace_period_seconds: int, body: Any) -> None:
        assert grace_period_seconds == 0
        self.deleted.append(name)

    # the exec stream that carries the context
    def exec_stdin(self, api: Any, name: str, namespace: str, container: str, command: list[str], data: bytes) -> None:
        assert api is self and container == "context" and "tar -xf - -C /workspace" in command[-1]
        assert self._stage[name] == "init", "the context goes to the init container while it waits"
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    self.context[member.name] = tar.extractfile(member).read()  # type: ignore[union-attr]
        self._stage[name] = "building"

    def _pod(self, name: str, phase: str, init: k8s.V1ContainerState | None = None,
             build: k8s.V1ContainerState | None = None) -> k8s.V1Pod:
        pod = self.pods[name]
        pod.status = k8s.V1PodStatus(
            phase=phase,
            init_container_statuses=[k8s.V1ContainerStatus(name="context", image="x", image_id="", ready=False,
                                                           restart_count=0, state=init)] if init else None,
            container_statuses=[k8s.V1ContainerStatus(name="build", image="x", image_id="", ready=False,
                                                      restart_count=0, state=build)] if build else None)
        return pod


SETTINGS = PodSettings(namespace="binder", image="registry.example/buildkit:rootless", cpu_request="1", cpu_limit="2",
                       memory_request="2Gi", memory_limit="3Gi", node_selector={"hub.jupyter.org/node-purpose": "user"},
                       tolerations=[{"key": "dedicated", "operator": "Equal", "value": "build", "effect": "NoSchedule"}],
                       service_account="kiln-build", docker_config_secret="kiln-push", poll_interval_s=0.01,
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


def test_pod_manifest_carries_the_operators_settings() -> None:
    pod = round_trip(pod_manifest("kiln-build-1", "registry.local:5000/kiln/r:1", SETTINGS, 1800.7,
                                  {"NB_UID": "1000"}, {"repo2docker.repo": "https://x/y"}))
    spec = pod.spec
    assert spec.restart_policy == "Never" and spec.active_deadline_seconds == 1800
    assert spec.node_selector == {"hub.jupyter.org/node-purpose": "user"}
    assert spec.tolerations[0].key == "dedicated" and spec.tolerations[0].effect == "NoSchedule"
    assert spec.service_account_name == "kiln-build" and spec.automount_service_account_token is False
    build = spec.containers[0]
    assert build.resources.requests == {"cpu": "1", "memory": "2Gi"} and build.resources.limits == {"cpu": "2", "memory": "3Gi"}
    assert build.security_context.run_as_user == 1000 and build.security_context.privileged is None
    assert "--opt" in build.command and "build-arg:NB_UID=1000" in build.command
    assert "label:repo2docker.repo=https://x/y" in build.command
    assert build.command[-1] == "type=image,name=registry.local:5000/kiln/r:1,push=true,registry.insecure=true"
    assert {v.name for v in spec.volumes} == {"workspace", "docker-config"}
    assert pod.metadata.labels["app.kubernetes.io/component"] == "build"


def test_build_command_without_insecure_registry() -> None:
    command = build_command("quay.io/org/img:tag", {}, {}, insecure=False)
    assert command[0] == "buildctl-daemonless.sh" and command[-1] == "type=image,name=quay.io/org/img:tag,push=true"


async def test_successful_build_streams_lines_and_removes_its_pod(tmp_path: Path) -> None:
    cluster = FakeCluster([b"#1 [internal] load build definition\n#2 RUN pip ins", b"tall numpy\n#3 DONE 4.2s\n"])
    lines = await run(cluster, tmp_path)
    assert lines[0].startswith("Kiln: build pod binder/kiln-build-")
    assert lines[1:] == ["#1 [internal] load build definition\n", "#2 RUN pip install numpy\n", "#3 DONE 4.2s\n"]
    assert set(cluster.context) == {"repo/requirements.txt", "repo/index.ipynb", "kiln-entrypoint", ".kiln.Dockerfile"}
    assert cluster.context[".kiln.Dockerfile"].startswith(b"FROM base")
    assert cluster.deleted == list(cluster.pods)


async def test_failed_build_reports_its_last_line_and_removes_its_pod(tmp_path: Path) -> None:
    cluster = FakeCluster([b"#5 ERROR: process \"pip install nosuch\" did not complete successfully: exit code: 1\n"], exit_code=1)
    with pytest.raises(BuildFailed) as failed:
        await run(cluster, tmp_path)
    assert failed.value.cause == "build_failed" and "did not complete successfully" in str(failed.value)
    assert cluster.deleted == list(cluster.pods)


async def test_out_of_memory_is_named(tmp_path: Path) -> None:
    cluster = FakeCluster([b"#4 RUN python big.py\n"], exit_code=137, reason="OOMKilled")
    with pytest.raises(BuildFailed) as failed:
        await run(cluster, tmp_path)
    assert failed.value.cause == "build_memory" and "3Gi" in str(failed.value)
    assert cluster.deleted


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


if __name__ == "__main__":  # pragma: no cover
    asyncio.run(test_successful_build_streams_lines_and_removes_its_pod(Path("/tmp")))
