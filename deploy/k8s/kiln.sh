#!/usr/bin/env bash
# Kiln installed with its Helm chart on the test cluster (cluster.sh), as an operator would:
#   kiln.sh install|uninstall|status|url
#
# No registry can be pulled from here, so every image is built on this machine and imported into
# the cluster's containerd: Kiln's five service images (deploy/local/images.sh, not pushed), and
# what the chart expects to exist already, made from Debian and PyPI: a Kafka broker (the chart's
# "existing cluster" path), a registry and JupyterHub with KubeSpawner (zero-to-jupyterhub's chart
# cannot be fetched; deploy/k8s/hub stands in for it under its names, applying the chart's own
# jupyterhub values). Then `helm upgrade --install` with deploy/k8s/values.yaml, waiting for every
# Deployment. `url` prints the gateway's address (a NodePort on the node's address).
set -euo pipefail
source "$(dirname "$0")/../local/lib.sh"
source "$(dirname "$0")/../local/kiln.env"
source "$(dirname "$0")/versions.sh"

HERE="$KILN_ROOT/deploy/k8s"
STATE="$KILN_STATE/k8s"
NODE_IP=$KILN_K8S_NODE_IP
NAMESPACE=${KILN_K8S_NAMESPACE:-kiln}
RELEASE=kiln
REGISTRY_NODEPORT=30500  # as cluster.sh tells the node's containerd
PROXY_NODEPORT=30800
REGISTRY_PUSH=registry-push.kiln-infra.svc.cluster.local:5001  # infra.yaml: the registry's push side
export PATH="$K8S_TOOLS/bin:$PATH"
export DOCKER_BUILDKIT=0

kubectl_admin() { kubectl --kubeconfig "$STATE/admin.kubeconfig" "$@"; }
ctr_k8s() { ctr --address /run/kiln-k8s/containerd.sock -n k8s.io "$@"; }

