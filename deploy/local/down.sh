#!/usr/bin/env bash
# Stops everything `make up` started, services first. Data (Kafka log, registry, hub database) stays
# in .state/ for the next `make up`; `make clean` removes it.
set -uo pipefail
here="$(dirname "$0")"
source "$here/lib.sh"
"$here/sample.sh" stop
"$here/services.sh" stop
"$here/hub.sh" stop
# Servers the hub did not get to stop (a crash, a kill -9) would hold ports: remove Kiln's containers.
if docker info >/dev/null 2>&1; then
  ids=$(docker ps -aq --filter "name=^kiln-")
  [[ -n $ids ]] && docker rm -f $ids >/dev/null && ok "removed leftover server containers"
fi
"$here/network.sh" stop
"$here/registry.sh" stop
"$here/kafka.sh" stop
"$here/docker.sh" stop
ok "kiln is down"
