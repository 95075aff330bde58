"""Kiln's Helm chart installed on the real single-node cluster (deploy/k8s/kiln.sh), as an operator would.

Kafka, the registry and JupyterHub with KubeSpawner run in the cluster from images built here (none
can be pulled); the chart is installed from deploy/helm/kiln with deploy/k8s/values.yaml, whose
gateway serves under /binder/ as many installations do. Nothing outside the cluster is contacted:
the launch below names a repository on a private address, which the resolver refuses without
connecting.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.support.k8s import Kiln, cached_spec, launch

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

SERVICES = ("gateway", "resolver", "builder", "launcher", "analytics")
ROOT = Path(__file__).resolve().parents[2]


def _state_path(name: str) -> str:
    """A path in the local stack's state (KILN_STATE, as the scripts read it)."""
    out = subprocess.run(["bash", "-c", f'source {ROOT}/deploy/local/lib.sh; echo "$KILN_STATE/{name}"'],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_every_service_is_its_own_deployment_and_ready(kiln: Kiln) -> None:
    deployments = {d["metadata"]["name"]: d for d in kiln.cluster.get("deployments", "-n", kiln.namespace)["items"]}
    for service in SERVICES:
        status = deployments[f"kiln-{service}"]["status"]
        assert status.get("readyReplicas") == status["replicas"] >= 1, (service, status)
        images = {c["image"] for c in deployments[f"kiln-{service}"]["spec"]["template"]["spec"]["containers"]}
        assert len(images) == 1 and images.pop().rsplit(":", 1)[0].endswith(f"/kiln/{service}")
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
    with httpx.stream("GET", f"{kiln.url}build/git/{spec}", headers={"Accept": "text/event-stream"}, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
                if events[-1]["phase"] in ("failed", "ready"):
                    break
    assert events[-1]["phase"] == "failed" and "private network" in events[-1]["message"], events


@dataclass(frozen=True)
class Cached:
    """A spec whose image is in the in-cluster registry already, and that image's name there."""

    url: str
    sha: str
    image: str


@pytest.fixture(scope="module")
def cached(kiln: Kiln) -> Cached:
    """A spec whose image is in the in-cluster registry already (Kiln's base image pushed under the
    name the resolver gives it), as a build would have left it."""
    url, sha = "http://git.kiln-test.invalid/lab/demo.git", "c0ffee" + "0" * 34
    return Cached(url, sha, cached_spec(kiln, url, sha))


def launch_cached(kiln: Kiln, cached: Cached) -> list[dict[str, Any]]:
    return launch(kiln, cached.url, cached.sha, read_timeout=600)


def test_a_cached_image_launches_to_a_server_that_answers_its_token(kiln: Kiln, cached: Cached) -> None:
    """A launch through the gateway's public URL to ``ready``: resolver, registry lookup, launcher, the
    hub's KubeSpawner and a user pod pulling from the in-cluster registry through the node's containerd."""
    events = launch_cached(kiln, cached)
    phases = [e["phase"] for e in events]
    assert phases[-1] == "ready" and "built" in phases and "building" not in phases, events[-3:]
    server = events[-1]["url"]
    assert server.startswith(kiln.hub_url + "/user/"), server
    answer = httpx.get(f"{server}api/status", headers={"Authorization": f"token {events[-1]['token']}"}, timeout=30)
    assert answer.status_code == 200 and "kernels" in answer.json(), answer.text
    assert httpx.get(f"{server}api/status", timeout=30).status_code in (302, 401, 403), "not without the token"
    pods = kiln.cluster.get("pods", "-n", kiln.namespace, "-l", "component=singleuser-server")["items"]
    assert any(c["image"] == cached.image for p in pods for c in p["spec"]["containers"]), \
        "the user pod runs the registry's image"


def test_the_autoscalers_are_valid_on_the_live_api_server(kiln: Kiln) -> None:
    """Each consumer service's HorizontalPodAutoscaler, rendered by the chart and checked by the API
    server itself (a server-side dry run: its schema, defaulting and admission), capped at the
    partition count."""
    helm = subprocess.run(["bash", str(ROOT / "deploy" / "helm" / "helm.sh")], capture_output=True, text=True,
                          check=True).stdout.strip().splitlines()[-1]
    chart = _state_path("k8s/chart/kiln")  # the chart as kiln.sh installed it (placeholder z2jh included)
    sets = [f"{s}.autoscaling.enabled=true" for s in ("gateway", "resolver", "builder", "launcher")]
    rendered = subprocess.run([helm, "template", "kiln", chart, "-n", kiln.namespace, "--kube-version", "1.34.4", "-f",
                               str(ROOT / "deploy" / "k8s" / "values.yaml"), "--set", ",".join(sets),
                               "--set", "registry.url=http://r:5000,registry.image_prefix=r:5000/b-,hub.publicUrl=http://h"],
                              capture_output=True, text=True, check=True).stdout
    autoscalers = "\n---\n".join(doc for doc in rendered.split("\n---\n") if "kind: HorizontalPodAutoscaler" in doc)
    assert autoscalers.count("kind: HorizontalPodAutoscaler") == 4
    out = kiln.cluster.kubectl("apply", "--dry-run=server", "-n", kiln.namespace, "-o", "json", "-f", "-", stdin=autoscalers)
    accepted = json.loads(out)["items"]
    assert {a["metadata"]["name"] for a in accepted} == {f"kiln-{s}" for s in ("gateway", "resolver", "builder", "launcher")}
    for hpa in accepted:
        assert hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        if hpa["metadata"]["name"] != "kiln-gateway":
            assert hpa["spec"]["maxReplicas"] <= 6, "no more consumers than the test cluster's 6 partitions"


def hub_servers(kiln: Kiln) -> dict[str, list[str]]:
    """Each hub user's running servers, as the launcher's own token sees them."""
    token = _state_path("k8s/hub-launcher-token")
    users = httpx.get(f"{kiln.hub_url}/hub/api/users", headers={"Authorization": f"token {Path(token).read_text().strip()}"},
                      timeout=30)
    assert users.status_code == 200, users.text
    return {u["name"]: list(u.get("servers", {})) for u in users.json()}


def test_launches_while_services_scale_lose_nothing_and_start_nothing_twice(kiln: Kiln, cached: Cached) -> None:
    """The resolver, builder and launcher scaled from 1 to 2 replicas while launches run, then from 2
    to 3 while more run (their partitions move between replicas by rebalance), then launches at 3:
    each request ends ready, with a server of its own, and no request has two."""
    deployments = [f"deployment/kiln-{s}" for s in ("resolver", "builder", "launcher")]
    results: dict[int, list[dict[str, Any]]] = {}

    def one(i: int) -> None:
        results[i] = launch_cached(kiln, cached)

    def batch(first: int, count: int, scale_to: int | None) -> None:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(first, first + count)]
        for t in threads:
            t.start()
        if scale_to:
            kiln.cluster.kubectl("-n", kiln.namespace, "scale", *deployments, f"--replicas={scale_to}")
        for t in threads:
            t.join(timeout=700)
        for d in deployments:
            kiln.cluster.kubectl("-n", kiln.namespace, "rollout", "status", d, "--timeout=300s", timeout=320)

    try:
        batch(0, 4, 2)
        batch(4, 4, 3)
        batch(8, 3, None)
        assert sorted(results) == list(range(11))
        outcomes = {i: events[-1] for i, events in results.items()}
        assert all(o["phase"] == "ready" for o in outcomes.values()), {i: o for i, o in outcomes.items() if o["phase"] != "ready"}
        servers = [o["url"] for o in outcomes.values()]
        assert len(set(servers)) == len(servers), "each request got a server of its own"
        running = hub_servers(kiln)
        for url in servers:
            user = url.split("/user/", 1)[1].split("/", 1)[0]
            assert len(running.get(user, [])) == 1, (user, running.get(user))
    finally:
        kiln.cluster.kubectl("-n", kiln.namespace, "scale", *deployments, "--replicas=1", check=False)


def test_a_user_server_that_fills_its_disk_is_evicted_alone(kiln: Kiln, cached: Cached) -> None:
    """A server's writes are held to the chart's ``singleuser.extraResource.limits`` (10Gi): a user who
    writes more loses that server, evicted by the kubelet, and the node's disk stays for the others."""
    events = launch_cached(kiln, cached)
    assert events[-1]["phase"] == "ready", events[-3:]
    user, server = events[-1]["url"].split("/user/", 1)[1].strip("/").split("/")[:2]
    pods = kiln.cluster.get("pods", "-n", kiln.namespace, "-l", "component=singleuser-server")["items"]
    pod = next(p for p in pods if p["metadata"]["annotations"].get("hub.jupyter.org/username") == user
               and p["metadata"]["annotations"].get("hub.jupyter.org/servername", "") == server)
    name = pod["metadata"]["name"]
    assert pod["spec"]["containers"][0]["resources"]["limits"]["ephemeral-storage"] == "10Gi"
    assert pod["spec"]["enableServiceLinks"] is False, "the server is not told where Kiln's Services are"
    kiln.cluster.kubectl("-n", kiln.namespace, "exec", name, "--", "sh", "-c",
                         "fallocate -l 11G /tmp/fill || dd if=/dev/zero of=/tmp/fill bs=1M count=11264", timeout=300)
    deadline = time.monotonic() + 240  # the kubelet measures disk use about once a minute
    evictions: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not evictions:
        evictions = kiln.cluster.get("events", "-n", kiln.namespace, "--field-selector",
                                     f"involvedObject.name={name},reason=Evicted")["items"]
        time.sleep(2)
    assert evictions, f"{name} was not evicted"
    assert "ephemeral" in evictions[0]["message"].lower(), evictions[0]["message"]
    others = kiln.cluster.get("pods", "-n", kiln.namespace, "-l", "app.kubernetes.io/component=gateway")["items"]
    assert all(p["status"]["phase"] == "Running" for p in others), "only the user's own pod went"
