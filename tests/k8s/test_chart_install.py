"""Kiln's Helm chart installed on the real single-node cluster (deploy/k8s/kiln.sh), as an operator would.

Kafka, the registry and JupyterHub with KubeSpawner run in the cluster from images built here (none
can be pulled); the chart is installed from deploy/helm/kiln with deploy/k8s/values.yaml, whose
gateway serves under /binder/ as many installations do. Nothing outside the cluster is contacted:
the launch below names a repository on a private address, which the resolver refuses without
connecting.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import httpx
import pytest

from .conftest import Kiln

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

SERVICES = ("gateway", "resolver", "builder", "launcher", "analytics")


def test_every_service_is_its_own_deployment_and_ready(kiln: Kiln) -> None:
    deployments = {d["metadata"]["name"]: d for d in kiln.cluster.get("deployments", "-n", kiln.namespace)["items"]}
    for service in SERVICES:
        status = deployments[f"kiln-{service}"]["status"]
        assert status.get("readyReplicas") == status["replicas"] >= 1, (service, status)
        images = {c["image"] for c in deployments[f"kiln-{service}"]["spec"]["template"]["spec"]["containers"]}
        assert len(images) == 1 and images.pop().split(":")[0].endswith(f"/kiln/{service}")
    pods = kiln.cluster.get("pods", "-n", kiln.namespace, "-l", "app.kubernetes.io/component=gateway")["items"]
    probe = pods[0]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"]
    assert probe == "/binder/health", "the probes follow the gateway's base_url, or it would never be ready"


def test_the_gateway_answers_under_its_base_url_and_reaches_the_hub_and_kafka(kiln: Kiln) -> None:
    health = httpx.get(kiln.url + "health", timeout=10)
    assert health.status_code == 200, health.text
    checks = {c["service"]: c for c in health.json()["checks"]}
    assert checks["Kafka"]["ok"] and checks["JupyterHub API"]["ok"], checks
    providers = httpx.get(kiln.url + "api/repoproviders", timeout=10).json()
    assert {"gh", "git", "zenodo"} <= {p["id"] for p in providers}
    hub = httpx.get(kiln.hub_url + "/hub/api/", timeout=10)
    assert hub.status_code == 200 and "version" in hub.json(), "JupyterHub with KubeSpawner behind proxy-public"


def test_a_launch_goes_through_kafka_to_the_resolver_and_back(kiln: Kiln) -> None:
    """The event path across pods: gateway, Kafka, resolver, Kafka, gateway. The repository is on a
    private address, refused by the resolver's URL guard before any connection."""
    spec = f"{quote('http://10.11.12.13/lab/repo.git', safe='')}/main"
    events = []
    with httpx.stream("GET", f"{kiln.url}build/git/{spec}", timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
                if events[-1]["phase"] in ("failed", "ready"):
                    break
    assert events[-1]["phase"] == "failed" and "private network" in events[-1]["message"], events
