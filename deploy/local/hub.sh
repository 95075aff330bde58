#!/usr/bin/env bash
# Runs JupyterHub with DockerSpawner and configurable-http-proxy on loopback.
#   hub.sh start|stop|status
# The hub gets its own virtualenv (.state/hub/venv) and CHP its own npm prefix; the launcher's
# service token is made once and kept in .state/hub/launcher-token.
# Settings: KILN_HUB_PORT (8000), KILN_HUB_API_PORT (8081), KILN_PROXY_API_PORT (8001),
# KILN_HUB_AUTH (none|dummy), KILN_HUB_URL (use an existing hub instead: nothing is started),
# KILN_HUB_INSTANCE (main; another name keeps its own database and pid, sharing the installation).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/kiln.env"
HUB="$KILN_STATE/hub"
PORT=${KILN_HUB_PORT:-8000}
API_PORT=${KILN_HUB_API_PORT:-8081}
PROXY_API_PORT=${KILN_PROXY_API_PORT:-8001}
INSTANCE=${KILN_HUB_INSTANCE:-main}
DATA="$HUB"; [[ $INSTANCE != main ]] && DATA="$HUB/instances/$INSTANCE"
PIDFILE="$DATA/jupyterhub.pid"
LOG="$KILN_LOGS/jupyterhub-$INSTANCE.log"
REQS="$KILN_ROOT/deploy/jupyterhub/requirements.txt"
CHP_VERSION=5.3.0

