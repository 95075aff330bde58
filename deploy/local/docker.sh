#!/usr/bin/env bash
# Starts a Docker engine (Debian's docker.io) if none answers, and the cgroup that bounds builds.
# Builds and servers run on the user network network.sh makes, whose firewall rules are Kiln's own,
# so the engine makes no bridge and no iptables rules of its own. Every container it starts gets
# no-new-privileges (build steps too, which the build API cannot configure one by one).
#   docker.sh start|stop|status
# Settings: KILN_BUILD_CGROUP (kiln-builds), KILN_BUILD_PIDS_LIMIT (4096: processes and threads all
# running builds may have together; a fork bomb in one build stops there, not at the machine's limit).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
PIDFILE="$KILN_STATE/dockerd.pid"
FLAGS=(--bridge=none --iptables=false --ip6tables=false --no-new-privileges --host unix:///var/run/docker.sock)
CGROUP=${KILN_BUILD_CGROUP:-kiln-builds}
PIDS_LIMIT=${KILN_BUILD_PIDS_LIMIT:-4096}

# build_cgroup: the parent cgroup of every build step's container (the builder passes it to the build
# API), with the process limit set. cgroup v1 (one hierarchy per controller) and v2 both work.
build_cgroup() {
  [[ $(id -u) == 0 ]] || { warn "not root: builds get no shared process limit (cgroup $CGROUP)"; return; }
  if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
    mkdir -p "/sys/fs/cgroup/$CGROUP"
    echo "$PIDS_LIMIT" >"/sys/fs/cgroup/$CGROUP/pids.max"
  else
    local ctl
    for ctl in pids memory cpu cpuacct blkio devices freezer cpuset; do
      [[ -d /sys/fs/cgroup/$ctl ]] && mkdir -p "/sys/fs/cgroup/$ctl/$CGROUP"
    done
    # cpuset needs its parent's cpus and mems copied before a child can join it.
    if [[ -d /sys/fs/cgroup/cpuset/$CGROUP ]]; then
      cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$CGROUP/cpuset.cpus"
      cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$CGROUP/cpuset.mems"
    fi
    echo "$PIDS_LIMIT" >"/sys/fs/cgroup/pids/$CGROUP/pids.max"
  fi
  ok "builds share at most $PIDS_LIMIT processes (cgroup $CGROUP)"
}

start() {
  command -v docker >/dev/null || die "the docker client is not installed" "apt-get install docker.io (make up does this when run as root)"
  if pid_alive "$PIDFILE" && [[ $(cat "$KILN_STATE/dockerd.flags" 2>/dev/null) != "${FLAGS[*]}" ]]; then
    warn "the engine Kiln started runs with other settings: restarting it"; stop
  fi
  if docker info >/dev/null 2>&1; then ok "docker engine answering"; build_cgroup; return; fi
  command -v dockerd >/dev/null || die "no Docker engine (dockerd) is installed or running" "apt-get install docker.io, or start your own engine and set DOCKER_HOST"
  [[ -n ${DOCKER_HOST:-} ]] && die "DOCKER_HOST=$DOCKER_HOST does not answer" "start that engine, or unset DOCKER_HOST to let make up start a local one"
  [[ $(id -u) == 0 ]] || die "starting dockerd needs root" "start the Docker engine yourself (systemctl start docker) or run make up as root"
  step "starting the Docker engine"
  setsid nohup dockerd "${FLAGS[@]}" >"$KILN_LOGS/dockerd.log" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  echo "${FLAGS[*]}" >"$KILN_STATE/dockerd.flags"
  wait_for "docker" 60 docker info || { tail -n 20 "$KILN_LOGS/dockerd.log" >&2; die "the Docker engine did not start (log: $KILN_LOGS/dockerd.log)" "read the log above"; }
  ok "docker engine started"
  build_cgroup
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
