#!/usr/bin/env bash
# A single-node Kubernetes cluster in a network namespace of its own, for testing Kiln's chart.
#   cluster.sh up|down|status|kubeconfig
#
# The node is the network namespace of a small container ("kiln-k8s-node") on the Docker bridge
# network kiln-k8s that network.sh makes and fences like the build network: NAT out to the
# internet, nothing on the host reachable, the cloud metadata range dropped. Every part of the
# cluster (etcd, the API server, controller manager, scheduler, containerd, the kubelet,
# kube-proxy and its iptables rules, kube-router enforcing NetworkPolicies (the bridge plugin does
# not), the CNI bridge and the pods) runs inside that namespace, so
# the host's own iptables and network sysctls are not touched; the kubelet runs in a mount
# namespace where the global kernel sysctls it insists on setting are files of its own.
# The host reaches the API server at the node's address (KILN_K8S_NODE_IP:6443); `kubeconfig`
# prints the admin kubeconfig's path. State lives in .state/k8s; binaries come from build.sh.
set -euo pipefail
source "$(dirname "$0")/../local/lib.sh"
source "$(dirname "$0")/../local/kiln.env"
source "$(dirname "$0")/versions.sh"

BIN="$K8S_TOOLS/bin"
STATE="$KILN_STATE/k8s"
RUN="/run/kiln-k8s"
DATA="/var/lib/kiln-k8s"  # containerd's and the kubelet's roots (overlay mounts need a real filesystem)
NODE_CONTAINER=kiln-k8s-node
NODE_NAME=kiln-node
NODE_IP=$KILN_K8S_NODE_IP
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/16
API_SERVICE_IP=10.96.0.1
DNS_IP=10.96.0.10
REGISTRY_NODEPORT=30500  # the in-cluster registry (deploy/k8s/kiln.sh), as the node's containerd pulls from it
LOG="$KILN_LOGS"
# The cluster's processes, in the order they start (and stop in reverse).
DAEMONS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy kube-router)
export PATH="$BIN:$PATH"

node_pid() { docker inspect -f '{{.State.Pid}}' "$NODE_CONTAINER" 2>/dev/null | grep -v '^0$'; }
in_node() { nsenter --net="/proc/$(node_pid)/ns/net" -- "$@"; }
# A pid file outlives a reboot or a killed session, and its number may since name another process:
# it counts only while that process is still the command it was written for.
pid_of() {
  local f="$RUN/$1.pid" pid
  [[ -s $f ]] || return 1
  pid=$(cat "$f")
  tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q -- "$1" && echo "$pid"
}
gone() { local p; for p in "$@"; do kill -0 "$p" 2>/dev/null && return 1; done; return 0; }  # gone PID...: all ended
kubectl_admin() { "$BIN/kubectl" --kubeconfig "$STATE/admin.kubeconfig" "$@"; }

# ---- the node's network namespace ------------------------------------------------------------
start_node() {
  bash "$KILN_ROOT/deploy/local/network.sh" start >/dev/null
  if [[ -z $(node_pid) ]]; then
    docker rm -f "$NODE_CONTAINER" >/dev/null 2>&1 || true
    # Only its network namespace is used: the pause program, with no rights and nothing mounted.
    docker run -d --name "$NODE_CONTAINER" --network "$KILN_K8S_NETWORK" --ip "$NODE_IP" --restart unless-stopped \
      --cap-drop ALL --security-opt no-new-privileges --read-only --user 65534:65534 \
      --label org.kiln.stack=k8s kiln.local/pause:1 >/dev/null
    wait_for "the node container" 20 node_pid || die "the node container did not start" "docker logs $NODE_CONTAINER"
  fi
  # Every time, not only for a container made here: Docker's restart policy makes one without these.
  # Inside the node only: pods are routed through it, and bridged pod traffic passes its iptables.
  # Bridged traffic between pods passes the node's iptables too: kube-router's NetworkPolicy rules
  # see it (this namespace's own copy of the setting).
  in_node sh -c 'echo 1 >/proc/sys/net/ipv4/ip_forward; echo 1 >/proc/sys/net/ipv4/conf/all/route_localnet 2>/dev/null
                 echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables; true'
  in_node ip link set lo up
  # A Service address kube-proxy has not (or no longer) programmed must go nowhere, not out through
  # the default route to whatever has that address beyond the host.
  in_node ip route replace blackhole "$SERVICE_CIDR"
}

