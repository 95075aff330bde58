"""The single-node Kubernetes cluster of deploy/k8s, brought up once per session (built first on a
new machine: about 20 minutes, once), and a kubectl bound to it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "deploy" / "k8s" / "cluster.sh"


@dataclass(frozen=True)
class Cluster:
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


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    for command in (["env", "KILN_WITH_K8S=1", "bash", str(ROOT / "deploy" / "local" / "install-system.sh")],
                    ["bash", str(ROOT / "deploy" / "local" / "docker.sh"), "start"],
                    ["bash", str(CLUSTER), "up"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
        assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
    kubeconfig = Path(subprocess.run(["bash", str(CLUSTER), "kubeconfig"], capture_output=True, text=True,
                                     check=True).stdout.strip())
    script = f'source {ROOT}/deploy/local/kiln.env; source {ROOT}/deploy/k8s/versions.sh; echo "$K8S_TOOLS/bin/kubectl $KILN_K8S_NODE_IP"'
    env = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    kubectl, node_ip = env.stdout.split()
    yield Cluster(kubeconfig, Path(kubectl), node_ip)


@dataclass(frozen=True)
class Kiln:
    """Kiln installed on the cluster by deploy/k8s/kiln.sh: its gateway's public URL, and the cluster."""

    url: str
    hub_url: str
    cluster: Cluster
    namespace: str = "kiln"


@pytest.fixture(scope="session")
def kiln(cluster: Cluster) -> Kiln:
    """``kiln.sh install``: images into the cluster, Kafka, a registry and JupyterHub with KubeSpawner,
    then the chart with ``helm upgrade --install --wait`` (minutes the first time, then quick)."""
    script = ROOT / "deploy" / "k8s" / "kiln.sh"
    done = subprocess.run(["bash", str(script), "install"], capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, f"kiln.sh install:\n{done.stdout}\n{done.stderr}"
    url = subprocess.run(["bash", str(script), "url"], capture_output=True, text=True, check=True).stdout.strip()
    return Kiln(url, f"http://{cluster.node_ip}:30800", cluster)
