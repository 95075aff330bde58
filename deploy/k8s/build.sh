#!/usr/bin/env bash
# Builds, once per machine, what a single-node Kubernetes needs and no download site offers here:
# the Kubernetes components, etcd and CoreDNS from the Go module proxy, and a pause program.
#   deploy/k8s/build.sh   -> binaries in $KILN_TOOLS/k8s/<version>/bin
# KILN_TOOLS (default /opt/kiln-tools) is shared by every clone, as for helm. containerd, runc and
# the CNI plugins come from Debian (install-system.sh's k8s set). Idempotent: a binary present is
# not built again; Go's module and build caches make a rebuild after an interrupted run short.
set -euo pipefail
source "$(dirname "$0")/../local/lib.sh"
source "$(dirname "$0")/versions.sh"

OUT="$K8S_TOOLS/bin"
mkdir -p "$OUT"
GO=$(command -v go || echo /usr/local/go/bin/go)
[[ -x $GO ]] || die "Go is not installed" "apt-get install golang (1.24 or newer)"
home=${HOME:-/root}
export GOFLAGS=-mod=mod GOPATH="${GOPATH:-$home/go}" GOCACHE="${GOCACHE:-$home/.cache/go-build}" CGO_ENABLED=0
LOG="$KILN_LOGS/k8s-build.log"

# A module of our own that requires Kubernetes: its go.mod points the staging modules at ./staging,
# which a module download does not have, so each is replaced by its published twin (v0.<minor>.<patch>).
wrapper() {
  local dir="$K8S_TOOLS/src/kubernetes"
  [[ -s $dir/go.sum ]] && { echo "$dir"; return; }
  mkdir -p "$dir"
  local gomod
  gomod=$(cd "$dir" && "$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [[ -s $gomod ]] || die "could not download k8s.io/kubernetes $K8S_VERSION" "check that proxy.golang.org is reachable"
  local staging="v0${K8S_VERSION#v1}"
  {
    echo "module kiln.local/k8s-build"
    echo
    echo "go 1.24"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    # sample-* modules are not published and no command needs them.
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$gomod" | grep -v '/sample-' \
      | while read -r mod; do echo "replace $mod => $mod $staging"; done
  } >"$dir/go.mod"
  echo 'package main' >"$dir/tools.go"
  echo "$dir"
}

build_k8s() {
  local missing=()
  for cmd in "${K8S_COMMANDS[@]}"; do [[ -x $OUT/$cmd ]] || missing+=("$cmd"); done
  ((${#missing[@]})) || return 0
  local dir; dir=$(wrapper)
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local flags=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
  for cmd in "${missing[@]}"; do
    step "building $cmd $K8S_VERSION from the Go module proxy (minutes, once per machine)"
    (cd "$dir" && "$GO" build -trimpath -ldflags "-s -w$flags" -o "$OUT/$cmd" "k8s.io/kubernetes/cmd/$cmd") >>"$LOG" 2>&1 \
      || { tail -n 20 "$LOG" >&2; die "building $cmd failed" "read $LOG"; }
  done
}

# A module with a main of a few lines around a library entry point (etcd), or a plain go install.
build_small() {
  local name=$1 module=$2 version=$3 main=$4
  [[ -x $OUT/$name ]] && return 0
  step "building $name $version (once per machine)"
  local dir="$K8S_TOOLS/src/$name"
  mkdir -p "$dir"
  printf 'module kiln.local/%s\n\ngo 1.24\n' "$name" >"$dir/go.mod"
  [[ -n $module ]] && printf '\nrequire %s %s\n' "$module" "$version" >>"$dir/go.mod"
  printf '%s\n' "$main" >"$dir/main.go"
  (cd "$dir" && "$GO" mod tidy && "$GO" build -trimpath -ldflags "-s -w" -o "$OUT/$name" .) >>"$LOG" 2>&1 \
    || { tail -n 20 "$LOG" >&2; die "building $name failed" "read $LOG"; }
}

build_k8s
build_small etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" \
  'package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }'
if [[ ! -x $OUT/coredns ]]; then
  step "building coredns $COREDNS_VERSION (once per machine)"
  GOBIN="$OUT" "$GO" install "github.com/coredns/coredns@$COREDNS_VERSION" >>"$LOG" 2>&1 \
    || { tail -n 20 "$LOG" >&2; die "building coredns failed" "read $LOG"; }
fi
# The pod sandbox's "pause": sleeps until told to stop, reaps nothing (the runtime does).
build_small pause "" "" \
  'package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGINT, syscall.SIGTERM)
	<-c
}'
ok "Kubernetes $K8S_VERSION binaries in $OUT"