# build_image NAME DIR [FILE[=NAME_IN_CONTEXT]...]: kiln.local/NAME:<hash of its inputs>, built once
# (host network: apt, PyPI and npm), from DIR's Dockerfile and the FILEs copied beside it. Prints
# the reference.
build_image() {
  local name=$1 dir=$2; shift 2
  local hash ref ctx item sources=()
  for item in "$@"; do sources+=("${item%%=*}"); done
  hash=$( (cat "$dir"/*; for item in "${sources[@]}"; do find "$item" -type f -print0 | sort -z | xargs -0 cat; done) \
          | sha256sum | cut -c1-12)
  ref="kiln.local/$name:$hash"
  if ! docker image inspect "$ref" >/dev/null 2>&1; then
    step "building the $name image for the cluster" >&2
    ctx=$(mktemp -d)
    cp -r "$dir"/. "$ctx/"
    for item in "$@"; do
      if [[ $item == *=* ]]; then cp "${item%%=*}" "$ctx/${item#*=}"; else cp -r "$item" "$ctx/"; fi
    done
    docker build -q --network host -t "$ref" "$ctx" >"$KILN_LOGS/k8s-image-$name.log" 2>&1 \
      || { rm -rf "$ctx"; tail -n 20 "$KILN_LOGS/k8s-image-$name.log" >&2; die "building the $name image failed" "read $KILN_LOGS/k8s-image-$name.log"; }
    rm -rf "$ctx"
  fi
  echo "$ref"
}

# into_cluster REF: the Docker image REF into the cluster's containerd, again only when it changed.
into_cluster() {
  local ref=$1 id mark
  id=$(docker image inspect -f '{{.Id}}' "$ref")
  mark="$STATE/imported/$(echo "$ref" | tr '/:' '__')"
  [[ -f $mark && $(cat "$mark") == "$id" ]] && ctr_k8s images ls -q | grep -qxF "$ref" && return 0
  docker save "$ref" | ctr_k8s images import - >/dev/null
  mkdir -p "$STATE/imported"; echo "$id" >"$mark"
}

images() {
  # The base image is made through the local registry (base-image.sh pushes it there, and the
  # tests read .state/base-image), so that registry runs even when `make up` never has.
  if [[ ! -s $KILN_STATE/base-image ]] || ! docker image inspect kiln/debian-rootfs:bookworm >/dev/null 2>&1; then
    bash "$KILN_ROOT/deploy/local/registry.sh" start && bash "$KILN_ROOT/deploy/local/base-image.sh"
  fi
  KILN_IMAGES_PUSH=0 bash "$KILN_ROOT/deploy/local/images.sh" >&2
  local tag s libs
  # One tag for the five, from what they hold (not the commit): a change not yet committed still
  # gives new pods on the next install.
  tag=k8s-$(for s in gateway resolver builder launcher analytics; do docker image inspect -f '{{.Id}}' "127.0.0.1:5000/kiln/$s:latest"; done \
            | sha256sum | cut -c1-12)
  for s in gateway resolver builder launcher analytics; do
    docker tag "127.0.0.1:5000/kiln/$s:latest" "127.0.0.1:5000/kiln/$s:$tag"
    into_cluster "127.0.0.1:5000/kiln/$s:$tag"
  done
  libs=$(bash "$KILN_ROOT/deploy/local/kafka.sh" jars | tail -n 1)
  KAFKA_IMAGE=$(build_image kafka "$KILN_ROOT/deploy/images/kafka" "$libs" "$KILN_ROOT/deploy/kafka/log4j2.properties")
  REGISTRY_IMAGE=$(build_image registry "$KILN_ROOT/deploy/images/registry")
  HUB_IMAGE=$(build_image hub "$KILN_ROOT/deploy/images/hub" \
    "${KILN_EXTRA_CA_CERTS:-/etc/ssl/certs/ca-certificates.crt}=extra-ca-certificates.crt")
  # The build pods' two images (kube_executor.py), from the binaries build.sh made.
  BUILDKIT_IMAGE=$(build_image buildkit "$KILN_ROOT/deploy/images/buildkit" \
    "$K8S_TOOLS/bin/buildkitd" "$K8S_TOOLS/bin/buildctl" "$K8S_TOOLS/bin/rootlesskit")
  CRANE_IMAGE=$(build_image crane "$KILN_ROOT/deploy/images/crane" "$K8S_TOOLS/bin/crane")
  for s in "$KAFKA_IMAGE" "$REGISTRY_IMAGE" "$HUB_IMAGE" "$BUILDKIT_IMAGE" "$CRANE_IMAGE"; do into_cluster "$s"; done
  SERVICE_TAG=$tag
  ok "images in the cluster: Kiln's five at $tag, $KAFKA_IMAGE, $REGISTRY_IMAGE, $HUB_IMAGE, $BUILDKIT_IMAGE, $CRANE_IMAGE"
}

fill() {  # fill FILE: FILE with its @NAME@ placeholders filled in
  sed -e "s|@KAFKA_IMAGE@|$KAFKA_IMAGE|g" -e "s|@REGISTRY_IMAGE@|$REGISTRY_IMAGE|g" -e "s|@HUB_IMAGE@|$HUB_IMAGE|g" \
      -e "s|@REGISTRY_NODEPORT@|$REGISTRY_NODEPORT|g" -e "s|@PROXY_NODEPORT@|$PROXY_NODEPORT|g" \
      -e "s|@HTPASSWD_SHA@|${HTPASSWD_SHA:-}|g" -e "s|@NAMESPACE@|$NAMESPACE|g" -e "s|@RELEASE@|$RELEASE|g" -e "s|@CONFIG_SHA@|${CONFIG_SHA:-}|g" \
      -e "s|@IMAGE_PREFIX@|$NODE_IP:$REGISTRY_NODEPORT/kiln/binder-|g" "$1"
}

infra() {
  # The registry's push account: made once, kept with the cluster's state; only build pods' push
  # step (through the chart's Secret) and the tests that seed the registry use it.
  [[ -s $STATE/registry-push-password ]] || (umask 077; openssl rand -hex 24 | tr -d '\n' >"$STATE/registry-push-password")
  kubectl_admin create namespace kiln-infra --dry-run=client -o yaml | kubectl_admin apply -f - >/dev/null
  kubectl_admin -n kiln-infra create secret generic registry-htpasswd --dry-run=client -o yaml \
    --from-literal=htpasswd="$(htpasswd -niB kiln-push <"$STATE/registry-push-password" | head -n 1)" \
    | kubectl_admin apply -f - >/dev/null
  HTPASSWD_SHA=$(sha256sum <"$STATE/registry-push-password" | cut -c1-16)
  fill "$HERE/infra.yaml" | kubectl_admin apply -f - >/dev/null
  kubectl_admin -n kiln-infra rollout status deployment/kafka deployment/registry --timeout 180s >/dev/null \
    || die "Kafka or the registry did not start in the cluster" "kubectl --kubeconfig $STATE/admin.kubeconfig -n kiln-infra describe pods"
  ok "Kafka and the registry running in namespace kiln-infra (registry at $NODE_IP:$REGISTRY_NODEPORT)"
}

hub() {
  kubectl_admin get namespace "$NAMESPACE" >/dev/null 2>&1 || kubectl_admin create namespace "$NAMESPACE" >/dev/null
  # The launcher's hub token: made once, kept with the cluster's state (z2jh keeps it in this Secret too).
  # No newline: the Secret's value is the token exactly (the launcher sends it in a header).
  [[ -s $STATE/hub-launcher-token ]] || (umask 077; openssl rand -hex 32 | tr -d '\n' >"$STATE/hub-launcher-token")
  kubectl_admin -n "$NAMESPACE" create secret generic hub --dry-run=client -o yaml \
    --from-file=hub.services.kiln-launcher.apiToken=<(tr -d '\n' <"$STATE/hub-launcher-token") \
    | kubectl_admin apply -f - >/dev/null
  local values="$STATE/chart-values.yaml"
  cp "$KILN_ROOT/deploy/helm/kiln/values.yaml" "$values"
  kubectl_admin -n "$NAMESPACE" create configmap hub-config --dry-run=client -o yaml \
    --from-file=jupyterhub_config.py="$HERE/hub/jupyterhub_config.py" --from-file=values.yaml="$values" \
    | kubectl_admin apply -f - >/dev/null
  CONFIG_SHA=$(cat "$HERE/hub/jupyterhub_config.py" "$values" | sha256sum | cut -c1-16)
  fill "$HERE/hub/hub.yaml" | kubectl_admin apply -f - >/dev/null
  kubectl_admin -n "$NAMESPACE" rollout status deployment/hub --timeout 180s >/dev/null \
    || die "JupyterHub did not start in the cluster" "kubectl --kubeconfig $STATE/admin.kubeconfig -n $NAMESPACE logs deployment/hub"
  ok "JupyterHub with KubeSpawner running (proxy at http://$NODE_IP:$PROXY_NODEPORT)"
}

chart() {
  local helm copy placeholder
  helm=$(bash "$KILN_ROOT/deploy/helm/helm.sh" | tail -n 1)
  # zero-to-jupyterhub cannot be fetched: a placeholder with its name and version satisfies Helm's
  # dependency check; jupyterhub.enabled=false in values.yaml leaves it unrendered (hub() stands in).
  copy="$STATE/chart/kiln"
  rm -rf "$STATE/chart"; mkdir -p "$STATE/chart"; cp -r "$KILN_ROOT/deploy/helm/kiln" "$copy"
  placeholder="$copy/charts/jupyterhub"; mkdir -p "$placeholder"
  printf 'apiVersion: v2\nname: jupyterhub\nversion: "%s"\n' \
    "$(sed -n '/name: jupyterhub/,/version:/s/.*version: *"\{0,1\}\([^"]*\)"\{0,1\}/\1/p' "$copy/Chart.yaml" | head -n 1)" >"$placeholder/Chart.yaml"
  "$helm" --kubeconfig "$STATE/admin.kubeconfig" upgrade --install "$RELEASE" "$copy" -n "$NAMESPACE" \
    -f "$HERE/values.yaml" --set image.tag="$SERVICE_TAG" \
    --set registry.url="http://$NODE_IP:$REGISTRY_NODEPORT" --set registry.image_prefix="$NODE_IP:$REGISTRY_NODEPORT/kiln/binder-" \
    --set registry.pushUrl="http://$REGISTRY_PUSH" --set registry.username=kiln-push \
    --set-file registry.password="$STATE/registry-push-password" \
    --set builder.kubernetes.image="$BUILDKIT_IMAGE" --set builder.kubernetes.pushImage="$CRANE_IMAGE" \
    --set hub.publicUrl="http://$NODE_IP:$PROXY_NODEPORT" \
    --wait --timeout 6m >"$KILN_LOGS/k8s-helm.log" 2>&1 \
    || { tail -n 20 "$KILN_LOGS/k8s-helm.log" >&2; die "helm install did not complete" "kubectl --kubeconfig $STATE/admin.kubeconfig -n $NAMESPACE get pods"; }
  ok "Kiln installed: $(url)"
}

url() {
  local port
  port=$(kubectl_admin -n "$NAMESPACE" get service "$RELEASE-gateway" -o jsonpath='{.spec.ports[0].nodePort}')
  echo "http://$NODE_IP:$port/binder/"
}

install() {
  local started=$SECONDS
  bash "$HERE/cluster.sh" up
  images
  infra
  hub
  chart
  ok "Kiln on Kubernetes in $((SECONDS - started))s"
}

uninstall() {
  local helm; helm=$(bash "$KILN_ROOT/deploy/helm/helm.sh" | tail -n 1)
  "$helm" --kubeconfig "$STATE/admin.kubeconfig" uninstall "$RELEASE" -n "$NAMESPACE" --wait >/dev/null 2>&1 || true
  kubectl_admin delete namespace "$NAMESPACE" kiln-infra "$NAMESPACE-builds" --ignore-not-found --wait=true --timeout 120s >/dev/null
  ok "Kiln removed from the cluster"
}

case ${1:-} in
  install) install ;;
  uninstall) uninstall ;;
  status) kubectl_admin get pods -A -o wide ;;
  url) url ;;
  *) echo "usage: $0 install|uninstall|status|url" >&2; exit 2 ;;
esac
