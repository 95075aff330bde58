#!/usr/bin/env bash
# Builds the container image of each Kiln service and pushes it to the registry:
#   $KILN_REGISTRY_HOST/kiln/<service>:<git commit>  (and :latest)
# on the shared runtime image deploy/images/python (rebuilt only when its inputs change).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/kiln.env"
export DOCKER_BUILDKIT=0
REGISTRY=${KILN_REGISTRY_HOST:-127.0.0.1:5000}
CA=${KILN_EXTRA_CA_CERTS:-/etc/ssl/certs/ca-certificates.crt}
SRC="$KILN_ROOT/deploy/images/python"
docker image inspect kiln/debian-rootfs:bookworm >/dev/null 2>&1 || "$KILN_ROOT/deploy/local/base-image.sh"
runtime="kiln/python:$(cat "$SRC/Dockerfile" "$SRC/requirements.txt" "$CA" | sha256sum | cut -c1-12)"
if ! docker image inspect "$runtime" >/dev/null 2>&1; then
  step "building the Python runtime image $runtime"
  ctx=$(mktemp -d); trap 'rm -rf "$ctx"' EXIT
  cp "$SRC/Dockerfile" "$SRC/requirements.txt" "$ctx/"; cp "$CA" "$ctx/extra-ca-certificates.crt"
  docker build -q --network host -t "$runtime" -t kiln/python:latest "$ctx" >"$KILN_LOGS/images.log" 2>&1 \
    || { tail -n 20 "$KILN_LOGS/images.log" >&2; die "building the Python runtime image failed" "read $KILN_LOGS/images.log"; }
fi
tag=$(git -C "$KILN_ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo dev)
for s in ${*:-gateway resolver builder launcher analytics}; do
  image="$REGISTRY/kiln/$s"
  # An image whose sources have not changed is not built again: `make up` stays quick.
  src=$(cd "$KILN_ROOT" && find schemas lib/kilnbus "services/$s" deploy/images/service/Dockerfile -type f \
        ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-12)
  if docker image inspect "$image:src-$src-${runtime##*:}" >/dev/null 2>&1; then
    docker tag "$image:src-$src-${runtime##*:}" "$image:latest"
    docker tag "$image:src-$src-${runtime##*:}" "$image:$tag"; ok "$image up to date"; continue
  fi
  run_as=kiln; [[ $s == builder ]] && run_as=root
  docker build -q --network host -f "$KILN_ROOT/deploy/images/service/Dockerfile" --build-arg PYTHON_BASE="$runtime" \
    --build-arg SERVICE="$s" --build-arg RUN_AS="$run_as" \
    -t "$image:$tag" -t "$image:latest" -t "$image:src-$src-${runtime##*:}" "$KILN_ROOT" >>"$KILN_LOGS/images.log" 2>&1 \
    || { tail -n 20 "$KILN_LOGS/images.log" >&2; die "building the $s image failed" "read $KILN_LOGS/images.log"; }
  # KILN_IMAGES_PUSH=0: built only (deploy/k8s imports them into its cluster; no registry needed).
  [[ ${KILN_IMAGES_PUSH:-1} == 0 ]] || { docker push -q "$image:$tag" >/dev/null && docker push -q "$image:latest" >/dev/null; }
  ok "$image:$tag"
done
