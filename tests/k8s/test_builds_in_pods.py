"""Builds in pods on the real cluster, and the NetworkPolicies that fence strangers' code there.

Launches through the gateway's public URL name repositories on a git server this module starts in
the cluster (Python's http.server in Kiln's builder image, serving bare repositories over git's
plain HTTP protocol): the resolver lists their refs, the builder fetches them, and the Kubernetes
executor builds each in a pod with BuildKit rootless and pushes it with crane, images built here
from the Go module proxy (deploy/k8s/build.sh). The base image the builds start from is Kiln's own,
pushed to the in-cluster registry first.

The repositories' postBuild is the hostile part: it tries Kafka, the registry's push side, Kiln's
services and the API server from inside the build, and prints what it reached; the same probe runs
in the user pod the launch starts. kube-router (cluster.sh) enforces the chart's NetworkPolicies;
without it every probe below would connect.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.k8s import Kiln, launch, push_to_registry, state_file

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

GIT_NAMESPACE = "kiln-test"
GIT_HOST = f"git.{GIT_NAMESPACE}.svc.cluster.local"  # allowed_private_hosts in deploy/k8s/values.yaml
BUILD_NAMESPACE = "kiln-builds"

# What a stranger's code tries. Each entry: name, then "tcp" and an address, or an HTTP method and a
# URL: an unauthenticated upload to the registry's push side, the read-only side's API.
PROBE = r'''
import socket, sys, urllib.request, urllib.error

def connect(host, port):
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        return "reachable"
    except OSError as exc:
        return f"blocked ({type(exc).__name__})"

def http(method, url):
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return f"http {answer.status}"
    except urllib.error.HTTPError as exc:
        return f"http {exc.code}"
    except (OSError, urllib.error.URLError) as exc:
        return f"blocked ({type(exc).__name__})"

for line in sys.argv[1].split(";"):
    name, kind, target = line.split(",")
    result = connect(*target.rsplit(":", 1)) if kind == "tcp" else http(kind, target)
    print(f"kiln-probe {name}: {result}", flush=True)
'''


@dataclass(frozen=True)
class Targets:
    """Where Kiln's parts are, as addresses a probe can name."""

    kafka: str
    gateway_pod: str
    resolver_pod: str
    hub: str
    api_server: str
    registry_push: str
    registry_pull: str

    def spec(self) -> str:
        return ";".join([
            f"kafka,tcp,{self.kafka}", f"gateway,tcp,{self.gateway_pod}", f"resolver,tcp,{self.resolver_pod}",
            f"api-server,tcp,{self.api_server}", f"hub-api,tcp,{self.hub}",
            f"registry-push,POST,http://{self.registry_push}/v2/kiln/probe/blobs/uploads/",
            f"registry-pull,GET,http://{self.registry_pull}/v2/"])


def probes(text: str) -> dict[str, str]:
    """The probe's answers in a log or an output: name -> result."""
    found = {}
    for line in text.splitlines():
        if "kiln-probe " in line:
            name, _, result = line.split("kiln-probe ", 1)[1].partition(": ")
            found[name] = result.strip()
    return found


@pytest.fixture(scope="module")
def targets(kiln: Kiln) -> Targets:
    def pod_ip(component: str) -> str:
        pods = kiln.cluster.get("pods", "-n", kiln.namespace, "-l", f"app.kubernetes.io/component={component}")["items"]
        return str(pods[0]["status"]["podIP"])

    return Targets(kafka="kafka.kiln-infra.svc.cluster.local:9092", gateway_pod=f"{pod_ip('gateway')}:8585",
                   resolver_pod=f"{pod_ip('resolver')}:9100", hub=f"hub.{kiln.namespace}.svc.cluster.local:8081",
                   api_server="kubernetes.default.svc.cluster.local:443",
                   registry_push="registry-push.kiln-infra.svc.cluster.local:5001",
                   registry_pull=f"{kiln.cluster.node_ip}:30500")


@pytest.fixture(scope="module")
def base_image(kiln: Kiln) -> None:
    """The base image builds start FROM, where the chart's builder looks for it (<image_prefix>base:latest)."""
    push_to_registry(kiln, state_file("base-image"), "kiln/binder-base:latest")


