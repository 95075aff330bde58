#!/usr/bin/env bash
# Prints the path of a helm binary, building it from its Go module first if there is none.
#   deploy/helm/helm.sh            -> $KILN_TOOLS/bin/helm (or the helm on PATH, if it is helm 3)
# KILN_TOOLS (default /opt/kiln-tools) is shared by every clone on the machine, like the apt
# packages, so a fresh clone does not build helm again. Needs Go >= 1.22 (the Go module proxy
# must be reachable the first time). Idempotent.
set -euo pipefail
source "$(dirname "$0")/../local/lib.sh"
HELM_VERSION=${KILN_HELM_VERSION:-v3.16.4}
BIN="${KILN_TOOLS:-/opt/kiln-tools}/bin"
if [[ -x $BIN/helm ]]; then echo "$BIN/helm"; exit 0; fi
if command -v helm >/dev/null && helm version --short 2>/dev/null | grep -q '^v3\.'; then command -v helm; exit 0; fi
GO=$(command -v go || echo /usr/local/go/bin/go)
[[ -x $GO ]] || die "helm is not installed and Go is not there to build it" "apt-get install golang (1.22 or newer), or put helm 3 on PATH"
mkdir -p "$BIN"
step "building helm $HELM_VERSION from its Go module (a few minutes, once)" >&2
home=${HOME:-/root}  # go needs a module cache and a build cache; CI may run with no HOME set
GOBIN="$BIN" GOFLAGS=-mod=mod GOPATH="${GOPATH:-$home/go}" GOCACHE="${GOCACHE:-$home/.cache/go-build}" "$GO" install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >"$KILN_LOGS/helm-build.log" 2>&1 \
  || { tail -n 20 "$KILN_LOGS/helm-build.log" >&2; die "building helm failed" "read $KILN_LOGS/helm-build.log"; }
echo "$BIN/helm"
