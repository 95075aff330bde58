#!/usr/bin/env bash
# Starts a Docker engine (Debian's docker.io) if none answers. Kiln runs every build and container
# with host networking, so the engine needs no bridge and no iptables rules.
#   docker.sh start|stop|status
set -euo pipefail
source "$(dirname "$0")/lib.sh"
PIDFILE="$KILN_STATE/dockerd.pid"

start() {
  command -v docker >/dev/null || die "the docker client is not installed" "apt-get install docker.io (make up does this when run as root)"
  if docker info >/dev/null 2>&1; then ok "docker engine answering"; return; fi
  command -v dockerd >/dev/null || die "no Docker engine (dockerd) is installed or running" "apt-get install docker.io, or start your own engine and set DOCKER_HOST"
  [[ -n ${DOCKER_HOST:-} ]] && die "DOCKER_HOST=$DOCKER_HOST does not answer" "start that engine, or unset DOCKER_HOST to let make up start a local one"
  [[ $(id -u) == 0 ]] || die "starting dockerd needs root" "start the Docker engine yourself (systemctl start docker) or run make up as root"
  step "starting the Docker engine"
  setsid nohup dockerd --bridge=none --iptables=false --ip6tables=false \
    --host unix:///var/run/docker.sock >"$KILN_LOGS/dockerd.log" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  wait_for "docker" 60 docker info || { tail -n 20 "$KILN_LOGS/dockerd.log" >&2; die "the Docker engine did not start (log: $KILN_LOGS/dockerd.log)" "read the log above"; }
  ok "docker engine started"
}

stop() {
  # Only an engine Kiln started is stopped; someone else's is left alone.
  pid_alive "$PIDFILE" || { rm -f "$PIDFILE"; return; }
  local pid; pid=$(cat "$PIDFILE")
  kill -TERM "$pid"; wait_for "dockerd exit" 30 bash -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
  rm -f "$PIDFILE"; ok "docker engine stopped"
}

status() {
  if docker info >/dev/null 2>&1; then echo "docker     running   ${DOCKER_HOST:-unix:///var/run/docker.sock}"; else echo "docker     stopped"; fi
}

case "${1:-}" in start) start ;; stop) stop ;; status) status ;; *) echo "usage: $0 start|stop|status" >&2; exit 2 ;; esac
