#!/usr/bin/env bash
# Builds Kiln's base images for user environments without Docker Hub and pushes them to the registry,
# one per Debian suite, so that runtime.txt can choose a Python (bookworm: 3.11, trixie: 3.13):
#   1. debootstrap a minimal Debian root from the machine's Debian mirror, `docker import` it;
#   2. build deploy/images/base on it (legacy builder, host networking);
#   3. push it as $REGISTRY/kiln/base:<suite>-<hash of its inputs>.
# The first suite's image is the default (.state/base-image); .state/base-images lists each image with
# its Python version, for the builder. A second run with the same inputs finds the images in the
# registry and does nothing.
# Settings: KILN_BASE_SUITES ("bookworm trixie"; the first is the default), KILN_REGISTRY_HOST
# (127.0.0.1:5000), KILN_EXTRA_CA_CERTS (a PEM bundle trusted in images; default: this machine's
# bundle), KILN_DEBIAN_MIRROR (default: the mirror apt uses here).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
REGISTRY=${KILN_REGISTRY_HOST:-127.0.0.1:5000}
SUITES=${KILN_BASE_SUITES:-bookworm trixie}
SRC="$KILN_ROOT/deploy/images/base"
# The build context: every file the image is made from (its name's hash covers them all).
FILES=(Dockerfile requirements.txt conda-requirements.txt kiln-environment.sh kiln_handover.py kiln_handover.json
       jupyter_server_config.py)
CA=${KILN_EXTRA_CA_CERTS:-/etc/ssl/certs/ca-certificates.crt}
export DOCKER_BUILDKIT=0  # Debian's engine has no BuildKit/buildx

[[ -r $CA ]] || die "the extra CA bundle $CA cannot be read" "set KILN_EXTRA_CA_CERTS to a PEM file, or to /dev/null if you need none"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer" "run deploy/local/docker.sh start (make up does)"
for suite in $SUITES; do
  [[ $suite =~ ^[a-z]+$ ]] || die "KILN_BASE_SUITES names '$suite'" "use Debian suite names such as bookworm or trixie"
done

mirror() {
  if [[ -n ${KILN_DEBIAN_MIRROR:-} ]]; then echo "$KILN_DEBIAN_MIRROR"; return; fi
  local m
  m=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1)
  [[ -n $m ]] || m=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -n1)
  echo "${m:-http://deb.debian.org/debian}"
}

# rootfs SUITE: a minimal Debian root file system as the image kiln/debian-rootfs:SUITE.
rootfs() {
  local suite=$1 image=kiln/debian-rootfs:$1
  docker image inspect "$image" >/dev/null 2>&1 && return
  command -v debootstrap >/dev/null || die "debootstrap is not installed" "apt-get install debootstrap (make up does this when run as root)"
  local root="$KILN_STATE/rootfs/$suite"
  rm -rf "$root"; mkdir -p "$root"
  step "debootstrap $suite from $(mirror) (about a minute)"
  debootstrap --variant=minbase "$suite" "$root" "$(mirror)" >"$KILN_LOGS/debootstrap-$suite.log" 2>&1 \
    || die "debootstrap $suite failed (log: $KILN_LOGS/debootstrap-$suite.log)" "check that the Debian mirror is reachable and has $suite, or set KILN_DEBIAN_MIRROR"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import - "$image" >/dev/null
  rm -rf "$root"
  ok "imported $image"
}

# base SUITE: build (or find) the base image of SUITE; prints its name.
base() {
  local suite=$1 hash image log="$KILN_LOGS/base-image-$1.log"
  hash=$(cd "$SRC" && cat "${FILES[@]}" "$CA" | sha256sum | cut -c1-12)
  image="$REGISTRY/kiln/base:$suite-$hash"
  # Asked through the docker client, which logs in to a registry that wants credentials (DOCKER_CONFIG).
  if docker manifest inspect --insecure "$image" >/dev/null 2>&1; then
    docker image inspect "$image" >/dev/null 2>&1 || docker pull -q "$image" >/dev/null
    ok "base image $image present" >&2
  elif docker image inspect "$image" >/dev/null 2>&1; then
    docker push -q "$image" >>"$log" 2>&1 || die "pushing $image failed (log: $log)" "check the registry: deploy/local/registry.sh status"
    ok "base image $image pushed" >&2
  else
    rootfs "$suite" >&2
    local ctx; ctx=$(mktemp -d)
    (cd "$SRC" && cp "${FILES[@]}" "$ctx/")
    cp "$CA" "$ctx/extra-ca-certificates.crt"
    step "building $image (a few minutes the first time)" >&2
    docker build -q --network host --build-arg ROOTFS="kiln/debian-rootfs:$suite" -t "$image" "$ctx" >"$log" 2>&1 \
      || { rm -rf "$ctx"; tail -n 30 "$log" >&2; die "building the base image failed (log: $log)" "read the log above"; }
    rm -rf "$ctx"
    docker push -q "$image" >>"$log" 2>&1 || die "pushing $image failed (log: $log)" "check the registry: deploy/local/registry.sh status"
    ok "base image $image built and pushed" >&2
  fi
  echo "$image"
}

listing=""
first=""
for suite in $SUITES; do
  image=$(base "$suite")
  python=$(docker run --rm --network none --entrypoint python3 "$image" -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
    || die "the base image $image does not run python3" "see $KILN_LOGS/base-image-$suite.log"
  [[ $python =~ ^[0-9]+\.[0-9]+$ ]] || die "the base image $image reports Python '$python'" "see $KILN_LOGS/base-image-$suite.log"
  [[ $listing != *"$python "* ]] || die "two suites in KILN_BASE_SUITES carry Python $python" "name one suite per Python version"
  [[ -n $first ]] || { first=$image; docker tag "$image" kiln/base:latest; }
  listing+="$python $image"$'\n'
done
echo "$first" >"$KILN_STATE/base-image"
printf '%s' "$listing" >"$KILN_STATE/base-images"