# end_strays: the cluster's processes still running in another network namespace than the node's (the
# node container was made anew: Docker restarted, or the host did) answer nobody; end them, to be
# started again in the node's.
end_strays() {
  local name pid node_ns stray=()
  node_ns=$(readlink "/proc/$(node_pid)/ns/net")
  # Docker's restart policy, too, makes the node anew: the pods' sandboxes then sit in the old one.
  [[ $(cat "$RUN/node-netns" 2>/dev/null) == "$node_ns" ]] || NEW_NODE=1
  mkdir -p "$RUN"; echo "$node_ns" >"$RUN/node-netns"
  for name in "${DAEMONS[@]}"; do
    pid=$(pid_of "$name" || true)
    if [[ -n $pid && $(readlink "/proc/$pid/ns/net" 2>/dev/null) != "$node_ns" ]]; then
      warn "$name runs in a network namespace the node no longer has: restarting it"
      kill "$pid" 2>/dev/null || true; stray+=("$pid")
    fi
  done
  ((${#stray[@]})) && { wait_for "the cluster's processes" 20 gone "${stray[@]}" || kill -9 "${stray[@]}" 2>/dev/null || true; }
  return 0
}

# put FILE: stdin into FILE, only if it differs (kube-proxy exits when its configuration file changes).
put() {
  local new; new=$(cat)
  [[ -f $1 && $(cat "$1") == "$new" ]] || printf '%s\n' "$new" >"$1"
}

# ---- certificates ----------------------------------------------------------------------------
cert() {  # cert NAME SUBJECT [SANS]: a key and a certificate signed by the cluster's CA
  local name=$1 subject=$2 sans=${3:-}
  [[ -s $STATE/pki/$name.crt ]] && return 0
  local ext="$STATE/pki/$name.ext"
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n' >"$ext"
  [[ -n $sans ]] && echo "subjectAltName=$sans" >>"$ext"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$STATE/pki/$name.key" -subj "$subject" -out "$STATE/pki/$name.csr" 2>/dev/null
  openssl x509 -req -in "$STATE/pki/$name.csr" -CA "$STATE/pki/ca.crt" -CAkey "$STATE/pki/ca.key" -CAcreateserial \
    -days 3650 -extfile "$ext" -out "$STATE/pki/$name.crt" 2>/dev/null
  rm -f "$STATE/pki/$name.csr" "$ext"
}

kubeconfig() {  # kubeconfig NAME SERVER: a kubeconfig for the certificate NAME
  local name=$1 server=$2
  put "$STATE/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kiln
  cluster: {certificate-authority: $STATE/pki/ca.crt, server: $server}
users:
- name: $name
  user: {client-certificate: $STATE/pki/$name.crt, client-key: $STATE/pki/$name.key}
contexts:
- name: kiln
  context: {cluster: kiln, user: $name}
current-context: kiln
EOF
}

make_pki() {
  mkdir -p "$STATE/pki"
  chmod 700 "$STATE" "$STATE/pki"
  if [[ ! -s $STATE/pki/ca.crt ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$STATE/pki/ca.key" -subj "/CN=kiln-k8s-ca" -days 3650 \
      -out "$STATE/pki/ca.crt" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  fi
  cert apiserver "/CN=kube-apiserver" \
    "IP:$NODE_IP,IP:$API_SERVICE_IP,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert admin "/O=system:masters/CN=kiln-admin"
  cert controller-manager "/CN=system:kube-controller-manager"
  cert scheduler "/CN=system:kube-scheduler"
  cert kube-proxy "/CN=system:kube-proxy"
  cert kube-router "/CN=kiln:kube-router"
  cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "IP:$NODE_IP,DNS:$NODE_NAME"
  cert apiserver-kubelet-client "/O=kiln:apiserver/CN=kube-apiserver-kubelet-client"
  [[ -s $STATE/pki/sa.key ]] || openssl genrsa -out "$STATE/pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$STATE/pki/sa.key" -pubout -out "$STATE/pki/sa.pub" 2>/dev/null
  for name in admin controller-manager scheduler kube-proxy kube-router kubelet; do
    kubeconfig "$name" "https://$NODE_IP:6443"
  done
}

# ---- configuration files -------------------------------------------------------------------
write_configs() {
  mkdir -p "$STATE/cni" "$STATE/sysctl" "$RUN" "$DATA"
  put "$STATE/cni/10-kiln.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "kiln-pods", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}
]}
EOF
  put "$STATE/containerd.toml" <<EOF
version = 2
root = "$DATA/containerd"
state = "$RUN/containerd"
[grpc]
  address = "$RUN/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "kiln.local/pause:1"
  restrict_oom_score_adj = true
  enable_unprivileged_ports = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni"
  # The in-cluster registry (deploy/k8s/infra.yaml), at its NodePort on the node's address: plain
  # HTTP, on a network only the cluster reaches.
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."$NODE_IP:$REGISTRY_NODEPORT"]
    endpoint = ["http://$NODE_IP:$REGISTRY_NODEPORT"]
EOF
  put "$STATE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $STATE/pki/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
clusterDomain: cluster.local
clusterDNS: [$DNS_IP]
containerRuntimeEndpoint: unix://$RUN/containerd.sock
tlsCertFile: $STATE/pki/kubelet.crt
tlsPrivateKeyFile: $STATE/pki/kubelet.key
resolvConf: /etc/resolv.conf
serializeImagePulls: false
# A test machine's disk is shared with much else: evict only when it is really full.
evictionHard: {memory.available: "100Mi", nodefs.available: "3%", imagefs.available: "3%"}
imageGCHighThresholdPercent: 97
imageGCLowThresholdPercent: 95
maxPods: 60
# Processes per pod: a fork bomb in a build or a user server exhausts its own pod, not the node.
podPidsLimit: 4096
EOF
  put "$STATE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $STATE/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: 10.244.0.0/16
# Leave the (global) conntrack table size alone.
conntrack: {maxPerCore: 0, min: 0}
EOF
  # The values the kubelet wants in these global sysctls, as files it may overwrite (see start_kubelet).
  echo 1 >"$STATE/sysctl/overcommit_memory"; echo 10 >"$STATE/sysctl/panic"; echo 1 >"$STATE/sysctl/panic_on_oops"
  echo 1 >"$STATE/sysctl/panic_on_oom_0"; echo 0 >"$STATE/sysctl/panic_on_oom"
}

# ---- processes -----------------------------------------------------------------------------
daemon() {  # daemon NAME COMMAND...: start COMMAND in the node's network namespace, once
  local name=$1; shift
  [[ -n $(pid_of "$name") ]] && return 0
  nohup nsenter --net="/proc/$(node_pid)/ns/net" -- "$@" >>"$LOG/k8s-$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
}

# stop_if_config_changed NAME CONFIG: NAME reads CONFIG once, so a running NAME whose CONFIG changed
# since it was started here is stopped (the pods keep running: their shims outlive both containerd
# and the kubelet), for the caller to start anew. Records CONFIG's hash for the next look.
stop_if_config_changed() {
  local name=$1 config_sha; config_sha=$(sha256sum <"$2" | cut -c1-64)
  [[ $(cat "$RUN/$name.sha" 2>/dev/null) == "$config_sha" ]] || stop_daemon "$name"
  echo "$config_sha" >"$RUN/$name.sha"
}

stop_daemon() {  # stop_daemon NAME: end NAME if it runs (hard after 20 s)
  local running; running=$(pid_of "$1" || true)
  [[ -n $running ]] || return 0
  kill "$running" 2>/dev/null || true
  wait_for "$1 to stop" 20 gone "$running" || kill -9 "$running" 2>/dev/null || true
}

# log_mark NAME: where NAME's log ends now, so what it writes from here on can be read alone.
log_mark() { echo $(($(wc -l 2>/dev/null <"$LOG/k8s-$1.log" || echo 0) + 1)); }

start_kubelet() {
  stop_if_config_changed kubelet "$STATE/kubelet.yaml"
  [[ -n $(pid_of kubelet) ]] && return 0
  # The kubelet mounts pods' volumes (secrets, tokens) under its root; containerd, in the host's
  # mount namespace, must see them: the root is a shared mount, as Docker's /var/lib/docker is.
  mkdir -p "$DATA/kubelet"
  if ! grep -q " $DATA/kubelet .*shared:" /proc/self/mountinfo; then
    mount --bind "$DATA/kubelet" "$DATA/kubelet"
    mount --make-rshared "$DATA/kubelet"
  fi
  # It exits at once if containerd's CRI is not yet initialized, which lags containerd answering by
  # as long as recovering the sandboxes it had takes (after a reboot, a race the kubelet could lose):
  # started again, for up to 150 s, until it serves its health check and still does a moment later.
  local deadline=$((SECONDS + 150))
  while :; do
    KUBELET_LOG_MARK=$(log_mark kubelet)
    launch_kubelet
    if wait_for "the kubelet" 60 kubelet_healthy_or_gone && kubelet_healthy && sleep 3 && kubelet_healthy; then
      return 0
    fi
    stop_daemon kubelet  # one that hangs unhealthy, so that two never run
    ((SECONDS < deadline)) || die "the kubelet did not start: $(kubelet_errors | tail -n 1)" "read $LOG/k8s-kubelet.log"
    warn "the kubelet exited ($(kubelet_errors | tail -n 1 | cut -c1-200)); starting it again"
    sleep 2
  done
}

kubelet_healthy() { in_node curl -sf --max-time 2 http://127.0.0.1:10248/healthz >/dev/null 2>&1; }
# The kubelet's errors since it was last started here (all of its log's, if it was not).
kubelet_errors() { tail -n "+${KUBELET_LOG_MARK:-1}" "$LOG/k8s-kubelet.log" 2>/dev/null | grep '^E' || true; }
kubelet_healthy_or_gone() { kubelet_healthy || [[ -z $(pid_of kubelet) ]]; }

launch_kubelet() {
  # A mount namespace of its own (the host's / and /proc are private mounts, so nothing below
  # leaves it): the kubelet's writes to these global sysctls land in files of ours.
  nohup nsenter --net="/proc/$(node_pid)/ns/net" -- unshare --mount --propagation unchanged -- sh -c "
    set -e  # the kubelet must never start writing the host's own settings
    mount --make-private /proc
    mount --bind '$STATE/sysctl/overcommit_memory' /proc/sys/vm/overcommit_memory
    mount --bind '$STATE/sysctl/panic' /proc/sys/kernel/panic
    mount --bind '$STATE/sysctl/panic_on_oops' /proc/sys/kernel/panic_on_oops
    mount --bind '$STATE/sysctl/panic_on_oom' /proc/sys/vm/panic_on_oom
    exec '$BIN/kubelet' --config '$STATE/kubelet.yaml' --kubeconfig '$STATE/kubelet.kubeconfig' \
      --hostname-override '$NODE_NAME' --node-ip '$NODE_IP' --root-dir '$DATA/kubelet' --v=1
  " >>"$LOG/k8s-kubelet.log" 2>&1 &
  echo $! >"$RUN/kubelet.pid"
}

api_ready() { kubectl_admin get --raw /readyz >/dev/null 2>&1; }

import_image() {  # import_image REF TAR: an image archive into the cluster's containerd, once
  ctr --address "$RUN/containerd.sock" -n k8s.io images ls -q 2>/dev/null | grep -qx "$1" && return 0
  ctr --address "$RUN/containerd.sock" -n k8s.io images import "$2" >/dev/null
}

# An image holding one static binary, for the pause container and CoreDNS (no base image needed):
# made in Docker (the node container runs the pause one) and saved for containerd to import.
binary_image() {  # binary_image REF BINARY ENTRY
  local ref=$1 binary=$2 entry=$3 dir
  [[ -s $STATE/images/$entry.tar ]] && docker image inspect "$ref" >/dev/null 2>&1 && return 0
  dir=$(mktemp -d)
  mkdir -p "$STATE/images" "$dir/root/etc"
  cp "$binary" "$dir/root/$entry"
  echo 'nobody:x:65534:65534::/:/bin/false' >"$dir/root/etc/passwd"
  tar -C "$dir/root" -cf "$dir/fs.tar" .
  docker import --change "ENTRYPOINT [\"/$entry\"]" "$dir/fs.tar" "$ref" >/dev/null
  docker save "$ref" -o "$STATE/images/$entry.tar"
  rm -rf "$dir"
}

coredns_manifest() {
  cat <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
        }
        forward . /etc/resolv.conf
        cache 30
        loop
        reload
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      containers:
      - name: coredns
        image: kiln.local/coredns:$COREDNS_VERSION
        imagePullPolicy: Never
        args: ["-conf", "/etc/coredns/Corefile", "-dns.port", "53"]
        volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
        ports: [{containerPort: 53, protocol: UDP, name: dns}, {containerPort: 53, protocol: TCP, name: dns-tcp}]
        securityContext:
          capabilities: {add: [NET_BIND_SERVICE], drop: [ALL]}
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
        readinessProbe: {httpGet: {path: /ready, port: 8181}, periodSeconds: 2}
        resources: {requests: {cpu: 20m, memory: 30Mi}, limits: {memory: 120Mi}}
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $DNS_IP
  selector: {k8s-app: kube-dns}
  ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]
EOF
}

# What kube-router's NetworkPolicy controller reads (it writes nothing to the API).
kube_router_rbac() {
  cat <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "kiln:kube-router"}
rules:
- apiGroups: [""]
  resources: [namespaces, pods, services, endpoints, nodes]
  verbs: [get, list, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "kiln:kube-router"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "kiln:kube-router"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "kiln:kube-router"}]
