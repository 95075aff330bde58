#!/usr/bin/env bash
# Installs the Debian packages Kiln's local stack needs. Idempotent: a package already
# present is not fetched again, and apt's lists are refreshed only when something is missing.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

PACKAGES=(docker.io docker-registry debootstrap apache2-utils git python3-venv)
[[ "${KILN_WITH_BROWSER:-0}" == 1 ]] && PACKAGES+=(chromium chromium-driver)
# The single-node Kubernetes of deploy/k8s: its runtime (containerd and runc come with docker.io),
# pod networking. Its parts are built with the machine's Go (1.24 or newer; Debian bookworm's
# golang package is 1.19, too old, so it is not installed here: deploy/k8s/build.sh checks).
if [[ "${KILN_WITH_K8S:-0}" == 1 ]]; then
  PACKAGES+=(containernetworking-plugins conntrack iptables ipset openssl busybox-static)
fi
# Kafka runs on Java 17 and is fetched with Maven; configurable-http-proxy comes from npm.
# Machines that already have them (from any source) keep theirs.
command -v java >/dev/null || PACKAGES+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || PACKAGES+=(maven)
command -v npm >/dev/null || PACKAGES+=(npm)
command -v curl >/dev/null || PACKAGES+=(curl)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  ok "system packages present"
  exit 0
fi
[[ $(id -u) == 0 ]] || die "installing ${missing[*]} needs root" "run 'sudo make up' once, or install them yourself: apt-get install ${missing[*]}"
step "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# docker.io's postinst tries to start the daemon through systemd, which is absent here; that is harmless.
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
ok "installed ${missing[*]}"
