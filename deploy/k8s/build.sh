#!/usr/bin/env bash
# Builds, once per machine, what a single-node Kubernetes needs and no download site offers here:
# the Kubernetes components, etcd, CoreDNS and kube-router from the Go module proxy, a pause
# program, and what the build pods' images hold (BuildKit, RootlessKit, crane: kiln.sh images).
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
[[ -x $GO ]] || die "Go is not installed" "install Go 1.24 or newer (Debian bookworm's golang package is 1.19, too old)"
# Kubernetes 1.34's modules need Go 1.24; an older toolchain would fail twenty minutes in.
go_minor=$("$GO" env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
[[ $go_minor =~ ^[0-9]+$ ]] && (( go_minor >= 24 )) \
  || die "Go 1.24 or newer is needed, $GO is $("$GO" env GOVERSION)" "install a newer Go and put it first on PATH"
home=${HOME:-/root}
export GOFLAGS=-mod=mod GOPATH="${GOPATH:-$home/go}" GOCACHE="${GOCACHE:-$home/.cache/go-build}" CGO_ENABLED=0
LOG="$KILN_LOGS/k8s-build.log"

failed() { tail -n 20 "$LOG" >&2; die "building $1 failed" "read $LOG"; }

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
      || failed "$cmd"
  done
}

# build_small NAME MODULE VERSION MAIN [DEPENDENCY...]: a module with a main of a few lines around
# a library entry point (etcd), each DEPENDENCY first raised to its newest release.
build_small() {
  local name=$1 module=$2 version=$3 main=$4; shift 4
  [[ -x $OUT/$name ]] && return 0
  step "building $name $version (once per machine)"
  local dir="$K8S_TOOLS/src/$name"
  mkdir -p "$dir"
  printf 'module kiln.local/%s\n\ngo 1.24\n' "$name" >"$dir/go.mod"
  [[ -n $module ]] && printf '\nrequire %s %s\n' "$module" "$version" >>"$dir/go.mod"
  printf '%s\n' "$main" >"$dir/main.go"
  (cd "$dir" && for dep in "$@"; do "$GO" get "$dep@latest" || exit; done \
     && "$GO" mod tidy && "$GO" build -trimpath -ldflags "-s -w" -o "$OUT/$name" .) >>"$LOG" 2>&1 || failed "$name"
}

# go_install NAME PACKAGE VERSION: a command whose module builds as published.
go_install() {
  local name=$1 pkg=$2 version=$3
  [[ -x $OUT/$name ]] && return 0
  step "building $name $version (once per machine)"
  GOBIN="$OUT" "$GO" install "$pkg@$version" >>"$LOG" 2>&1 || failed "$name"
}

# buildctl and buildkitd. `go install ...@version` refuses a module whose go.mod has exclude
# directives, as BuildKit's has: a module of our own requires it and repeats them (comments left out).
build_buildkit() {
  [[ -x $OUT/buildctl && -x $OUT/buildkitd ]] && return 0
  local dir="$K8S_TOOLS/src/buildkit" gomod cmd
  mkdir -p "$dir"
  gomod=$(cd "$dir" && "$GO" mod download -json "github.com/moby/buildkit@$BUILDKIT_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [[ -s $gomod ]] || die "could not download github.com/moby/buildkit $BUILDKIT_VERSION" "check that proxy.golang.org is reachable"
  {
    printf 'module kiln.local/buildkit\n\n%s\n\nrequire github.com/moby/buildkit %s\n\n' "$(grep -m 1 '^go ' "$gomod")" "$BUILDKIT_VERSION"
    sed -n -e '/^exclude (/,/^)/p' -e '/^exclude [^(]/p' "$gomod" | grep -v '^[[:space:]]*//'
  } >"$dir/go.mod"
  for cmd in buildctl buildkitd; do
    [[ -x $OUT/$cmd ]] && continue
    step "building $cmd $BUILDKIT_VERSION (minutes, once per machine)"
    (cd "$dir" && "$GO" build -trimpath -ldflags "-s -w -X github.com/moby/buildkit/version.Version=$BUILDKIT_VERSION" \
      -o "$OUT/$cmd" "github.com/moby/buildkit/cmd/$cmd") >>"$LOG" 2>&1 || failed "$cmd"
  done
}

build_k8s
build_small etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" \
  'package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }'
go_install coredns github.com/coredns/coredns "$COREDNS_VERSION"
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
# NetworkPolicies on the node (cluster.sh runs it as a firewall only). v2.1.0 is the one release
# the module proxy serves here, and flaws are reported against it and the early-2024 releases it
# requires, so the dependencies with published fixes are raised to their newest releases (x/net,
# x/crypto, gRPC, protobuf, netlink, Docker's client, oauth2); with v2.1.0 it still builds and
# runs. Its version, for --version and its start-up notes, comes from the build information.
build_small kube-router github.com/cloudnativelabs/kube-router/v2 "$KUBE_ROUTER_VERSION" \
  'package main

import (
	"flag"
	"fmt"
	"os"
	"runtime/debug"

	"github.com/cloudnativelabs/kube-router/v2/pkg/cmd"
	"github.com/cloudnativelabs/kube-router/v2/pkg/options"
	"github.com/cloudnativelabs/kube-router/v2/pkg/version"
	"github.com/spf13/pflag"
	"k8s.io/klog/v2"
)

func main() {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path == "github.com/cloudnativelabs/kube-router/v2" {
				version.Version = dep.Version
			}
		}
	}
	klog.InitFlags(nil)
	config := options.NewKubeRouterConfig()
	config.AddFlags(pflag.CommandLine)
	pflag.Parse()
	// klog reads its settings from the standard flag set; --v is kube-router'"'"'s own flag.
	_ = flag.Set("logtostderr", "true")
	_ = flag.Set("v", config.VLevel)
	switch {
	case config.HelpRequested:
		pflag.Usage()
		return
	case config.Version:
		version.PrintVersion(false)
		return
	case config.CleanupConfig:
		cmd.CleanupConfigAndExit()
	}
	router, err := cmd.NewKubeRouterDefault(config)
	if err == nil {
		err = router.Run()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kube-router:", err)
		os.Exit(1)
	}
}' \
  golang.org/x/net golang.org/x/crypto google.golang.org/grpc google.golang.org/protobuf \
  github.com/vishvananda/netlink github.com/docker/docker golang.org/x/oauth2
build_buildkit
go_install rootlesskit github.com/rootless-containers/rootlesskit/v2/cmd/rootlesskit "$ROOTLESSKIT_VERSION"
go_install crane github.com/google/go-containerregistry/cmd/crane "$CRANE_VERSION"
ok "Kubernetes $K8S_VERSION binaries, kube-router, BuildKit, RootlessKit and crane in $OUT"