EOF
}

# What the node's conditions and the kubelet's last errors say: printed when it is not Ready, so a
# failure far away (CI) names its cause.
node_not_ready_why() {
  printf '\n  node conditions:\n'
  kubectl_admin get node "$NODE_NAME" --request-timeout=5s \
    -o jsonpath='{range .status.conditions[*]}    {.type}={.status} {.reason}: {.message}{"\n"}{end}' 2>&1 || true
  printf '  the kubelet'"'"'s last errors:\n'
  kubelet_errors | tail -n 8 | cut -c1-400 | sed 's/^/    /'
}

start_kube_router() {
  [[ -n $(pid_of kube-router) ]] && return 0
  kube_router_rbac | kubectl_admin apply -f - >/dev/null
  local mark; mark=$(log_mark kube-router)
  # NetworkPolicies only (no routing, no service proxy, no CNI of its own: the bridge plugin and
  # kube-proxy do those); no health or metrics port opened on the node.
  daemon kube-router "$BIN/kube-router" --kubeconfig "$STATE/kube-router.kubeconfig" --hostname-override "$NODE_NAME" \
    --run-firewall=true --run-router=false --run-service-proxy=false --enable-cni=false \
    --service-cluster-ip-range "$SERVICE_CIDR" --health-port 0 --metrics-port 0 --v=1
  # Started when its first full sync of the policies into iptables is logged (its chains outlive an
  # earlier kube-router, so they prove nothing), and still running.
  synced() { tail -n "+$mark" "$LOG/k8s-kube-router.log" | grep -q 'sync iptables took' && [[ -n $(pid_of kube-router) ]]; }
  wait_for "kube-router" 60 synced \
    || die "kube-router (NetworkPolicies) did not start: $(tail -n 1 "$LOG/k8s-kube-router.log")" "read $LOG/k8s-kube-router.log"
}

