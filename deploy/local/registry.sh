#!/usr/bin/env bash
# Runs a Docker registry (Debian's docker-registry, distribution v2) on loopback.
#   registry.sh start|stop|status
# Settings: KILN_REGISTRY_PORT (5000), KILN_REGISTRY_INSTANCE (main),
# KILN_REGISTRY_HTPASSWD_USER / _PASSWORD (require basic auth with that account),
# KILN_REGISTRY_URL (use an existing registry instead: nothing is started).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
PORT=${KILN_REGISTRY_PORT:-5000}
INSTANCE=${KILN_REGISTRY_INSTANCE:-main}
HOME_DIR="$KILN_STATE/registry/$INSTANCE"
PIDFILE="$HOME_DIR/registry.pid"
LOG="$KILN_LOGS/registry-$INSTANCE.log"

start() {
  if [[ -n ${KILN_REGISTRY_URL:-} ]]; then ok "registry: using $KILN_REGISTRY_URL"; return; fi
  if pid_alive "$PIDFILE" && port_open 127.0.0.1 "$PORT"; then ok "registry ($INSTANCE) already running on 127.0.0.1:$PORT"; return; fi
  command -v docker-registry >/dev/null || die "docker-registry is not installed" "apt-get install docker-registry (make up does this when run as root)"
  port_open 127.0.0.1 "$PORT" && die "port $PORT is already in use, so the registry cannot listen there" \
    "stop that program (ss -ltnp 'sport = :$PORT' shows it) or set KILN_REGISTRY_PORT"
  mkdir -p "$HOME_DIR/data"
  local auth=""
  if [[ -n ${KILN_REGISTRY_HTPASSWD_USER:-} ]]; then
    htpasswd -Bbc "$HOME_DIR/htpasswd" "$KILN_REGISTRY_HTPASSWD_USER" "${KILN_REGISTRY_HTPASSWD_PASSWORD:?set KILN_REGISTRY_HTPASSWD_PASSWORD}" 2>/dev/null
    auth=$'auth:\n  htpasswd:\n    realm: kiln-registry\n    path: '"$HOME_DIR/htpasswd"
  fi
  [[ -f $HOME_DIR/secret ]] || head -c 24 /dev/urandom | base64 >"$HOME_DIR/secret"
  cat >"$HOME_DIR/config.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $HOME_DIR/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$PORT
  secret: $(cat "$HOME_DIR/secret")
$auth
YAML
  step "starting the registry ($INSTANCE) on 127.0.0.1:$PORT"
  setsid nohup docker-registry serve "$HOME_DIR/config.yml" >"$LOG" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  wait_for "registry" 30 curl -s -o /dev/null "http://127.0.0.1:$PORT/v2/" || { tail -n 20 "$LOG" >&2; die "the registry did not start (log: $LOG)" "read the log above"; }
  ok "registry ($INSTANCE) ready on 127.0.0.1:$PORT"
}

stop() {
  pid_alive "$PIDFILE" || { rm -f "$PIDFILE"; return; }
  kill -TERM "$(cat "$PIDFILE")"; wait_for "registry exit" 15 bash -c "! kill -0 $(cat "$PIDFILE")" || true
  rm -f "$PIDFILE"; ok "registry ($INSTANCE) stopped"
}

status() {
  if [[ -n ${KILN_REGISTRY_URL:-} ]]; then echo "registry   external  $KILN_REGISTRY_URL"; return; fi
  if pid_alive "$PIDFILE" && port_open 127.0.0.1 "$PORT"; then echo "registry   running   127.0.0.1:$PORT"; else echo "registry   stopped   127.0.0.1:$PORT"; fi
}

case "${1:-}" in start) start ;; stop) stop ;; status) status ;; *) echo "usage: $0 start|stop|status" >&2; exit 2 ;; esac
