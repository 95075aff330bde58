#!/usr/bin/env bash
# The networks that builds and user servers run in: Docker bridges of their own with outbound NAT,
# and firewall rules so that nothing they run can reach the host (Kafka, the registry, the hub's and
# the proxy's APIs on 127.0.0.1, or anything else listening on the machine), each other, or the
# cloud metadata address. Servers (kiln-users) may reach one thing on the host: the hub's API on
# that bridge's gateway address, which jupyterhub-singleuser needs (tokens, OAuth, activity).
# Builds (kiln-builds) reach nothing on the host but the package mirror ports on their gateway
# address (KILN_BUILD_MIRROR_PORTS: a local conda channel, CRAN or PyPI mirror; 790 by default, a
# privileged port, so only root can listen there, and nothing of Kiln does).
#   network.sh start|stop|status|rules
# Settings (defaults in kiln.env): KILN_USER_NETWORK (kiln-users), KILN_USER_SUBNET (172.29.0.0/24;
# its first address, KILN_USER_GATEWAY, is the host's side), KILN_BUILD_NETWORK (kiln-builds),
# KILN_BUILD_SUBNET (172.29.1.0/24), KILN_HUB_API_PORT (8081), KILN_USER_BLOCKED_NETWORKS (space
# separated CIDRs neither may reach, besides the host itself; default 169.254.0.0/16, the link-local
# range of cloud metadata services; add your cloud's internal ranges).
#
# The engine runs with --iptables=false, so Docker makes no rules of its own: these chains are all
# there is. `rules` prints them without applying anything (check them before an install).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/kiln.env"
BLOCKED=${KILN_USER_BLOCKED_NETWORKS:-169.254.0.0/16}
# Ports of Kiln's own parts, never a build's mirror port.
KILN_OWN_PORTS="${KILN_KAFKA_PORT:-9092} 9093 ${KILN_REGISTRY_PORT:-5000} 5001 $KILN_HUB_API_PORT ${KILN_HUB_PORT:-8000} \
${KILN_PROXY_API_PORT:-8001} ${KILN_GATEWAY_PORT:-8585} ${KILN_ANALYTICS_PORT:-8590} 8765 9101 9102 9103"
# name subnet bridge chain-suffix allowed-host-port (- for none)
NETWORKS=(
  "$KILN_USER_NETWORK $KILN_USER_SUBNET kiln-br0 USERS $KILN_HUB_API_PORT"
  "$KILN_BUILD_NETWORK $KILN_BUILD_SUBNET kiln-br1 BUILDS $KILN_BUILD_MIRROR_PORTS"
  "$KILN_K8S_NETWORK $KILN_K8S_SUBNET kiln-br2 K8S -"
)

