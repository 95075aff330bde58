#!/usr/bin/env bash
# Starts a Docker engine (Debian's docker.io) if none answers, and the cgroup that bounds builds.
# Builds and servers run on the user network network.sh makes, whose firewall rules are Kiln's own,
# so the engine makes no bridge and no iptables rules of its own. Every container it starts gets
# no-new-privileges (build steps too, which the build API cannot configure one by one).
#   docker.sh start|stop|status
# Settings: KILN_BUILD_CGROUP (kiln-builds), KILN_BUILD_PIDS_LIMIT (4096: processes and threads all
# running builds may have together), KILN_BUILD_STEP_PIDS_LIMIT (1024: one build step's own share, so
# a fork bomb stops there and leaves the rest to the builds beside it), KILN_BUILD_CAPS (what a build
# step running as root keeps: what apt and dpkg need, nothing else).
#
# The build API sets neither capabilities nor a process limit per step, so the engine runs every
# container through build-runtime (made below), a runc wrapper that narrows the spec of containers
# in the builds' cgroup (build_runtime.py) and hands everything else to runc unchanged.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
PIDFILE="$KILN_STATE/dockerd.pid"
CGROUP=${KILN_BUILD_CGROUP:-kiln-builds}
PIDS_LIMIT=${KILN_BUILD_PIDS_LIMIT:-4096}
STEP_PIDS_LIMIT=${KILN_BUILD_STEP_PIDS_LIMIT:-1024}
BUILD_CAPS=${KILN_BUILD_CAPS:-CHOWN,DAC_OVERRIDE,FOWNER,FSETID,SETUID,SETGID,KILL}
RUNTIME="$KILN_STATE/docker/build-runtime"
FLAGS=(--bridge=none --iptables=false --ip6tables=false --no-new-privileges
       --add-runtime "kiln-build=$RUNTIME" --default-runtime kiln-build --host unix:///var/run/docker.sock)

# build_runtime: writes the runc wrapper. The engine reads it at every container start, so new
# settings take effect without a restart. Only `create` of a container whose spec names the builds'
# cgroup pays for Python; a failure there refuses the container rather than starting it unnarrowed.
# Every container runs through it, so it names runc and Python by the system's own paths, never by
# whatever PATH the caller has.
build_runtime() {
  local runc python
  runc=$(PATH=/usr/sbin:/usr/bin:/sbin:/bin command -v runc) || die "runc is not installed" "apt-get install runc (docker.io depends on it)"
  python=$(PATH=/usr/bin:/bin command -v python3) || die "python3 is not installed" "apt-get install python3"
  mkdir -p "$(dirname "$RUNTIME")"
  cat >"$RUNTIME.tmp" <<WRAPPER
#!/bin/sh
# Made by deploy/local/docker.sh: narrows build-step containers (build_runtime.py), then runs runc.
bundle=.; create=; prev=
for arg in "\$@"; do
  case "\$arg" in create|run) create=1 ;; --bundle=*) bundle=\${arg#--bundle=} ;; esac
  case "\$prev" in --bundle|-b) bundle=\$arg ;; esac
  prev=\$arg
done
if [ -n "\$create" ] && grep -q '"cgroupsPath":"/$CGROUP/' "\$bundle/config.json" 2>/dev/null; then
  $python -I "$KILN_ROOT/deploy/local/build_runtime.py" "\$bundle" "$CGROUP" "$BUILD_CAPS" "$STEP_PIDS_LIMIT" || exit 1
fi
exec $runc "\$@"
WRAPPER
  chmod 755 "$RUNTIME.tmp"; mv "$RUNTIME.tmp" "$RUNTIME"
}

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
  ok "builds share at most $PIDS_LIMIT processes, $STEP_PIDS_LIMIT per step (cgroup $CGROUP)"
}

start() {
  command -v docker >/dev/null || die "the docker client is not installed" "apt-get install docker.io (make up does this when run as root)"
  build_runtime
  if pid_alive "$PIDFILE" && [[ $(cat "$KILN_STATE/dockerd.flags" 2>/dev/null) != "${FLAGS[*]}" ]]; then
    warn "the engine Kiln started runs with other settings: restarting it"; stop
  fi
  # An engine another checkout of Kiln started runs containers through that checkout's wrapper:
  # once that checkout is gone, no container starts. Such an engine is Kiln's: restart it here.
  local theirs
  theirs=$(docker info -f '{{with index .Runtimes "kiln-build"}}{{.Path}}{{end}}' 2>/dev/null || true)
  if [[ -n $theirs && $theirs != "$RUNTIME" && ! -x $theirs ]]; then
    warn "the engine runs containers through $theirs, which is gone: restarting it"
    pkill -TERM -x dockerd || true
    wait_for "dockerd exit" 30 bash -c "! pgrep -x dockerd" || pkill -KILL -x dockerd || true
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