up() {
  local started=$SECONDS
  [[ -x $BIN/kube-apiserver && -x $BIN/etcd && -x $BIN/coredns && -x $BIN/pause && -x $BIN/kube-router ]] \
    || bash "$(dirname "$0")/build.sh"
  [[ $(id -u) == 0 ]] || die "the cluster needs root (namespaces, mounts, containerd)" "run it as root"
  command -v /usr/lib/cni/bridge >/dev/null || die "the CNI plugins are not installed" "KILN_WITH_K8S=1 deploy/local/install-system.sh"
  binary_image "kiln.local/pause:1" "$BIN/pause" pause
  binary_image "kiln.local/coredns:$COREDNS_VERSION" "$BIN/coredns" coredns
  # busybox (Debian's static build), for the cluster's tests: a shell, wget, nc, nslookup, httpd.
  [[ -x /bin/busybox ]] && binary_image "kiln.local/busybox:1" /bin/busybox busybox
  start_node
  end_strays
  make_pki
  write_configs
  daemon etcd "$BIN/etcd" --name kiln --data-dir "$STATE/etcd" --listen-client-urls http://127.0.0.1:2379 \
    --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 --log-level warn
  daemon kube-apiserver "$BIN/kube-apiserver" --etcd-servers http://127.0.0.1:2379 --advertise-address "$NODE_IP" \
    --bind-address "$NODE_IP" --secure-port 6443 --service-cluster-ip-range "$SERVICE_CIDR" \
    --client-ca-file "$STATE/pki/ca.crt" --tls-cert-file "$STATE/pki/apiserver.crt" --tls-private-key-file "$STATE/pki/apiserver.key" \
    --kubelet-client-certificate "$STATE/pki/apiserver-kubelet-client.crt" --kubelet-client-key "$STATE/pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$STATE/pki/ca.crt" \
    --service-account-key-file "$STATE/pki/sa.pub" --service-account-signing-key-file "$STATE/pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction --allow-privileged=true \
    --kubelet-preferred-address-types InternalIP --v=1
  wait_for "the API server" 120 api_ready || die "the API server did not become ready" "read $LOG/k8s-kube-apiserver.log"
  # The API server may call the kubelet (logs, exec) as a member of this group.
  kubectl_admin get clusterrolebinding kiln:apiserver-kubelet >/dev/null 2>&1 \
    || kubectl_admin create clusterrolebinding kiln:apiserver-kubelet --clusterrole system:kubelet-api-admin --group kiln:apiserver >/dev/null
  daemon kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --cluster-signing-cert-file "$STATE/pki/ca.crt" --cluster-signing-key-file "$STATE/pki/ca.key" --root-ca-file "$STATE/pki/ca.crt" \
    --service-account-private-key-file "$STATE/pki/sa.key" --use-service-account-credentials --leader-elect=false \
    --bind-address 127.0.0.1 --v=1
  daemon kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$STATE/scheduler.kubeconfig" \
    --authentication-kubeconfig "$STATE/scheduler.kubeconfig" --authorization-kubeconfig "$STATE/scheduler.kubeconfig" \
    --leader-elect=false --bind-address 127.0.0.1 --v=1
  stop_if_config_changed containerd "$STATE/containerd.toml"
  # A socket left by a containerd that was killed answers nothing: wait for the new one to answer.
  [[ -n $(pid_of containerd) ]] || rm -f "$RUN/containerd.sock" "$RUN/containerd.sock.ttrpc"
  daemon containerd containerd --config "$STATE/containerd.toml"
  wait_for "containerd" 30 ctr --address "$RUN/containerd.sock" version || die "containerd did not start" "read $LOG/k8s-containerd.log"
  import_image "kiln.local/pause:1" "$STATE/images/pause.tar"
  import_image "kiln.local/coredns:$COREDNS_VERSION" "$STATE/images/coredns.tar"
  [[ -s $STATE/images/busybox.tar ]] && import_image "kiln.local/busybox:1" "$STATE/images/busybox.tar"
  # The host's values of the sysctls the kubelet sets, as they were before it first ran (tests compare).
  [[ -s $STATE/host-sysctls ]] || for f in vm/overcommit_memory kernel/panic kernel/panic_on_oops vm/panic_on_oom; do
    echo "$f $(cat "/proc/sys/$f")"; done >"$STATE/host-sysctls"
  start_kubelet
  daemon kube-proxy "$BIN/kube-proxy" --config "$STATE/kube-proxy.yaml" --hostname-override "$NODE_NAME"
  # kube-router looks its node up once, at start, and exits if it is not there yet (on a new
  # cluster it would then enforce no NetworkPolicy at all): it starts once the node is registered.
  wait_for "the node" 120 kubectl_admin get node "$NODE_NAME" --request-timeout=5s \
    || die "the node did not register$(node_not_ready_why)" "read $LOG/k8s-kubelet.log"
  start_kube_router
  node_ready() { kubectl_admin get node "$NODE_NAME" --request-timeout=5s -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' | grep -qx True; }
  wait_for "the node" 180 node_ready || die "the node did not become Ready$(node_not_ready_why)" "read $LOG/k8s-kubelet.log"
  if [[ ${NEW_NODE:-0} == 1 ]]; then
    # Their sandboxes' network ended with the previous node: their controllers make them anew.
    kubectl_admin delete pods --all --all-namespaces --wait=false >/dev/null 2>&1 || true
  fi
  coredns_manifest | kubectl_admin apply -f - >/dev/null
  kubectl_admin -n kube-system rollout status deployment/coredns --timeout 120s >/dev/null \
    || die "CoreDNS did not start" "kubectl --kubeconfig $STATE/admin.kubeconfig -n kube-system describe pods"
  ok "Kubernetes $K8S_VERSION up in $((SECONDS - started))s at https://$NODE_IP:6443 (kubeconfig: $STATE/admin.kubeconfig)"
}

down() {
  local name pid pids=()
  local i
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    name=${DAEMONS[i]}
    pid=$(pid_of "$name" || true)
    [[ -n $pid ]] && { kill "$pid" 2>/dev/null || true; pids+=("$pid"); }
  done
  # The API server drains for a while once its etcd is gone: give each 20 s, then stop it hard.
  ((${#pids[@]})) && { wait_for "the cluster's processes" 20 gone "${pids[@]}" || kill -9 "${pids[@]}" 2>/dev/null || true; }
  # containerd leaves its shims and the pods' processes running on purpose: end them too (the
  # pods' processes are every process in the kubelet's cgroups).
  find /sys/fs/cgroup/pids/kubepods -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  pkill -9 -f "containerd-shim-runc-v2 -namespace k8s.io .*-address $RUN/containerd.sock" 2>/dev/null || true
  docker rm -f "$NODE_CONTAINER" >/dev/null 2>&1 || true  # the namespace, and everything in it, goes with it
  grep -E " $DATA(/| )" /proc/mounts | awk '{print $2}' | sort -r | xargs -r umount -l 2>/dev/null || true
  rm -f "$RUN"/*.pid
  ok "Kubernetes stopped (state kept in $STATE and $DATA; remove them for a new cluster)"
}

status() {
  local name
  for name in "${DAEMONS[@]}"; do
    if [[ -n $(pid_of "$name") ]]; then ok "$name running"; else warn "$name not running"; fi
  done
  api_ready && kubectl_admin get nodes
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  kubeconfig) echo "$STATE/admin.kubeconfig" ;;
  *) echo "usage: $0 up|down|status|kubeconfig" >&2; exit 2 ;;
esac
