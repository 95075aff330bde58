"""The Helm chart, checked here without a cluster: `helm lint` and `helm template` for the required
values and each documented example, every rendered manifest parsed by the kubernetes client's
models (a misspelt field fails the round trip), the schema refusing unknown keys, and the values
schema and settings reference generated from the settings classes being up to date.

The zero-to-jupyterhub chart cannot be downloaded here; a placeholder chart with its name and
version stands for it so that Helm's dependency check passes. Its own templates are not rendered.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from tests.conftest import ROOT

CHART = ROOT / "deploy" / "helm" / "kiln"
# secret.yaml files go with their config.yaml, as in BinderHub's instructions
EXAMPLES = sorted(p for p in (ROOT / "deploy" / "helm" / "examples").glob("*.yaml") if not p.stem.endswith("-secret"))
KUBE_VERSION = "1.31.0"
MODELS = {"Deployment": "V1Deployment", "Service": "V1Service", "Secret": "V1Secret", "ServiceAccount": "V1ServiceAccount",
          "Role": "V1Role", "RoleBinding": "V1RoleBinding", "Ingress": "V1Ingress",
          "HorizontalPodAutoscaler": "V2HorizontalPodAutoscaler"}
STRIMZI = {"Kafka", "KafkaNodePool", "KafkaTopic"}
API = k8s.ApiClient()

@pytest.fixture(scope="module")
def helm() -> str:
    out = subprocess.run(["bash", str(ROOT / "deploy" / "helm" / "helm.sh")], capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]

@pytest.fixture(scope="module")
def chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("chart") / "kiln"
    shutil.copytree(CHART, copy)
    placeholder = copy / "charts" / "jupyterhub"
    placeholder.mkdir(parents=True)
    dependency = yaml.safe_load((CHART / "Chart.yaml").read_text())["dependencies"][0]
    (placeholder / "Chart.yaml").write_text(yaml.safe_dump({"apiVersion": "v2", "name": dependency["name"],
                                                             "version": dependency["version"]}))
    return copy

def helm_run(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)

def render(helm: str, chart: Path, *values: Path, sets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    args = ["template", "kiln", str(chart), "--namespace", "binder", "--kube-version", KUBE_VERSION]
    for v in values:
        args += ["-f", str(v)]
    for s in sets:
        args += ["--set", s]
    out = helm_run(helm, *args)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]

def parsed(doc: dict[str, Any]) -> Any:
    """The manifest as the client's model, and back: equal to the original if every field is known."""
    model = API.deserialize(json.dumps(doc), MODELS[doc["kind"]], "application/json")
    assert API.sanitize_for_serialization(model) == doc, f"{doc['kind']} {doc['metadata']['name']} has fields the API does not know"
    return model

@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_lint_and_template_each_example(helm: str, chart: Path, example: Path) -> None:
    lint = helm_run(helm, "lint", str(chart), "-f", str(example), "--kube-version", KUBE_VERSION)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    extra = [ROOT / "deploy" / "helm" / "examples" / "binderhub-secret.yaml"] if example.stem == "binderhub-config" else []
    docs = render(helm, chart, example, *extra)
    kinds = [d["kind"] for d in docs]
    assert kinds.count("Deployment") == 5
    for doc in docs:
        if doc["kind"] in STRIMZI:
            assert doc["apiVersion"] == "kafka.strimzi.io/v1beta2" and isinstance(doc["spec"], dict)
        else:
            parsed(doc)