first_address() { local base=${1%/*}; echo "${base%.*}.$(( ${base##*.} + 1 ))"; }

# rules: the iptables commands, one per line, in the order they are applied. Our own chains are
# flushed and refilled, so applying them twice gives the same rules.
rules() {
  local entry name subnet bridge tag port net other other_subnet p
  for entry in "${NETWORKS[@]}"; do
    read -r name subnet bridge tag port <<<"$entry"
    echo "-N KILN-$tag-IN"
    echo "-N KILN-$tag-FWD"
    echo "-F KILN-$tag-IN"
    echo "-F KILN-$tag-FWD"
    echo "-A KILN-$tag-IN -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
    for p in ${port//,/ }; do
      [[ $p == - ]] && continue
      echo "-A KILN-$tag-IN -p tcp -d $(first_address "$subnet") --dport $p -j ACCEPT"
    done
    echo "-A KILN-$tag-IN -j DROP"
    echo "-A KILN-$tag-FWD -i $bridge -o $bridge -j DROP"
    # Nor to the other network: a build must not reach users' servers (their apps may want no token).
    for other in "${NETWORKS[@]}"; do
      read -r _ other_subnet _ _ _ <<<"$other"
      [[ $other_subnet != "$subnet" ]] && echo "-A KILN-$tag-FWD -i $bridge -d $other_subnet -j DROP"
    done
    for net in $BLOCKED; do echo "-A KILN-$tag-FWD -i $bridge -d $net -j DROP"; done
    echo "-A KILN-$tag-FWD -i $bridge -j ACCEPT"
    echo "-A KILN-$tag-FWD -o $bridge -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
    echo "-A KILN-$tag-FWD -o $bridge -j DROP"
    echo "-I INPUT -i $bridge -j KILN-$tag-IN"
    echo "-I FORWARD -i $bridge -j KILN-$tag-FWD"
    echo "-I FORWARD -o $bridge -j KILN-$tag-FWD"
    echo "-t nat -A POSTROUTING -s $subnet ! -o $bridge -j MASQUERADE"
  done
}

# check_ports: the ports a network may reach on its gateway, checked before any rule is made (a
# rule list cut short by a bad value would flush the chains and leave them without their DROP).
check_ports() {
  local entry name subnet bridge tag port p
  for entry in "${NETWORKS[@]}"; do
    read -r name subnet bridge tag port <<<"$entry"
    [[ $port == - ]] && continue
    for p in ${port//,/ }; do
      [[ $p =~ ^[0-9]{1,5}$ ]] && (( p >= 1 && p <= 65535 )) \
        || die "the port list '$port' of $name is not ports (1-65535) separated by commas" "fix KILN_BUILD_MIRROR_PORTS or KILN_HUB_API_PORT"
      if [[ $tag == BUILDS ]] && [[ " $KILN_OWN_PORTS " == *" $p "* ]]; then
        die "KILN_BUILD_MIRROR_PORTS names $p, a port of Kiln's own parts" "builds may reach a package mirror only: choose another port"
      fi
    done
  done
}

apply_rules() {
  command -v iptables >/dev/null || die "iptables is not installed; it isolates builds and servers from the host" "apt-get install iptables"
  check_ports
  local line args all
  all=$(rules) || die "the firewall rules could not be made" "see the message above"
  [[ $all == *"-A KILN-BUILDS-IN -j DROP"* && $all == *"-A KILN-USERS-IN -j DROP"* ]] || die "the firewall rules are incomplete" "report this: network.sh rules prints them"
  while read -r line; do
    read -ra args <<<"$line"
    case ${args[0]} in
      -N) iptables -n -L "${args[1]}" >/dev/null 2>&1 || iptables "${args[@]}" ;;
      -I) iptables -C "${args[@]:1}" 2>/dev/null || iptables "${args[@]}" ;;  # a jump into our chains, once
      -t) iptables -t "${args[1]}" -C "${args[@]:3}" 2>/dev/null || iptables "${args[@]}" ;;
      *) iptables "${args[@]}" ;;
    esac
  done <<<"$all"
}

make_network() {  # make_network NAME SUBNET BRIDGE
  local name=$1 subnet=$2 bridge=$3 have
  if ! docker network inspect "$name" >/dev/null 2>&1; then
    step "creating the network $name ($subnet)"
    docker network create --driver bridge --subnet "$subnet" --gateway "$(first_address "$subnet")" \
      -o com.docker.network.bridge.name="$bridge" -o com.docker.network.bridge.enable_ip_masquerade=false \
      -o com.docker.network.bridge.enable_icc=false --label org.kiln.stack=local "$name" >/dev/null \
      || die "docker could not create the network $name ($subnet)" "another network may use that range: set KILN_USER_SUBNET / KILN_BUILD_SUBNET"
  fi
  have=$(docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}}{{end}}' "$name")
  [[ $have == "$subnet" ]] || die "the network $name has the subnet $have, not $subnet" "docker network rm $name (with no containers on it), then make up"
  # The engine makes the bridge, with the gateway address, with the network (and again at each
  # start); the hub binds the users' one.
  wait_for "bridge $bridge" 10 ip addr show "$bridge" || die "the bridge $bridge of $name did not come up" "see $KILN_LOGS/dockerd.log"
}

start() {
  docker info >/dev/null 2>&1 || die "the Docker engine does not answer; the networks are made in it" "run deploy/local/docker.sh start (make up does)"
  command -v iptables >/dev/null || die "iptables is not installed; it isolates builds and servers from the host" "apt-get install iptables"
  local entry name subnet bridge tag port
  for entry in "${NETWORKS[@]}"; do
    read -r name subnet bridge tag port <<<"$entry"
    make_network "$name" "$subnet" "$bridge"
    # The networks are IPv4 only and the rules are iptables ones: the host keeps no IPv6 address on
    # the bridges, so nothing it ever listens on over IPv6 is reachable from them. (The engine turns
    # IPv6 off inside the containers of such networks already.)
    sysctl -qw "net.ipv6.conf.$bridge.disable_ipv6=1" 2>/dev/null || warn "could not turn IPv6 off on $bridge"
  done
  apply_rules
  ok "networks $KILN_USER_NETWORK, $KILN_BUILD_NETWORK and $KILN_K8S_NETWORK: servers, builds and the test cluster isolated from the host"
}

stop() {
  # The rules go; the networks stay in the engine for the next start.
  local entry name subnet bridge tag port
  for entry in "${NETWORKS[@]}"; do
    read -r name subnet bridge tag port <<<"$entry"
    iptables -D INPUT -i "$bridge" -j "KILN-$tag-IN" 2>/dev/null || true
    iptables -D FORWARD -i "$bridge" -j "KILN-$tag-FWD" 2>/dev/null || true
    iptables -D FORWARD -o "$bridge" -j "KILN-$tag-FWD" 2>/dev/null || true
    iptables -t nat -D POSTROUTING -s "$subnet" ! -o "$bridge" -j MASQUERADE 2>/dev/null || true
    for chain in "KILN-$tag-IN" "KILN-$tag-FWD"; do iptables -F "$chain" 2>/dev/null && iptables -X "$chain" 2>/dev/null || true; done
  done
}

status() {
  if docker network inspect "$KILN_USER_NETWORK" >/dev/null 2>&1 && docker network inspect "$KILN_BUILD_NETWORK" >/dev/null 2>&1 \
      && iptables -C INPUT -i kiln-br0 -j KILN-USERS-IN 2>/dev/null && iptables -C INPUT -i kiln-br1 -j KILN-BUILDS-IN 2>/dev/null \
      && iptables -C KILN-USERS-IN -j DROP 2>/dev/null && iptables -C KILN-BUILDS-IN -j DROP 2>/dev/null; then
    echo "network    isolated  $KILN_USER_NETWORK $KILN_USER_SUBNET (hub API at $KILN_USER_GATEWAY:$KILN_HUB_API_PORT), $KILN_BUILD_NETWORK $KILN_BUILD_SUBNET"
  else echo "network    missing   $KILN_USER_NETWORK $KILN_USER_SUBNET, $KILN_BUILD_NETWORK $KILN_BUILD_SUBNET"; fi
}

case "${1:-}" in
  start) start ;; stop) stop ;; status) status ;; rules) check_ports; rules ;;
  *) echo "usage: $0 start|stop|status|rules" >&2; exit 2 ;;
esac
