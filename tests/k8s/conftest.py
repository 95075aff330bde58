"""The single-node Kubernetes cluster of deploy/k8s, brought up once per session (built first on a
new machine: about 25 minutes, once), and Kiln installed on it (tests/support/k8s.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.support.k8s import CLUSTER, KILN_SH, ROOT, Cluster, Kiln, cluster_of_this_checkout, installed_kiln

__all__ = ["Cluster", "Kiln"]


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    for command in (["env", "KILN_WITH_K8S=1", "bash", str(ROOT / "deploy" / "local" / "install-system.sh")],
                    ["bash", str(ROOT / "deploy" / "local" / "docker.sh"), "start"],
                    ["bash", str(CLUSTER), "up"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
        assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
    yield cluster_of_this_checkout()


@pytest.fixture(scope="session")
def kiln(cluster: Cluster) -> Kiln:
    """``kiln.sh install``: images into the cluster, Kafka, a registry and JupyterHub with KubeSpawner,
    then the chart with ``helm upgrade --install --wait`` (minutes the first time, then quick)."""
    done = subprocess.run(["bash", str(KILN_SH), "install"], capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, f"kiln.sh install:\n{done.stdout}\n{done.stderr}"
    return installed_kiln(cluster)