def _repository(work: Path, branches: dict[str, dict[str, str]]) -> Path:
    """A bare repository with one commit per branch, each holding ``files``; ready for git's plain HTTP."""
    source, bare = work / "source", work / "repo.git"
    git = ["git", "-c", "user.name=Kiln tests", "-c", "user.email=tests@kiln.invalid", "-C", str(source)]
    subprocess.run(["git", "init", "-q", "-b", "main", str(source)], check=True)
    for branch, files in branches.items():
        subprocess.run([*git, "checkout", "-q", "--orphan", branch], check=True)
        subprocess.run([*git, "rm", "-rqf", "--ignore-unmatch", "."], check=True)
        for name, content in files.items():
            (source / name).write_text(content)
            if name == "postBuild":
                (source / name).chmod(0o755)
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-qm", branch], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(source), str(bare)], check=True)
    subprocess.run(["git", "-C", str(bare), "update-server-info"], check=True)
    return bare


@pytest.fixture(scope="module")
def git_server(kiln: Kiln, targets: Targets) -> Iterator[str]:
    """A git server in the cluster holding a repository whose branches build in different ways. Its
    URL (on a private address, allowed by name in deploy/k8s/values.yaml)."""
    builder = kiln.cluster.get("deployment", "-n", kiln.namespace, "kiln-builder")
    image = builder["spec"]["template"]["spec"]["containers"][0]["image"]
    run = uuid.uuid4().hex[:8]  # a new commit each session: no image of an earlier run is found
    assert "'" not in PROBE, "the probe goes into postBuild between single quotes"
    probe_step = f"#!/bin/sh\necho 'kiln probe run {run}'\npython3 -c '{PROBE}' '{targets.spec()}'\n"
    with tempfile.TemporaryDirectory() as work:
        bare = _repository(Path(work), {
            "main": {"postBuild": probe_step, "README.md": f"run {run}\n"},
            "fails": {"postBuild": f"#!/bin/sh\necho 'about to fail {run}'\nexit 3\n"},
            "many": {"postBuild": "#!/bin/sh\necho built once\n", "README.md": f"many {run}\n"},
            # More than the test cluster's disk limit (deploy/k8s/values.yaml: 8Gi), then held: the
            # kubelet must evict the pod before the sleep ends, or the build would succeed.
            "fills": {"postBuild": f"#!/bin/sh\necho 'filling the disk {run}'\n"
                                   "fallocate -l 9G /tmp/fill || dd if=/dev/zero of=/tmp/fill bs=1M count=9216\n"
                                   "sleep 300\n"},
        })
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            tar.add(bare, arcname="repo.git")
    manifest = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {GIT_NAMESPACE}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: git, namespace: {GIT_NAMESPACE}, labels: {{app: git}}}}
