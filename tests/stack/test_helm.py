"""The Helm chart, checked here without a cluster: `helm lint` and `helm template` for the required
values and each documented example, every rendered manifest parsed by the kubernetes client's
models (a misspelt field fails the round trip), the schema refusing unknown keys, and the values
schema and settings reference generated from the settings classes being up to date.

Security (issue 13): the rendered NetworkPolicies are evaluated by ``Cluster`` below, which applies
the API's rules (a pod selected by a policy of a type gets only what some such policy allows; a
connection needs the source's egress and the destination's ingress) to the pods a Binder has, so
each test asks "can this pod open this port on that one" and checks the answers both ways. RBAC,
the build service account, Kafka's per-service users and ACLs, and where each registry credential
goes are read from the rendered manifests too.

The zero-to-jupyterhub chart cannot be downloaded here; a placeholder chart with its name and
version stands for it so that Helm's dependency check passes. Its own templates are not rendered.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

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
          "HorizontalPodAutoscaler": "V2HorizontalPodAutoscaler", "NetworkPolicy": "V1NetworkPolicy",
          "Namespace": "V1Namespace", "ValidatingAdmissionPolicy": "V1ValidatingAdmissionPolicy",
          "ValidatingAdmissionPolicyBinding": "V1ValidatingAdmissionPolicyBinding"}
STRIMZI = {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser"}
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
    # builds go where the chart made their namespace and bound the builder's Role (a real install
    # found the builder making pods in the release's namespace, where it has no rights)
    assert env["KILN_BUILD_EXECUTOR"].value == "kubernetes" and env["KILN_BUILD_NAMESPACE"].value == "binder-builds"
    role = next(parsed(d) for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "kiln-builder")
    assert role.metadata.namespace == "binder-builds"
    assert env["KILN_KAFKA_BOOTSTRAP"].value == "kafka:9092" and env["KILN_TOPIC_PARTITIONS"].value == "12"
    assert builder.service_account_name == "kiln-builder"
    assert env["KILN_BUILD_SERVICE_ACCOUNT"].value == "kiln-build"
    assert env["KILN_BUILD_DISK_LIMIT"].value == "20Gi", "a build cannot fill a node's disk by default"
    launcher = deployments["kiln-launcher"].spec.template.spec.containers[0]
    token = {e.name: e for e in launcher.env}["KILN_HUB_API_TOKEN"].value_from.secret_key_ref
    assert (token.name, token.key) == ("hub", "hub.services.kiln-launcher.apiToken")
    annotations = deployments["kiln-resolver"].spec.template.metadata.annotations
    assert annotations["prometheus.io/port"] == "9100" and annotations["prometheus.io/scrape"] == "true"

@pytest.mark.parametrize(("base_url", "prefix"), [("/", "/"), ("/binder/", "/binder/"), ("/binder", "/binder/"),
                                                  ("/a/b/", "/a/b/")])
def test_gateway_probes_follow_its_base_url(helm: str, chart: Path, base_url: str, prefix: str) -> None:
    """The gateway serves every route under base_url: probes at /health would never make it ready."""
    sets = ("kafka.bootstrap=kafka:9092", "registry.url=https://r.example.org", "registry.image_prefix=r.example.org/b-",
            "hub.publicUrl=https://hub.example.org", f"gateway.settings.base_url={base_url}")
    gateway = next(parsed(d) for d in render(helm, chart, sets=sets)
                   if d["kind"] == "Deployment" and d["metadata"]["name"] == "kiln-gateway")
    container = gateway.spec.template.spec.containers[0]
    assert (container.readiness_probe.http_get.path, container.liveness_probe.http_get.path) == \
        (f"{prefix}health", f"{prefix}metrics")


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
    bootstrap = next(e for e in deployments["kiln-gateway"]["spec"]["template"]["spec"]["containers"][0]["env"]
                     if e["name"] == "KILN_KAFKA_BOOTSTRAP")["value"]
    assert bootstrap == "kiln-kafka-kafka-bootstrap:9093"  # SCRAM over TLS, Strimzi's authenticated listener
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



# --- security (issue 13) -------------------------------------------------------------------------

REQUIRED = ("kafka.bootstrap=kafka:9092", "registry.url=https://r.example.org",
            "registry.image_prefix=r.example.org/binder-", "hub.publicUrl=https://hub.example.org")
SERVICES = ("gateway", "resolver", "builder", "launcher", "analytics")


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def env_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


@dataclass
class Pod:
    """A pod as NetworkPolicies see it: where it is, its labels, its address."""

    namespace: str
    labels: dict[str, str]
    ip: str


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions) applied to ``labels``; {} selects all."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        value, present = labels.get(e["key"]), e["key"] in labels
        if e["operator"] == "In" and value not in e["values"] or e["operator"] == "NotIn" and value in e["values"] \
                or e["operator"] == "Exists" and not present or e["operator"] == "DoesNotExist" and present:
            return False
    return True


class Cluster:
    """The rendered NetworkPolicies applied as the API defines them (namespaces carry only their
    kubernetes.io/metadata.name label)."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.policies = [parsed(d) and d for d in docs if d["kind"] == "NetworkPolicy"]
        for policy in self.policies:  # `helm template` leaves the release's namespace ("binder") implicit
            policy["metadata"].setdefault("namespace", "binder")

    def _applying(self, pod: Pod, kind: str) -> list[dict[str, Any]]:
        return [p for p in self.policies if p["metadata"]["namespace"] == pod.namespace
                and kind in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], pod.labels)]

    @staticmethod
    def _peer(peer: dict[str, Any], pod: Pod, policy_ns: str) -> bool:
        if "ipBlock" in peer:
            block, ip = peer["ipBlock"], ipaddress.ip_address(pod.ip)
            net = ipaddress.ip_network(block["cidr"])
            return ip.version == net.version and ip in net and not any(
                ip.version == ipaddress.ip_network(x).version and ip in ipaddress.ip_network(x) for x in block.get("except", []))
        if "namespaceSelector" in peer:
            ns_ok = selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": pod.namespace})
        else:
            ns_ok = pod.namespace == policy_ns
        return ns_ok and selects(peer.get("podSelector"), pod.labels)

    def _allowed(self, policies: list[dict[str, Any]], direction: str, peer_key: str, other: Pod, port: int, protocol: str) -> bool:
        if not policies:
            return True  # a pod no policy of this type selects is not isolated in that direction
        for policy in policies:
            for rule in policy["spec"].get(direction) or []:
                ports = rule.get("ports")
                if ports and not any(p.get("protocol", "TCP") == protocol and p.get("port") in (None, port) for p in ports):
                    continue
                peers = rule.get(peer_key)
                if not peers or any(self._peer(peer, other, policy["metadata"]["namespace"]) for peer in peers):
                    return True
        return False

    def egress(self, src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
        return self._allowed(self._applying(src, "Egress"), "egress", "to", dst, port, protocol)

    def ingress(self, dst: Pod, src: Pod, port: int, protocol: str = "TCP") -> bool:
        return self._allowed(self._applying(dst, "Ingress"), "ingress", "from", src, port, protocol)

    def connects(self, src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
        return self.egress(src, dst, port, protocol) and self.ingress(dst, src, port, protocol)


def kiln_pod(service: str, ip: str) -> Pod:
    return Pod("binder", {"app.kubernetes.io/part-of": "kiln", "app.kubernetes.io/instance": "kiln",
                          "app.kubernetes.io/component": service}, ip)


BUILD = Pod("binder-builds", {"app.kubernetes.io/part-of": "kiln", "app.kubernetes.io/component": "build",
                              "kiln.build/image-hash": "ab"}, "10.8.0.7")
USER = Pod("binder", {"component": "singleuser-server", "app": "jupyterhub", "release": "kiln"}, "10.8.1.9")
OTHER_USER = Pod("binder", {"component": "singleuser-server", "app": "jupyterhub", "release": "kiln"}, "10.8.1.10")
HUB = Pod("binder", {"component": "hub", "app": "jupyterhub", "release": "kiln"}, "10.8.2.2")
PROXY = Pod("binder", {"component": "proxy", "app": "jupyterhub", "release": "kiln"}, "10.8.2.3")
KAFKA = Pod("binder", {"strimzi.io/cluster": "kiln-kafka", "strimzi.io/kind": "Kafka"}, "10.8.3.4")
REGISTRY = Pod("registry", {"app": "registry"}, "10.8.4.5")
KUBE_DNS = Pod("kube-system", {"k8s-app": "kube-dns"}, "10.96.0.10")
INTERNET = Pod("", {}, "151.101.0.223")  # pypi.org
INTERNET6 = Pod("", {}, "2a04:4e42::223")
METADATA = Pod("", {}, "169.254.169.254")
PRIVATE = [Pod("", {}, ip) for ip in ("10.0.0.1", "172.20.1.1", "192.168.1.1", "100.64.0.1", "fd12::1")]


@pytest.fixture(scope="module")
def secure(helm: str, chart: Path) -> list[dict[str, Any]]:
    """The defaults plus a build namespace of their own, a pull account and SASL per service."""
    sets = REQUIRED + ("builder.kubernetes.namespace=binder-builds", "registry.username=pusher",
                       "registry.password=push-secret", "registry.pull.username=puller",
                       "registry.pull.password=pull-secret", "kafka.securityProtocol=SASL_SSL",
                       "kafka.sasl.mechanism=SCRAM-SHA-512",
                       *(f"kafka.sasl.passwords.{s}=pw-{s}" for s in SERVICES))
    return render(helm, chart, sets=sets)


def test_network_policies_on_by_default_and_a_switch_turns_them_off(helm: str, chart: Path, secure: list[dict[str, Any]]) -> None:
    policies = by_kind(secure, "NetworkPolicy")
    assert set(policies) == {"kiln-build-pods", "kiln-user-servers", *(f"kiln-{s}" for s in SERVICES)}
    assert policies["kiln-build-pods"]["metadata"]["namespace"] == "binder-builds"
    off = render(helm, chart, sets=REQUIRED + ("networkPolicy.enabled=false",))
    assert not by_kind(off, "NetworkPolicy")
    only_kiln = render(helm, chart, sets=REQUIRED + ("networkPolicy.userServers.enabled=false",))
    assert "kiln-user-servers" not in by_kind(only_kiln, "NetworkPolicy") and "kiln-build-pods" in by_kind(only_kiln, "NetworkPolicy")


@pytest.mark.parametrize("source", ["build", "user"])
def test_strangers_pods_reach_dns_and_the_internet_and_nothing_of_kilns(secure: list[dict[str, Any]], source: str) -> None:
    cluster, src = Cluster(secure), BUILD if source == "build" else USER
    # positive controls: name resolution and package indexes
    assert cluster.egress(src, KUBE_DNS, 53, "UDP") and cluster.egress(src, KUBE_DNS, 53, "TCP")
    assert cluster.egress(src, INTERNET, 443) and cluster.egress(src, INTERNET, 80) and cluster.egress(src, INTERNET6, 443)
    # Kafka (its pods and, for an external cluster, any private address), the registry's in-cluster side, Kiln's pods
    assert not cluster.egress(src, KAFKA, 9092) and not cluster.egress(src, KAFKA, 9093)
    assert not cluster.egress(src, REGISTRY, 5000) and not cluster.egress(src, REGISTRY, 443)
    for service, port in (("gateway", 8585), ("analytics", 8590), ("resolver", 9100), ("builder", 9100), ("launcher", 9100)):
        assert not cluster.connects(src, kiln_pod(service, "10.8.5.1"), port), service
    for private in PRIVATE:
        assert not cluster.egress(src, private, 9092) and not cluster.egress(src, private, 443), private.ip
    # cloud metadata, on any port, and the link-local range around it
    for port in (80, 443, 8080):
        assert not cluster.egress(src, METADATA, port)
    assert not cluster.egress(src, Pod("", {}, "169.254.170.2"), 80)  # ECS-style credentials endpoint
    assert not cluster.egress(src, Pod("", {}, "fd00:ec2::254"), 80)
    # nothing reaches into a build; only the proxy and the hub reach a user server
    assert not cluster.ingress(BUILD, kiln_pod("builder", "10.8.5.2"), 1234)


def test_user_servers_reach_the_hub_api_only_and_only_the_proxy_and_hub_reach_them(secure: list[dict[str, Any]]) -> None:
    cluster = Cluster(secure)
    assert cluster.connects(USER, HUB, 8081)  # positive control: jupyterhub-singleuser's API calls
    assert not cluster.egress(USER, HUB, 8000) and not cluster.egress(USER, HUB, 8001)
    assert not cluster.egress(USER, PROXY, 8001) and not cluster.egress(USER, PROXY, 8000)  # the proxy's API
    assert cluster.ingress(USER, PROXY, 8888) and cluster.ingress(USER, HUB, 8888)
    assert not cluster.ingress(USER, OTHER_USER, 8888) and not cluster.egress(OTHER_USER, USER, 8888)
    assert not cluster.ingress(USER, BUILD, 8888) and not cluster.ingress(USER, kiln_pod("launcher", "10.8.5.3"), 8888)
    assert not cluster.ingress(USER, PROXY, 22)
    # a build pod is not a user pod: it may not reach the hub
    assert not cluster.egress(BUILD, HUB, 8081)


def test_kilns_pods_accept_only_their_ports(helm: str, chart: Path, secure: list[dict[str, Any]]) -> None:
    cluster = Cluster(secure)
    anyone = Pod("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}, "10.8.9.9")
    assert cluster.ingress(kiln_pod("gateway", "10.8.5.1"), anyone, 8585)
    assert cluster.ingress(kiln_pod("analytics", "10.8.5.1"), anyone, 8590)
    for service in ("resolver", "builder", "launcher"):
        assert cluster.ingress(kiln_pod(service, "10.8.5.1"), anyone, 9100)  # metrics
        assert not cluster.ingress(kiln_pod(service, "10.8.5.1"), anyone, 8585)
    assert not cluster.ingress(kiln_pod("gateway", "10.8.5.1"), anyone, 9100)
    assert not cluster.ingress(kiln_pod("analytics", "10.8.5.1"), anyone, 8585)
    # egress of Kiln's own pods is not limited: they need Kafka, the hub, the registry and git hosts
    assert cluster.egress(kiln_pod("builder", "10.8.5.1"), KAFKA, 9093)
    # the peers an operator names are the only ones let in
    prometheus = Pod("monitoring", {"app": "prometheus"}, "10.8.7.7")
    limited = Cluster(render(helm, chart, sets=REQUIRED + (
        "networkPolicy.metrics.from[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=monitoring",
        "networkPolicy.gateway.from[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=ingress-nginx")))
    assert limited.ingress(kiln_pod("resolver", "10.8.5.1"), prometheus, 9100)
    assert not limited.ingress(kiln_pod("resolver", "10.8.5.1"), anyone, 9100)
    assert limited.ingress(kiln_pod("gateway", "10.8.5.1"), anyone, 8585)
    assert not limited.ingress(kiln_pod("gateway", "10.8.5.1"), prometheus, 8585)
    assert limited.ingress(kiln_pod("analytics", "10.8.5.1"), prometheus, 8590), "analytics keeps its own (empty) list"


def test_private_ranges_are_a_setting_and_metadata_stays_excluded(helm: str, chart: Path) -> None:
    docs = render(helm, chart, sets=REQUIRED + ("networkPolicy.privateRanges={10.0.0.0/8}",))
    cluster, build = Cluster(docs), Pod("binder-builds", BUILD.labels, BUILD.ip)  # builds in a namespace of their own
    assert not cluster.egress(build, Pod("", {}, "10.1.2.3"), 443)
    assert cluster.egress(build, Pod("", {}, "192.168.1.1"), 443), "no longer listed: reachable"
    assert not cluster.egress(build, METADATA, 80) and not cluster.egress(USER, METADATA, 80)
    # extra egress an operator adds (an in-cluster registry) is allowed to builds and only to them
    docs = render(helm, chart, sets=REQUIRED + (
        "networkPolicy.builds.extraEgress[0].to[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=registry",
        "networkPolicy.builds.extraEgress[0].ports[0].port=5000"))
    cluster = Cluster(docs)
    assert cluster.egress(build, REGISTRY, 5000)
    assert not cluster.egress(USER, REGISTRY, 5000)


def test_the_push_side_is_reachable_only_in_a_build_pods_push_stage(helm: str, chart: Path) -> None:
    """pushEgress selects build pods the executor relabelled after their build ended; a pod still in
    its build stage (the repository's code may be running) gets only extraEgress."""
    registry = "networkPolicy.builds.{}[0].to[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=registry"
    docs = render(helm, chart, sets=REQUIRED + (
        registry.format("extraEgress"), "networkPolicy.builds.extraEgress[0].ports[0].port=5000",
        registry.format("pushEgress"), "networkPolicy.builds.pushEgress[0].ports[0].port=5001"))
    cluster = Cluster(docs)
    building = Pod("binder-builds", {**BUILD.labels, "kiln.build/stage": "build"}, BUILD.ip)
    pushing = Pod("binder-builds", {**BUILD.labels, "kiln.build/stage": "push"}, BUILD.ip)
    assert cluster.egress(building, REGISTRY, 5000) and not cluster.egress(building, REGISTRY, 5001)
    assert cluster.egress(pushing, REGISTRY, 5001) and cluster.egress(pushing, REGISTRY, 5000)
    assert not cluster.egress(pushing, KAFKA, 9092), "the push stage gains the push side and nothing else"
    assert not cluster.egress(USER, REGISTRY, 5001)
    assert "kiln-build-push" not in by_kind(render(helm, chart, sets=REQUIRED), "NetworkPolicy"), "none asked for"


def test_builder_rbac_is_a_role_on_pods_in_the_build_namespace(helm: str, chart: Path, secure: list[dict[str, Any]]) -> None:
    assert not [d for d in secure if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role = parsed(by_kind(secure, "Role")["kiln-builder"])
    assert role.metadata.namespace == "binder-builds"
    rules = {(r.api_groups[0], res): set(r.verbs) for r in role.rules for res in r.resources}
    assert rules == {("", "pods"): {"create", "get", "patch", "delete"}, ("", "pods/log"): {"get"},
                     ("", "pods/exec"): {"create", "get"}}
    binding = parsed(by_kind(secure, "RoleBinding")["kiln-builder"])
    assert binding.metadata.namespace == "binder-builds" and binding.role_ref.kind == "Role"
    assert [(s.name, s.namespace) for s in binding.subjects] == [("kiln-builder", "binder")]
    # By default builds get a namespace of their own, made by the chart and labelled for what build
    # pods need; an operator who makes it (or builds in the release's namespace) gets none.
    made = render(helm, chart, sets=REQUIRED)
    ns = parsed(by_kind(made, "Namespace")["binder-builds"])
    assert ns.metadata.labels["pod-security.kubernetes.io/enforce"] == "privileged"
    assert parsed(by_kind(made, "Role")["kiln-builder"]).metadata.namespace == "binder-builds"
    assert not by_kind(render(helm, chart, sets=REQUIRED + ("builder.kubernetes.createNamespace=false",)), "Namespace")
    # the release's own namespace is refused: the builder's Role would reach Kiln's Secrets and pods there
    same = helm_run(helm, "template", "kiln", str(chart), "--namespace", "binder", "--kube-version", KUBE_VERSION,
                    *[arg for s in REQUIRED + ("builder.kubernetes.namespace=binder",) for arg in ("--set", s)])
    assert same.returncode != 0 and "a namespace of their own" in same.stderr, same.stderr


def test_build_pods_get_a_service_account_with_no_token_and_no_rights(secure: list[dict[str, Any]]) -> None:
    accounts = {name: parsed(d) for name, d in by_kind(secure, "ServiceAccount").items()}
    build = accounts["kiln-build"]
    assert build.metadata.namespace == "binder-builds" and build.automount_service_account_token is False
    bound = {s["name"] for d in secure if d["kind"] in ("RoleBinding", "ClusterRoleBinding") for s in d["subjects"]}
    assert "kiln-build" not in bound and "kiln-builder" in bound
    builder = env_of(by_kind(secure, "Deployment")["kiln-builder"])
    assert builder["KILN_BUILD_SERVICE_ACCOUNT"]["value"] == "kiln-build"
    assert builder["KILN_BUILD_NAMESPACE"]["value"] == "binder-builds"


def docker_config(secret: dict[str, Any], key: str) -> dict[str, tuple[str, str]]:
    auths = json.loads(base64.b64decode(secret["data"][key]))["auths"]
    return {host: tuple(base64.b64decode(a["auth"]).decode().split(":", 1)) for host, a in auths.items()}  # type: ignore[misc]


def test_push_credentials_reach_only_the_build_pods_push_step(secure: list[dict[str, Any]]) -> None:
    secrets = by_kind(secure, "Secret")
    push = secrets["kiln-push"]
    assert push["metadata"]["namespace"] == "binder-builds"
    assert docker_config(push, "config.json") == {"r.example.org": ("pusher", "push-secret")}
    assert docker_config(push, "pull.json") == {"r.example.org": ("puller", "pull-secret")}
    # the push password is in that Secret and nowhere else the chart makes
    holders = [name for name, d in secrets.items()
               if any(b"push-secret" in base64.b64decode(v) or "push-secret" in base64.b64decode(v).decode(errors="ignore")
                      or "cHVzaGVyOnB1c2gtc2VjcmV0" in base64.b64decode(v).decode(errors="ignore") for v in d["data"].values())]
    assert holders == ["kiln-push"]
    # no Kiln pod mounts it or reads it into its environment; the resolver and builder look images up as the puller
    for name, deployment in by_kind(secure, "Deployment").items():
        spec = deployment["spec"]["template"]["spec"]
        assert all(v.get("secret", {}).get("secretName") != "kiln-push" for v in spec.get("volumes", []))
        for e in spec["containers"][0]["env"]:
            assert e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") != "kiln-push", name
    for service in ("resolver", "builder"):
        env = env_of(by_kind(secure, "Deployment")[f"kiln-{service}"])
        assert env["KILN_REGISTRY_USERNAME"]["value"] == "puller"
        ref = env["KILN_REGISTRY_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("kiln-registry", "pull-password")
        assert base64.b64decode(secrets["kiln-registry"]["data"]["pull-password"]) == b"pull-secret"
    assert env_of(by_kind(secure, "Deployment")["kiln-builder"])["KILN_BUILD_DOCKER_CONFIG_SECRET"]["value"] == "kiln-push"


def test_user_pods_pull_with_the_read_only_account(helm: str, chart: Path, secure: list[dict[str, Any]]) -> None:
    pull = parsed(by_kind(secure, "Secret")["kiln-image-pull"])
    assert pull.type == "kubernetes.io/dockerconfigjson" and pull.metadata.namespace is None  # the hub's namespace
    assert docker_config(by_kind(secure, "Secret")["kiln-image-pull"], ".dockerconfigjson") == {"r.example.org": ("puller", "pull-secret")}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["jupyterhub"]["singleuser"]["image"]["pullSecrets"] == [values["registry"]["pull"]["secretName"]]
    # without a pull account: no pull Secrets, no pull.json, anonymous look-ups
    bare = render(helm, chart, sets=REQUIRED + ("registry.username=pusher", "registry.password=push-secret"))
    assert {"kiln-image-pull", "kiln-registry"}.isdisjoint(by_kind(bare, "Secret"))
    assert set(by_kind(bare, "Secret")["kiln-push"]["data"]) == {"config.json"}
    env = env_of(by_kind(bare, "Deployment")["kiln-resolver"])
    assert env["KILN_REGISTRY_USERNAME"]["value"] == "" and "KILN_REGISTRY_PASSWORD" not in env


def test_each_service_is_its_own_kafka_user(helm: str, chart: Path, secure: list[dict[str, Any]]) -> None:
    deployments = by_kind(secure, "Deployment")
    kafka = by_kind(secure, "Secret")["kiln-kafka"]
    assert {k: base64.b64decode(v).decode() for k, v in kafka["data"].items()} == {s: f"pw-{s}" for s in SERVICES}
    for service in SERVICES:
        env = env_of(deployments[f"kiln-{service}"])
        assert env["KILN_KAFKA_SASL_USERNAME"]["value"] == f"kiln-{service}"
        ref = env["KILN_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("kiln-kafka", service), "each pod reads only its own password"
    # an existing Secret: one key per service
    example = ROOT / "deploy" / "helm" / "examples" / "kafka-sasl-tls.yaml"
    for service, deployment in by_kind(render(helm, chart, example), "Deployment").items():
        ref = env_of(deployment)["KILN_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("kiln-kafka-credentials", service.removeprefix("kiln-"))
    # a missing password is named
    out = helm_run(helm, "template", "kiln", str(chart), "--kube-version", KUBE_VERSION, *[a for s in REQUIRED for a in ("--set", s)],
                   "--set", "kafka.sasl.mechanism=SCRAM-SHA-512", "--set", "kafka.sasl.passwords.gateway=x")
    assert out.returncode != 0 and "kafka.sasl.passwords.resolver is required" in out.stderr


ACL_FILE = ROOT / "deploy" / "local" / "kafka-acls.txt"


def acl_grants(users: dict[str, dict[str, Any]]) -> dict[str, set[tuple[str, str, str, str]]]:
    """Each KafkaUser's ACLs as (operation, resource type, pattern type, name) tuples."""
    return {name.removeprefix("kiln-"): {(op, a["resource"]["type"], a["resource"]["patternType"], a["resource"]["name"])
                                          for a in user["spec"]["authorization"]["acls"] for op in a["operations"]}
            for name, user in users.items()}


def may(grants: set[tuple[str, str, str, str]], op: str, kind: str, name: str) -> bool:
    """Whether ``grants`` allow ``op`` on a resource, as Kafka's simple authorizer decides (All covers all;
    Read, Write and others imply Describe)."""
    for g_op, g_kind, pattern, g_name in grants:
        if g_kind != kind or not (name == g_name if pattern == "literal" else name.startswith(g_name)):
            continue
        if g_op in (op, "All") or op == "Describe" and g_op in ("Read", "Write", "Delete", "Alter"):
            return True
    return False


def test_strimzi_makes_a_user_per_service_with_acls_for_its_own_topics(helm: str, chart: Path) -> None:
    example = ROOT / "deploy" / "helm" / "examples" / "strimzi-ingress-autoscaling.yaml"
    docs = render(helm, chart, example)
    kafka = by_kind(docs, "Kafka")["kiln-kafka"]["spec"]["kafka"]
    assert kafka["authorization"] == {"type": "simple"}
    assert [(l["port"], l["tls"], l["authentication"]["type"]) for l in kafka["listeners"]] == [(9093, True, "scram-sha-512")]
    peers = kafka["listeners"][0]["networkPolicyPeers"]
    assert selects(peers[0]["podSelector"], kiln_pod("builder", "x").labels) and not selects(peers[0]["podSelector"], BUILD.labels)
    users = by_kind(docs, "KafkaUser")
    assert set(users) == {f"kiln-{s}" for s in SERVICES}
    assert all(u["spec"]["authentication"] == {"type": "scram-sha-512"} for u in users.values())
    grants = acl_grants(users)
    topics = ("launch-requested", "build-requested", "hub-launch-requested", "phase-events", "dead-letter")
    # every service may set aside what it cannot handle (dead-letter); beyond that, only what it owns
    writes = {"gateway": {"launch-requested", "phase-events", "dead-letter"},
              "resolver": {"build-requested", "hub-launch-requested", "phase-events", "dead-letter"},
              "builder": {"hub-launch-requested", "phase-events", "dead-letter"},
              "launcher": {"phase-events", "dead-letter"}, "analytics": {"dead-letter"}}
    consumes = {"resolver": "launch-requested", "builder": "build-requested", "launcher": "hub-launch-requested",
                "analytics": "phase-events", "gateway": "phase-events"}
    for service in SERVICES:
        g = grants[service]
        assert {t for t in topics if may(g, "Write", "topic", f"kiln.{t}")} == writes[service], service
        assert may(g, "Read", "topic", f"kiln.{consumes[service]}")
        assert all(may(g, "Describe", "topic", f"kiln.{t}") for t in topics), "each checks at start that all exist"
        assert not may(g, "Alter", "topic", "kiln.phase-events") and not may(g, "Delete", "topic", "kiln.launch-requested")
        assert not may(g, "Write", "topic", "other.topic") and not may(g, "Read", "group", "someone-else")
        assert not may(g, "Alter", "cluster", "kafka-cluster") and not may(g, "Describe", "transactionalId", "x")
    for service in ("resolver", "builder", "launcher"):  # consumers use only their own group
        assert may(grants[service], "Read", "group", f"kiln-{service}")
        assert not any(may(grants[service], "Read", "group", f"kiln-{o}") for o in ("resolver", "builder", "launcher") if o != service)
    assert not may(grants["gateway"], "Read", "group", "kiln-builder") and may(grants["gateway"], "Describe", "group", "kiln-builder")
    # analytics: faust's own topics and group, by prefix, and nothing of the others'
    assert may(grants["analytics"], "Create", "topic", "kiln-analytics-requests-changelog")
    assert may(grants["analytics"], "Read", "group", "kiln-analytics") and not may(grants["analytics"], "Read", "group", "kiln-builder")
    assert not may(grants["resolver"], "Write", "topic", "kiln-analytics-requests-changelog")
    # the services log in as those users, over TLS, trusting the cluster's CA
    for service in SERVICES:
        deployment = by_kind(docs, "Deployment")[f"kiln-{service}"]
        env = env_of(deployment)
        assert env["KILN_KAFKA_BOOTSTRAP"]["value"] == "kiln-kafka-kafka-bootstrap:9093"
        assert (env["KILN_KAFKA_SECURITY_PROTOCOL"]["value"], env["KILN_KAFKA_SASL_MECHANISM"]["value"]) == ("SASL_SSL", "SCRAM-SHA-512")
        assert env["KILN_KAFKA_SASL_USERNAME"]["value"] == f"kiln-{service}"
        assert env["KILN_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": f"kiln-{service}", "key": "password"}
        assert env["KILN_KAFKA_SSL_CAFILE"]["value"] == "/etc/kiln/kafka-ca/ca.crt"
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        assert volumes == [{"name": "kafka-ca", "secret": {"secretName": "kiln-kafka-cluster-ca-cert"}}]
    # positive control of the switch: without authentication, one plain listener and no users
    plain = render(helm, chart, example, sets=("kafka.strimzi.authentication=false",))
    assert [l["port"] for l in by_kind(plain, "Kafka")["kiln-kafka"]["spec"]["kafka"]["listeners"]] == [9092]
    assert not by_kind(plain, "KafkaUser") and "authorization" not in by_kind(plain, "Kafka")["kiln-kafka"]["spec"]["kafka"]


@pytest.mark.skipif(not ACL_FILE.exists(), reason="the local stack's ACL table is not there")
def test_chart_acls_are_the_local_stacks(helm: str, chart: Path) -> None:
    """deploy/local/kafka-acls.txt (what `make up` applies to its broker) and the chart grant the same."""
    docs = render(helm, chart, ROOT / "deploy" / "helm" / "examples" / "strimzi-ingress-autoscaling.yaml")
    rows = [line.split() for line in ACL_FILE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    wanted: dict[str, set[tuple[str, str, str, str]]] = {s: set() for s in SERVICES}
    for user, ops, kind, pattern, name in rows:
        for service in (SERVICES if user == "*" else (user,)):
            wanted[service] |= {(op, kind, "prefix" if pattern == "prefixed" else pattern, name.replace("@P@", "kiln."))
                                for op in ops.split(",")}
    assert acl_grants(by_kind(docs, "KafkaUser")) == wanted


def test_launcher_hands_warm_servers_over_through_the_proxy(helm: str, chart: Path, secure: list[dict[str, Any]]) -> None:
    """Warm pools on Kubernetes are pre-started pods, started through the hub like any other: the
    launcher needs their address through the proxy, its pool settings, and a way to the proxy's port."""
    docs = render(helm, chart, sets=(*REQUIRED, "launcher.settings.pool_size=3",
                                     "launcher.settings.pool_images[0]=r.example.org/binder-x:1"))
    launcher = next(parsed(d) for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "kiln-launcher")
    env = {e.name: e.value for e in launcher.spec.template.spec.containers[0].env}
    assert env["KILN_HUB_PROXY_URL"] == "http://proxy-public"
    assert env["KILN_POOL_SIZE"] == "3" and json.loads(env["KILN_POOL_IMAGES"]) == ["r.example.org/binder-x:1"]
    cluster = Cluster(secure)
    assert cluster.connects(kiln_pod("launcher", "10.8.5.3"), PROXY, 8000)
    # The hub's role lets the launcher tell the hub a handed-over server is in use (the idle culler's clock).
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert "users:activity" in values["jupyterhub"]["hub"]["loadRoles"]["kiln-launcher"]["scopes"]


async def test_the_charts_spawner_returns_once_the_servers_port_answers() -> None:
    """The chart's KubeSpawner subclass (values.yaml) polls the server's port, as the local spawner does.

    kubespawner is not installed here: a stand-in ``KubeSpawner`` answers ``start`` with the URL of a
    port that starts listening a moment later, the way a pod's server comes up after the pod runs.
    """
    import asyncio
    import types

    code = yaml.safe_load((CHART / "values.yaml").read_text())["jupyterhub"]["hub"]["extraConfig"]["kiln-spawner"]
    accepted: list[float] = []

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(asyncio.get_running_loop().time())
        writer.close()

    probe = await asyncio.start_server(count, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()  # the port is free again: nothing listens until the "pod" is up

    class KubeSpawner:
        start_timeout = 10
        user_options: ClassVar[dict[str, Any]] = {}
        image = ""

        async def start(self) -> str:
            return f"http://127.0.0.1:{port}"

        async def poll(self) -> int | None:
            return None

    config = types.SimpleNamespace(JupyterHub=types.SimpleNamespace())
    sys.modules["kubespawner"] = types.SimpleNamespace(KubeSpawner=KubeSpawner)  # type: ignore[assignment]
    try:
        exec(compile(code, "values.yaml:kiln-spawner", "exec"), {"c": config})  # noqa: S102 (the chart's own hub config, run as the hub runs it)
    finally:
        del sys.modules["kubespawner"]
    spawner = config.JupyterHub.spawner_class()
    starting = asyncio.create_task(spawner.start())
    await asyncio.sleep(0.3)
    assert not starting.done(), "returned before the server listened"
    server = await asyncio.start_server(count, "127.0.0.1", port)
    async with server:
        assert await asyncio.wait_for(starting, 5) == f"http://127.0.0.1:{port}"
        assert accepted, "it returned after connecting to the port"


def test_private_repository_credentials_reach_only_the_resolver_and_builder(helm: str, chart: Path) -> None:
    docs = render(helm, chart, sets=REQUIRED + ("privateRepos.existingSecret=forge-creds",))
    for name, deployment in by_kind(docs, "Deployment").items():
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
                if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "forge-creds"}
        if name in ("kiln-resolver", "kiln-builder"):
            assert {k: (r["key"], r["optional"]) for k, r in refs.items()} == {
                "KILN_GIT_CREDENTIALS": ("git-credentials", True), "KILN_GITHUB_APP": ("github-app", True)}, name
        else:
            assert refs == {}, f"{name} is given no repository credentials"
    without = render(helm, chart, sets=REQUIRED)
    assert "KILN_GIT_CREDENTIALS" not in env_of(by_kind(without, "Deployment")["kiln-resolver"])


def test_a_separate_push_side_gets_the_push_credential_and_the_builds_push(helm: str, chart: Path) -> None:
    """registry.pushUrl (a registry whose pulls are read-only at url, as deploy/k8s/infra.yaml's): the
    push step's credential is keyed by the push side, the builder sends pushes there, and both sides
    are plain HTTP when the registry is."""
    docs = render(helm, chart, sets=(*REQUIRED, "registry.url=http://10.0.0.5:30500", "registry.insecure=true",
                                     "registry.pushUrl=http://registry-push.infra:5001", "registry.username=pusher",
                                     "registry.password=push-secret", "builder.kubernetes.pushImage=crane.local/crane:1"))
    assert docker_config(by_kind(docs, "Secret")["kiln-push"], "config.json") == {
        "registry-push.infra:5001": ("pusher", "push-secret")}
    env = env_of(by_kind(docs, "Deployment")["kiln-builder"])
    assert env["KILN_BUILD_PUSH_REGISTRY"]["value"] == "registry-push.infra:5001"
    assert env["KILN_BUILD_PUSH_IMAGE"]["value"] == "crane.local/crane:1"
    assert json.loads(env["KILN_INSECURE_REGISTRIES"]["value"]) == ["10.0.0.5:30500", "registry-push.infra:5001"]


def test_build_pods_are_held_to_their_shape_by_an_admission_policy(helm: str, chart: Path) -> None:
    """The builder may create any pod in the build namespace; the API server's own policy (bound to
    that namespace only) names the two images and the build service account Kiln's pods use."""
    docs = render(helm, chart, sets=REQUIRED)
    policy = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicy")
    binding = next(d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"] and binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "binder-builds"}
    expressions = " ".join(v["expression"] for v in policy["spec"]["validations"])
    values = yaml.safe_load((CHART / "values.yaml").read_text())["builder"]["kubernetes"]
    assert f'"{values["image"]}"' in expressions and f'"{values["pushImage"]}"' in expressions
    assert '"kiln-build"' in expressions and "hostPath" not in expressions and "emptyDir" in expressions
    assert "kiln.build/stage" in expressions and "nodeName" in expressions
    assert "'memory' in c.resources.limits" in expressions and "'ephemeral-storage' in c.resources.limits" in expressions
