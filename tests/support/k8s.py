"""Kiln on the test cluster of deploy/k8s, for the k8s suite and the benchmarks: a kubectl bound to the
cluster, the installed chart's addresses, and pushes to the in-cluster registry."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "deploy" / "k8s" / "cluster.sh"
KILN_SH = ROOT / "deploy" / "k8s" / "kiln.sh"


@dataclass(frozen=True)
class Cluster:
    """The cluster's admin kubeconfig, the kubectl built for it, and the node's address."""

    kubeconfig: Path
    kubectl_path: Path
    node_ip: str

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120) -> str:
        done = subprocess.run([str(self.kubectl_path), "--kubeconfig", str(self.kubeconfig), *args], input=stdin,
                              capture_output=True, text=True, timeout=timeout)
        if check:
            assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        return done.stdout

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json"))


@dataclass(frozen=True)
class Kiln:
    """Kiln installed on the cluster by deploy/k8s/kiln.sh: its gateway's public URL, and the cluster."""

    url: str
    hub_url: str
    cluster: Cluster
    namespace: str = "kiln"


def cluster_of_this_checkout() -> Cluster:
    """The cluster cluster.sh runs (it must be up)."""
    kubeconfig = Path(subprocess.run(["bash", str(CLUSTER), "kubeconfig"], capture_output=True, text=True,
                                     check=True).stdout.strip())
    script = f'source {ROOT}/deploy/local/kiln.env; source {ROOT}/deploy/k8s/versions.sh; echo "$K8S_TOOLS/bin/kubectl $KILN_K8S_NODE_IP"'
    env = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    kubectl, node_ip = env.stdout.split()
    return Cluster(kubeconfig, Path(kubectl), node_ip)


def installed_kiln(cluster: Cluster) -> Kiln:
    """Kiln as kiln.sh installed it (it must be installed)."""
    url = subprocess.run(["bash", str(KILN_SH), "url"], capture_output=True, text=True, check=True).stdout.strip()
    return Kiln(url, f"http://{cluster.node_ip}:30800", cluster)


def state_file(name: str) -> str:
    """The content of a file of the local stack's state (KILN_STATE, as the scripts read it)."""
    out = subprocess.run(["bash", "-c", f'source {ROOT}/deploy/local/lib.sh; cat "$KILN_STATE/{name}"'],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def push_to_registry(kiln: Kiln, local_image: str, repository_tag: str) -> None:
    """``local_image`` (in the host's Docker) pushed to the in-cluster registry as ``repository_tag``,
    through ``kubectl port-forward`` to its push side with the push account (deploy/k8s/infra.yaml),
    as a build pod's push step would. A Docker config of its own keeps the login off the host's."""
    password = state_file("k8s/registry-push-password")
    forward = subprocess.Popen([str(kiln.cluster.kubectl_path), "--kubeconfig", str(kiln.cluster.kubeconfig), "-n",
                                "kiln-infra", "port-forward", "service/registry-push", ":5001"],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert forward.stdout is not None
        port = re.search(r"127\.0\.0\.1:(\d+)", forward.stdout.readline())
        assert port, "kubectl port-forward printed no port"
        registry = f"127.0.0.1:{port.group(1)}"  # Docker talks plain HTTP to loopback
        with tempfile.TemporaryDirectory() as config:
            env = {**os.environ, "DOCKER_CONFIG": config}
            login = subprocess.run(["docker", "login", registry, "-u", "kiln-push", "--password-stdin"], input=password,
                                   capture_output=True, text=True, env=env, timeout=60)
            assert login.returncode == 0, login.stderr
            pushed = f"{registry}/{repository_tag}"
            subprocess.run(["docker", "tag", local_image, pushed], check=True)
            push = subprocess.run(["docker", "push", "-q", pushed], capture_output=True, text=True, timeout=900, env=env)
            subprocess.run(["docker", "rmi", pushed], capture_output=True)
            assert push.returncode == 0, push.stderr
    finally:
        forward.terminate()


def cached_spec(kiln: Kiln, url: str = "http://git.kiln-test.invalid/lab/demo.git", sha: str = "c0ffee" + "0" * 34) -> str:
    """Kiln's base image pushed under the name the resolver gives an exact commit of ``url`` (a host
    allowed by name in deploy/k8s/values.yaml that never resolves: nothing is looked up), so a launch
    of it is a cache hit. Returns the image's name as the node pulls it."""
    from kiln_resolver.images import image_name, split_image

    prefix = f"{kiln.cluster.node_ip}:30500/kiln/binder-"
    _, repository, tag = split_image(image_name(prefix, url, sha))
    push_to_registry(kiln, state_file("base-image"), f"{repository}:{tag}")  # base-image: made by make up or kiln.sh install
    return f"{prefix.split('/', 1)[0]}/{repository}:{tag}"


def launch(kiln: Kiln, url: str, ref: str, read_timeout: float = 900) -> list[dict[str, Any]]:
    """The events of one launch of ``url`` at ``ref`` through the gateway's public URL, up to ready or failed."""
    events: list[dict[str, Any]] = []
    with httpx.stream("GET", f"{kiln.url}build/git/{quote(url, safe='')}/{ref}",
                      headers={"Accept": "text/event-stream"}, timeout=httpx.Timeout(30, read=read_timeout)) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
                if events[-1]["phase"] in ("failed", "ready"):
                    break
    return events