spec:
  terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false
  containers:
  - name: git
    image: {image}
    imagePullPolicy: Never
    command: [python3, -m, http.server, "8000", --directory, /srv/git]
    securityContext: {{runAsNonRoot: true, runAsUser: 65534, allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}
    volumeMounts: [{{name: git, mountPath: /srv/git}}]
  volumes: [{{name: git, emptyDir: {{}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: git, namespace: {GIT_NAMESPACE}}}
spec:
  selector: {{app: git}}
  ports: [{{port: 80, targetPort: 8000}}]
"""
    # Whatever an earlier, interrupted run left is gone first (a pod's spec cannot be changed in place).
    kiln.cluster.kubectl("delete", "namespace", GIT_NAMESPACE, "--ignore-not-found", "--wait=true", timeout=180)
    kiln.cluster.kubectl("apply", "-f", "-", stdin=manifest)
    kiln.cluster.kubectl("-n", GIT_NAMESPACE, "wait", "--for=condition=Ready", "pod/git", "--timeout=120s", timeout=130)
    done = subprocess.run([str(kiln.cluster.kubectl_path), "--kubeconfig", str(kiln.cluster.kubeconfig), "-n",
                           GIT_NAMESPACE, "exec", "-i", "git", "--", "tar", "-x", "-C", "/srv/git"],
                          input=archive.getvalue(), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    yield f"http://{GIT_HOST}/repo.git"
    kiln.cluster.kubectl("delete", "namespace", GIT_NAMESPACE, "--wait=false", check=False)


def build_log(events: list[dict[str, Any]]) -> str:
    return "".join(e.get("message", "") for e in events if e["phase"] == "building")


def build_pods(kiln: Kiln) -> list[str]:
    pods = kiln.cluster.get("pods", "-n", BUILD_NAMESPACE, "-l", "app.kubernetes.io/component=build")["items"]
    return [p["metadata"]["name"] for p in pods]


def builders_settled(kiln: Kiln, replicas: int) -> bool:
    """Whether every builder pod's consumer last took up its partitions in one and the same
    generation of the group, with no rebalance begun since (read from their logs, twice)."""
    def states() -> list[tuple[str, str]]:
        pods = kiln.cluster.get("pods", "-n", kiln.namespace, "-l", "app.kubernetes.io/component=builder")["items"]
        found = []
        for pod in pods:
            log = kiln.cluster.kubectl("-n", kiln.namespace, "logs", pod["metadata"]["name"], "--since=15m", check=False)
            group = [line for line in log.splitlines() if "group kiln-builder" in line]
            synced = [line.rsplit(" ", 1)[1] for line in group if "Successfully synced group" in line]
            last = group[-1] if group else ""
            found.append((synced[-1] if synced else "", "Setting newly assigned partitions" in last))
        return found

    first = states()
    if len(first) != replicas or not all(settled for _, settled in first) or len({g for g, _ in first}) != 1:
        return False
    time.sleep(2)
    return states() == first


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


@pytest.fixture(scope="module")
def built(kiln: Kiln, base_image: None, git_server: str) -> list[dict[str, Any]]:
    """The events of the first launch of the main branch: a build in a pod, then a server."""
    return launch(kiln, git_server, "main")


def test_a_build_runs_in_a_pod_streams_its_log_and_launches(kiln: Kiln, built: list[dict[str, Any]]) -> None:
    phases = [e["phase"] for e in built]
    assert phases[-1] == "ready", built[-5:]
    log = build_log(built)
    assert f"Kiln: build pod {BUILD_NAMESPACE}/kiln-build-" in log, log[:2000]
    building = [e for e in built if e["phase"] == "building"]
    assert len(building) > 10, "the log arrives line by line as the build runs, not at its end"
    assert "kiln probe run" in log, "the repository's own step ran in the build"
    server = built[-1]["url"]
    answer = httpx.get(f"{server}api/status", headers={"Authorization": f"token {built[-1]['token']}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    wait_until(lambda: not build_pods(kiln), 60, "the build pod to be removed")


def test_strangers_code_in_a_build_pod_reaches_none_of_kilns_parts(built: list[dict[str, Any]]) -> None:
    """The NetworkPolicies, enforced: from inside the build (the repository's postBuild) Kafka, Kiln's
    pods, the hub, the API server and the registry's push side do not answer. The pod reaches the
    push side only in its push stage, after the build and all it started have ended (the launch above
    reached ready, so that push went through)."""
    found = probes(build_log(built))
    assert found.get("registry-pull") == "http 200", ("the probe can reach what it is allowed", found)
    for name in ("kafka", "gateway", "resolver", "hub-api", "api-server", "registry-push"):
        assert found.get(name, "").startswith("blocked"), (name, found)


def test_strangers_code_in_a_user_pod_reaches_none_of_kilns_parts(kiln: Kiln, built: list[dict[str, Any]],
                                                                  targets: Targets) -> None:
    """The same probe in the user's server, as its notebook's code would run it: only the hub's API
    (which jupyterhub-singleuser needs) answers; the registry is not reachable at all."""
    user = built[-1]["url"].split("/user/", 1)[1].split("/", 1)[0]
    pods = kiln.cluster.get("pods", "-n", kiln.namespace, "-l", "component=singleuser-server")["items"]
    pod = next(p["metadata"]["name"] for p in pods if p["metadata"].get("annotations", {}).get("hub.jupyter.org/username") == user)
    out = kiln.cluster.kubectl("-n", kiln.namespace, "exec", pod, "--", "python3", "-c", PROBE, targets.spec(), timeout=120)
    found = probes(out)
    assert found.get("hub-api") == "reachable", ("the probe can reach what it is allowed", found)
    for name in ("kafka", "gateway", "resolver", "api-server", "registry-push", "registry-pull"):
        assert found.get(name, "").startswith("blocked"), (name, found)


def test_a_failing_build_says_why_and_leaves_no_pod(kiln: Kiln, base_image: None, git_server: str) -> None:
    events = launch(kiln, git_server, "fails")
    assert events[-1]["phase"] == "failed", events[-3:]
    assert "about to fail" in build_log(events), "the failing step's output reached the client"
    assert "exit code: 3" in events[-1]["message"], events[-1]
    wait_until(lambda: not build_pods(kiln), 60, "the failed build's pod to be removed")


def test_a_build_that_fills_its_disk_is_stopped_and_told_so(kiln: Kiln, base_image: None, git_server: str) -> None:
    """A repository that writes more than the build's disk limit is evicted by the kubelet, not left
    to fill the node's disk under every other pod; the user reads the limit, not a bare exit code."""
    events = launch(kiln, git_server, "fills")
    assert "filling the disk" in build_log(events)
    assert events[-1]["phase"] == "failed", events[-3:]
    assert "disk limit of 8Gi" in events[-1]["message"], events[-1]
    wait_until(lambda: not build_pods(kiln), 60, "the evicted build's pod to be removed")


def test_concurrent_launches_of_one_new_commit_build_it_once(kiln: Kiln, base_image: None, git_server: str) -> None:
    """Three launches of the same new commit while two builders run: one build pod, three servers."""
    deployment = "deployment/kiln-builder"
    kiln.cluster.kubectl("-n", kiln.namespace, "scale", deployment, "--replicas=2")
    try:
        kiln.cluster.kubectl("-n", kiln.namespace, "rollout", "status", deployment, "--timeout=300s", timeout=320)
        # A rebalance during the build would stop it on one builder and start it on the other (the
        # bus cancels what a member no longer owns): launch once the group has settled.
        wait_until(lambda: builders_settled(kiln, 2), 180, "both builders to hold their partitions")
        results: dict[int, list[dict[str, Any]]] = {}
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, launch(kiln, git_server, "many")))
                   for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=900)
        assert sorted(results) == [0, 1, 2]
        assert all(r[-1]["phase"] == "ready" for r in results.values()), [r[-1] for r in results.values()]
        pods = {line.split("Kiln: build pod ", 1)[1].split()[0] for r in results.values()
                for line in build_log(r).splitlines() if "Kiln: build pod " in line}
        assert len(pods) == 1, pods
        assert len({r[-1]["url"] for r in results.values()}) == 3, "a server per request"
    finally:
        kiln.cluster.kubectl("-n", kiln.namespace, "scale", deployment, "--replicas=1", check=False)


def test_the_api_server_admits_build_pods_of_kilns_shape_only(kiln: Kiln) -> None:
    """The chart's ValidatingAdmissionPolicy on the build namespace, asked by server-side dry runs:
    the pod the builder makes (from its own settings, as deployed) is admitted; the same pod made
    privileged, given the host's network or a host path, another image, a node by name or an early
    push stage, as a builder taken over would ask, is refused."""
    import copy
    import json

    from kubernetes import client as k8s

    from kiln_builder.kube_executor import PodSettings, pod_manifest

    builder = kiln.cluster.get("deployment", "-n", kiln.namespace, "kiln-builder")
    env = {e["name"]: e.get("value", "") for e in builder["spec"]["template"]["spec"]["containers"][0]["env"]}
    settings = PodSettings(namespace=BUILD_NAMESPACE, image=env["KILN_BUILD_IMAGE"], push_image=env["KILN_BUILD_PUSH_IMAGE"],
                           memory_limit=env["KILN_BUILD_POD_MEMORY_LIMIT"], disk_limit=env["KILN_BUILD_DISK_LIMIT"],
                           service_account=env["KILN_BUILD_SERVICE_ACCOUNT"],
                           docker_config_secret=env["KILN_BUILD_DOCKER_CONFIG_SECRET"])
    pod = k8s.ApiClient().sanitize_for_serialization(
        pod_manifest("kiln-build-admission", f"{kiln.cluster.node_ip}:30500/kiln/binder-x:1", settings, 60))
    pod.update(apiVersion="v1", kind="Pod")  # the client's model leaves them to its call; kubectl needs them

    def admitted(manifest: dict[str, Any]) -> tuple[bool, str]:
        done = subprocess.run([str(kiln.cluster.kubectl_path), "--kubeconfig", str(kiln.cluster.kubeconfig), "create",
                               "--dry-run=server", "-f", "-"], input=json.dumps(manifest), capture_output=True,
                              text=True, timeout=60)
        return done.returncode == 0, done.stderr

    ok, why = admitted(pod)
    assert ok, why

    def variant(change: Any) -> dict[str, Any]:
        hostile = copy.deepcopy(pod)
        change(hostile)
        return hostile

    build = 1  # the build container among the init containers (context, build, gate)
    hostile = {
        "privileged": lambda p: p["spec"]["initContainers"][build]["securityContext"].update(privileged=True),
        "host network": lambda p: p["spec"].update(hostNetwork=True),
        "host path": lambda p: p["spec"]["volumes"].append({"name": "root", "hostPath": {"path": "/"}}),
        "other image": lambda p: p["spec"]["containers"][0].update(image="kiln.local/hub:1"),
        "node by name": lambda p: p["spec"].update(nodeName="kiln-node"),
        "born pushing": lambda p: p["metadata"]["labels"].update({"kiln.build/stage": "push"}),
        "no disk limit": lambda p: p["spec"]["initContainers"][build]["resources"]["limits"].pop("ephemeral-storage"),
        "root": lambda p: p["spec"]["initContainers"][0]["securityContext"].update(runAsUser=0, runAsNonRoot=False),
    }
    for name, change in hostile.items():
        ok, why = admitted(variant(change))
        assert not ok and "ValidatingAdmissionPolicy" in why, (name, why)
