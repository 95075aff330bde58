"""The single-node cluster itself (deploy/k8s/cluster.sh): a real Kubernetes, fenced off from the host.

Pods run Debian's static busybox (imported into the cluster's containerd by cluster.sh: no
registry can be pulled from here). The outside world is touched only through DNS names of the
package indexes, which the cluster must reach through NAT.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Cluster

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BUSYBOX = "kiln.local/busybox:1"


def pod(name: str, namespace: str, command: str, labels: str = "") -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}, labels: {{{labels}}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["/busybox", "sh", "-c", {command!r}]
    securityContext: {{runAsUser: 65534, allowPrivilegeEscalation: false}}
    volumeMounts: [{{name: tmp, mountPath: /tmp}}]
  volumes: [{{name: tmp, emptyDir: {{}}}}]
"""


@pytest.fixture(scope="module")
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"kiln-test-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    manifest = pod("web", name, "/busybox mkdir -p /tmp/www && echo hello-from-web >/tmp/www/index.html && "
                                "exec /busybox httpd -f -p 8080 -h /tmp/www", "app: web") + """
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: NS}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
""".replace("NS", name) + "---" + pod("client", name, "exec /busybox sleep 3600")
    cluster.kubectl("apply", "-f", "-", stdin=manifest)
    cluster.kubectl("-n", name, "wait", "--for=condition=Ready", "pod/web", "pod/client", "--timeout=120s")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


def in_client(cluster: Cluster, namespace: str, command: str, check: bool = True) -> str:
    return cluster.kubectl("-n", namespace, "exec", "client", "--", "/busybox", "sh", "-c", command, check=check)


def test_the_node_is_ready_at_the_built_version(cluster: Cluster) -> None:
    node = cluster.get("node", "kiln-node")
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True"
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.34.4"
    assert node["status"]["addresses"][0]["address"] == cluster.node_ip
    assert '"gitVersion": "v1.34.4"' in cluster.kubectl("version", "-o", "json"), "the API server knows its version"


def test_services_by_name_and_the_package_indexes_through_nat(cluster: Cluster, namespace: str) -> None:
    # Names through busybox's own resolver (its static build's getaddrinfo cannot load glibc's NSS).
    service_ip = lookup(cluster, namespace, f"web.{namespace}.svc.cluster.local")
    assert service_ip == cluster.get("service", "-n", namespace, "web")["spec"]["clusterIP"], "CoreDNS names the Service"
    page, deadline = "", time.monotonic() + 30
    while not page and time.monotonic() < deadline:  # kube-proxy programs a new Service within seconds
        page = in_client(cluster, namespace, f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | /busybox nc -w 3 {service_ip} 80")
    assert page.endswith("hello-from-web\n"), "kube-proxy routes the ClusterIP to the pod"
    assert reachable(cluster, namespace, lookup(cluster, namespace, "pypi.org"), 443, timeout=10)


def reachable(cluster: Cluster, namespace: str, address: str, port: int, timeout: int = 3) -> bool:
    """Whether the client pod's TCP connection to ``address:port`` is accepted (busybox nc: no -z here)."""
    out = in_client(cluster, namespace, f"/busybox nc -w {timeout} {address} {port} </dev/null; echo rc=$?")
    return out.strip().endswith("rc=0")


def lookup(cluster: Cluster, namespace: str, name: str) -> str:
    answer = in_client(cluster, namespace, f"/busybox nslookup -type=a {name}")
    addresses = [line.split()[-1] for line in answer.split(name, 1)[-1].splitlines() if line.startswith("Address")]
    assert addresses, answer
    return addresses[0]


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A TCP listener on all of the host's addresses: what a pod must not reach."""
    server = socket.create_server(("0.0.0.0", 0))
    server.settimeout(0.5)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    server.close()


def test_pods_reach_nothing_on_the_host_nor_kilns_other_networks(cluster: Cluster, namespace: str,
                                                                 host_listener: int) -> None:
    gateway = cluster.node_ip.rsplit(".", 1)[0] + ".1"
    with socket.create_connection((gateway, host_listener), timeout=5):
        pass  # control: the listener answers on the address the pods would use
    web = cluster.get("pod", "-n", namespace, "web")["status"]["podIP"]
    assert reachable(cluster, namespace, web, 8080), "control: the probe sees an open port"
    for address, port in ((gateway, host_listener), (cluster.node_ip, host_listener), ("172.29.0.1", 8081),
                          ("172.29.1.1", 790)):
        assert not reachable(cluster, namespace, address, port), f"a pod reached {address}:{port}"


def test_network_policies_are_enforced(cluster: Cluster, namespace: str) -> None:
    """kube-router (cluster.sh) enforces NetworkPolicies, which the bridge plugin alone ignores: a
    policy admitting nobody to the web pod closes it to the client, and removing it opens it again."""
    web = cluster.get("pod", "-n", namespace, "web")["status"]["podIP"]
    assert reachable(cluster, namespace, web, 8080), "control: open before any policy"
    policy = f"""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: web-closed, namespace: {namespace}}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  policyTypes: [Ingress]
"""
    cluster.kubectl("apply", "-f", "-", stdin=policy)
    try:
        deadline = time.monotonic() + 60  # kube-router syncs a new policy within seconds
        while reachable(cluster, namespace, web, 8080, timeout=2):
            assert time.monotonic() < deadline, "the policy was never enforced"
    finally:
        cluster.kubectl("-n", namespace, "delete", "networkpolicy", "web-closed")
    deadline = time.monotonic() + 60
    while not reachable(cluster, namespace, web, 8080):
        assert time.monotonic() < deadline, "the pod stayed closed after its policy went"


def test_service_addresses_never_leave_the_node(cluster: Cluster) -> None:
    """An address in the Service range that kube-proxy has not programmed (a new or deleted Service)
    would otherwise follow the default route out, to whatever has it beyond the host: checked on
    the node's routing table, without sending anything."""
    pid = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", "kiln-k8s-node"], capture_output=True, text=True,
                         check=True).stdout.strip()
    routes = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "route"], capture_output=True, text=True,
                            check=True).stdout
    assert "blackhole 10.96.0.0/16" in [line.strip() for line in routes.splitlines()], routes


def test_the_hosts_iptables_and_kernel_settings_are_untouched(cluster: Cluster) -> None:
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    assert "KUBE-" not in rules and "cni0" not in rules and "CNI-" not in rules, "the cluster's rules are in its namespace"
    recorded = (ROOT / ".state" / "k8s" / "host-sysctls").read_text().split("\n")
    for line in filter(None, recorded):
        name, value = line.split()
        assert Path("/proc/sys", name).read_text().strip() == value, f"{name} changed on the host"
    kubelet = int((Path("/run/kiln-k8s/kubelet.pid")).read_text())
    mounts = Path(f"/proc/{kubelet}/mountinfo").read_text()
    assert "/proc/sys/vm/overcommit_memory" in mounts, "the kubelet writes its sysctls to files of its own"


def test_each_pod_is_held_to_a_process_count(cluster: Cluster, namespace: str) -> None:
    """The kubelet's podPidsLimit (4096) on a pod's cgroup, read on the host: a fork bomb in a build or
    a user server runs out of processes in its own pod, not the node's."""
    pod = cluster.get("pod", "-n", namespace, "client")
    uid = pod["metadata"]["uid"]
    found = [p for root in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup")
             for p in Path(root).glob(f"kubepods*/**/pod{uid}/pids.max")]
    assert found, f"no cgroup of pod {uid}"
    assert {p.read_text().strip() for p in found} == {"4096"}