install() {
  mkdir -p "$HUB"
  local stamp="$HUB/venv/.requirements-sha" want
  want=$(sha256sum "$REQS" | cut -d' ' -f1)
  if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    step "installing JupyterHub and DockerSpawner into $HUB/venv"
    python3 -m venv "$HUB/venv" || die "python3 cannot make a virtualenv" "apt-get install python3-venv"
    "$HUB/venv/bin/pip" install -q -r "$REQS" >"$KILN_LOGS/hub-install.log" 2>&1 \
      || die "installing JupyterHub failed (log: $KILN_LOGS/hub-install.log)" "check that PyPI is reachable"
    echo "$want" >"$stamp"
  fi
  if [[ ! -x $HUB/chp/node_modules/.bin/configurable-http-proxy ]]; then
    command -v npm >/dev/null || die "npm is not installed; configurable-http-proxy comes from npm" "apt-get install npm"
    step "installing configurable-http-proxy $CHP_VERSION"
    npm install --prefix "$HUB/chp" --no-audit --no-fund "configurable-http-proxy@$CHP_VERSION" >"$KILN_LOGS/chp-install.log" 2>&1 \
      || die "installing configurable-http-proxy failed (log: $KILN_LOGS/chp-install.log)" "check that the npm registry is reachable"
  fi
  for who in launcher gateway; do
    [[ -s $HUB/$who-token ]] || (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$HUB/$who-token")
  done
}

start() {
  if [[ -n ${KILN_HUB_URL:-} ]]; then ok "hub: using $KILN_HUB_URL"; return; fi
  # A hub started from an older configuration file is restarted (servers stay up: the proxy keeps
  # their routes and the hub finds them again).
  local config_sha; config_sha=$(sha256sum "$KILN_ROOT/deploy/jupyterhub/jupyterhub_config.py" | cut -d' ' -f1)
  if pid_alive "$PIDFILE" && [[ $(cat "$DATA/.config-sha" 2>/dev/null) != "$config_sha" ]]; then
    warn "the hub runs an older configuration: restarting it"; stop
  fi
  if pid_alive "$PIDFILE" && curl -fs -o /dev/null "http://$KILN_USER_GATEWAY:$API_PORT/hub/api/"; then
    ok "jupyterhub already running on 127.0.0.1:$PORT (API $KILN_USER_GATEWAY:$API_PORT)"; return
  fi
  # A hub of ours that runs but does not answer where it should (an older configuration) is restarted.
  pid_alive "$PIDFILE" && { warn "the running hub does not answer at $KILN_USER_GATEWAY:$API_PORT: restarting it"; stop; }
  for p in "$PORT" "$API_PORT" "$PROXY_API_PORT"; do
    { port_open 127.0.0.1 "$p" || port_open "$KILN_USER_GATEWAY" "$p"; } && die "port $p is already in use, so JupyterHub cannot listen there" \
      "stop that program (ss -ltnp 'sport = :$p' shows it) or set KILN_HUB_PORT / KILN_HUB_API_PORT / KILN_PROXY_API_PORT"
  done
  docker info >/dev/null 2>&1 || die "the Docker engine does not answer; DockerSpawner needs it" "run deploy/local/docker.sh start (make up does)"
  [[ $(ip -4 -o addr show 2>/dev/null) == *"inet $KILN_USER_GATEWAY/"* ]] || die "no interface has $KILN_USER_GATEWAY, where the hub's API listens for servers" "run deploy/local/network.sh start (make up does)"
  install
  step "starting JupyterHub on 127.0.0.1:$PORT"
  mkdir -p "$DATA"
  chmod 700 "$DATA"  # the hub's database holds every token's hash and the users' state
  # `cd` on its own, so that $! is the hub itself and not a subshell around it.
  # The hub's engine pulls images it lacks from Kiln's registry as the pull-only user.
  local docker_config=${DOCKER_CONFIG:-}
  [[ -f $KILN_STATE/docker/puller/config.json ]] && docker_config=$KILN_STATE/docker/puller
  (cd "$DATA"; export KILN_STATE KILN_HUB_DATA="$DATA" KILN_USER_NETWORK KILN_USER_GATEWAY DOCKER_CONFIG="$docker_config" PATH="$HUB/venv/bin:$PATH"
   setsid nohup "$HUB/venv/bin/jupyterhub" -f "$KILN_ROOT/deploy/jupyterhub/jupyterhub_config.py" >"$LOG" 2>&1 </dev/null &
   echo $! >"$PIDFILE")
  echo "$config_sha" >"$DATA/.config-sha"
  if ! wait_for "hub" 60 curl -fs -o /dev/null "http://$KILN_USER_GATEWAY:$API_PORT/hub/api/"; then
    tail -n 20 "$LOG" >&2; die "JupyterHub did not start (log: $LOG)" "read the log above"
  fi
  wait_for "proxy" 30 port_open 127.0.0.1 "$PORT" || die "the proxy did not start on $PORT (log: $LOG)" "read $LOG"
  ok "jupyterhub ready on 127.0.0.1:$PORT (API $KILN_USER_GATEWAY:$API_PORT)"
}

stop() {
  pid_alive "$PIDFILE" || { rm -f "$PIDFILE"; return; }
  local pid; pid=$(cat "$PIDFILE")
  kill -TERM "$pid"; wait_for "hub exit" 30 bash -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
  # The hub stops the proxy it started; make sure, since a stray proxy holds the port.
  if [[ -f $DATA/proxy.pid ]]; then kill "$(cat "$DATA/proxy.pid")" 2>/dev/null || true; rm -f "$DATA/proxy.pid"; fi
  rm -f "$PIDFILE"; ok "jupyterhub stopped"
}

status() {
  if [[ -n ${KILN_HUB_URL:-} ]]; then echo "jupyterhub external  $KILN_HUB_URL"; return; fi
  if pid_alive "$PIDFILE" && curl -fs -o /dev/null "http://$KILN_USER_GATEWAY:$API_PORT/hub/api/"; then
    echo "jupyterhub running   http://127.0.0.1:$PORT (API http://$KILN_USER_GATEWAY:$API_PORT/hub/api)"
  else echo "jupyterhub stopped   http://127.0.0.1:$PORT"; fi
}

case "${1:-}" in install) install ;; start) start ;; stop) stop ;; status) status ;; *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;; esac