def test_defaults_need_only_the_three_addresses(helm: str, chart: Path) -> None:
    """Bare defaults stop with the missing setting named; adding those three is a complete install."""
    bare = helm_run(helm, "template", "kiln", str(chart), "--kube-version", KUBE_VERSION)
    assert bare.returncode != 0 and "kafka.bootstrap is required" in bare.stderr
    sets = ("kafka.bootstrap=kafka:9092", "registry.url=https://r.example.org",
            "registry.image_prefix=r.example.org/binder-", "hub.publicUrl=https://hub.example.org")
    docs = render(helm, chart, sets=sets)
    deployments = {d["metadata"]["name"]: parsed(d) for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {f"kiln-{s}" for s in ("gateway", "resolver", "builder", "launcher", "analytics")}
    replicas = {name: d.spec.replicas for name, d in deployments.items()}
    assert replicas == {"kiln-gateway": 2, "kiln-resolver": 2, "kiln-builder": 2, "kiln-launcher": 2, "kiln-analytics": 1}
    builder = deployments["kiln-builder"].spec.template.spec
    env = {e.name: e for e in builder.containers[0].env}
    assert env["KILN_BUILD_EXECUTOR"].value == "kubernetes" and env["KILN_BUILD_NAMESPACE"].value == "binder"
    assert env["KILN_KAFKA_BOOTSTRAP"].value == "kafka:9092" and env["KILN_TOPIC_PARTITIONS"].value == "12"
    assert builder.service_account_name == "kiln-builder"
    launcher = deployments["kiln-launcher"].spec.template.spec.containers[0]
    token = {e.name: e for e in launcher.env}["KILN_HUB_API_TOKEN"].value_from.secret_key_ref
    assert (token.name, token.key) == ("hub", "hub.services.kiln-launcher.apiToken")
    annotations = deployments["kiln-resolver"].spec.template.metadata.annotations
    assert annotations["prometheus.io/port"] == "9100" and annotations["prometheus.io/scrape"] == "true"

def test_autoscaling_stops_consumers_at_the_partition_count(helm: str, chart: Path) -> None:
    example = ROOT / "deploy" / "helm" / "examples" / "strimzi-ingress-autoscaling.yaml"
    docs = render(helm, chart, example)
    hpas = {d["metadata"]["name"]: parsed(d) for d in docs if d["kind"] == "HorizontalPodAutoscaler"}
    assert hpas["kiln-resolver"].spec.max_replicas == 24  # asked for 40; 24 partitions
    assert hpas["kiln-gateway"].spec.max_replicas == 10  # not a consumer: as asked
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert "replicas" not in deployments["kiln-resolver"]["spec"], "the autoscaler owns the replica count"
    topics = {d["spec"]["topicName"]: d["spec"] for d in docs if d["kind"] == "KafkaTopic"}
    assert set(topics) == {f"kiln.{t}" for t in ("launch-requested", "build-requested", "hub-launch-requested",
                                                 "phase-events", "dead-letter")}
    assert all(t["partitions"] == 24 for t in topics.values())
    assert topics["kiln.phase-events"]["config"] == {"retention.ms": -1}
    bootstrap = [e for e in deployments["kiln-gateway"]["spec"]["template"]["spec"]["containers"][0]["env"]
                 if e["name"] == "KILN_KAFKA_BOOTSTRAP"][0]["value"]
    assert bootstrap == "kiln-kafka-kafka-bootstrap:9092"
    ingress = parsed(next(d for d in docs if d["kind"] == "Ingress"))
    assert ingress.spec.rules[0].host == "binder.example.org"
    assert ingress.metadata.annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"

@pytest.mark.parametrize("bad", ["gateway.replicaz=3", "gateway.settings.rate_limitt=3", "kafka.securityProtocol=TLS",
                                 "registry.image-prefix=x"])
def test_schema_refuses_unknown_keys_and_values(helm: str, chart: Path, bad: str) -> None:
    example = ROOT / "deploy" / "helm" / "examples" / "minimal.yaml"
    out = helm_run(helm, "template", "kiln", str(chart), "-f", str(example), "--set", bad, "--kube-version", KUBE_VERSION)
    assert out.returncode != 0 and "schema" in out.stderr, out.stderr

def test_generated_schema_and_reference_are_current() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "deploy" / "helm" / "generate.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr

