#!/usr/bin/env bash
# Builds Kiln's base image for user environments without Docker Hub and pushes it to the registry.
#   1. debootstrap a minimal Debian root from the machine's Debian mirror, `docker import` it;
#   2. build deploy/images/base on it (legacy builder, host networking);
#   3. push it as $REGISTRY/kiln/base:<hash of its inputs>; write that name to .state/base-image.
# A second run with the same inputs finds the image in the registry and does nothing.
# Settings: KILN_REGISTRY_HOST (127.0.0.1:5000), KILN_EXTRA_CA_CERTS (a PEM bundle trusted in images;
# default: this machine's bundle), KILN_DEBIAN_MIRROR (default: the mirror apt uses here).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
REGISTRY=${KILN_REGISTRY_HOST:-127.0.0.1:5000}
SUITE=bookworm
ROOTFS_IMAGE=kiln/debian-rootfs:$SUITE
SRC="$KILN_ROOT/deploy/images/base"
CA=${KILN_EXTRA_CA_CERTS:-/etc/ssl/certs/ca-certificates.crt}
export DOCKER_BUILDKIT=0  # Debian's engine has no BuildKit/buildx

[[ -r $CA ]] || die "the extra CA bundle $CA cannot be read" "set KILN_EXTRA_CA_CERTS to a PEM file, or to /dev/null if you need none"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer" "run deploy/local/docker.sh start (make up does)"

inputs_hash=$(cat "$SRC/Dockerfile" "$SRC/requirements.txt" "$SRC/kiln-environment.sh" "$CA" | sha256sum | cut -c1-12)
IMAGE="$REGISTRY/kiln/base:$SUITE-$inputs_hash"

# Asked through the docker client, which logs in to a registry that wants credentials (DOCKER_CONFIG).
if docker manifest inspect --insecure "$IMAGE" >/dev/null 2>&1; then
  docker image inspect "$IMAGE" >/dev/null 2>&1 || docker pull -q "$IMAGE" >/dev/null
  echo "$IMAGE" >"$KILN_STATE/base-image"
  ok "base image $IMAGE present"
  exit 0
fi

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  # Built before (an earlier checkout on this machine) but not in this registry: push, do not rebuild.
  docker push -q "$IMAGE" >>"$KILN_LOGS/base-image.log" 2>&1 || die "pushing $IMAGE failed (log: $KILN_LOGS/base-image.log)" "check the registry: deploy/local/registry.sh status"
  echo "$IMAGE" >"$KILN_STATE/base-image"
  ok "base image $IMAGE pushed"
  exit 0
fi

mirror() {
  if [[ -n ${KILN_DEBIAN_MIRROR:-} ]]; then echo "$KILN_DEBIAN_MIRROR"; return; fi
  local m
  m=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1)
  [[ -n $m ]] || m=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -n1)
  echo "${m:-http://deb.debian.org/debian}"
}

if ! docker image inspect "$ROOTFS_IMAGE" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || die "debootstrap is not installed" "apt-get install debootstrap (make up does this when run as root)"
  root="$KILN_STATE/rootfs/$SUITE"
  rm -rf "$root"; mkdir -p "$root"
  step "debootstrap $SUITE from $(mirror) (about a minute)"
  debootstrap --variant=minbase "$SUITE" "$root" "$(mirror)" >"$KILN_LOGS/debootstrap.log" 2>&1 \
    || die "debootstrap failed (log: $KILN_LOGS/debootstrap.log)" "check that the Debian mirror is reachable, or set KILN_DEBIAN_MIRROR"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import - "$ROOTFS_IMAGE" >/dev/null
  rm -rf "$root"
  ok "imported $ROOTFS_IMAGE"
fi

ctx=$(mktemp -d); trap 'rm -rf "$ctx"' EXIT
cp "$SRC/Dockerfile" "$SRC/requirements.txt" "$SRC/kiln-environment.sh" "$ctx/"
cp "$CA" "$ctx/extra-ca-certificates.crt"
step "building $IMAGE (a few minutes the first time)"
docker build -q --network host --build-arg ROOTFS="$ROOTFS_IMAGE" -t "$IMAGE" -t kiln/base:latest "$ctx" >"$KILN_LOGS/base-image.log" 2>&1 \
  || { tail -n 30 "$KILN_LOGS/base-image.log" >&2; die "building the base image failed (log: $KILN_LOGS/base-image.log)" "read the log above"; }
docker push -q "$IMAGE" >>"$KILN_LOGS/base-image.log" 2>&1 || die "pushing $IMAGE failed (log: $KILN_LOGS/base-image.log)" "check the registry: deploy/local/registry.sh status"
echo "$IMAGE" >"$KILN_STATE/base-image"
ok "base image $IMAGE built and pushed"
