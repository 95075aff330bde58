#!/usr/bin/env bash
# Runs a Docker registry (Debian's docker-registry, distribution v2) on loopback.
#   registry.sh start|stop|status
# Settings: KILN_REGISTRY_PORT (5000), KILN_REGISTRY_INSTANCE (main),
# KILN_REGISTRY_AUTH: "token" (default) — every client authenticates with the token server
#   (registry_token.py on KILN_REGISTRY_TOKEN_PORT, the registry's port + 1): users builder and admin may push and pull,
#   puller may only pull; passwords are made once into .state/secrets/registry-<user>, and docker
#   client configurations for admin and puller into .state/docker/<user>/config.json (an entry per
#   registry address: an instance on another port adds its own and leaves the others' alone);
#   "none" — no authentication (only for a registry nothing untrusted can reach);
# KILN_REGISTRY_HTPASSWD_USER / _PASSWORD (basic auth with that one account instead),
# KILN_REGISTRY_URL (use an existing registry instead: nothing is started).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
PORT=${KILN_REGISTRY_PORT:-5000}
TOKEN_PORT=${KILN_REGISTRY_TOKEN_PORT:-$((PORT + 1))}
INSTANCE=${KILN_REGISTRY_INSTANCE:-main}
HOME_DIR="$KILN_STATE/registry/$INSTANCE"
PIDFILE="$HOME_DIR/registry.pid"
TOKEN_PIDFILE="$HOME_DIR/token.pid"
LOG="$KILN_LOGS/registry-$INSTANCE.log"
MODE=${KILN_REGISTRY_AUTH:-token}
[[ -n ${KILN_REGISTRY_HTPASSWD_USER:-} ]] && MODE=htpasswd
# user:actions[:push prefixes]: who may do what (registry_token.py grants nothing else). The builder
# pushes only the images builds make (the builder's image_prefix and env_image_prefix), not Kiln's own.
TOKEN_USERS=("admin:pull,push" "builder:pull,push:kiln/binder-,kiln/env" "puller:pull")

password() { secret "registry-$1"; }  # password USER: made once, kept in .state/secrets/registry-USER

# token_setup: the signing key and certificate, the token server's configuration, and docker client
# configurations (so scripts push as admin and the hub's engine pulls as puller, without `docker login`).
token_setup() {
  command -v openssl >/dev/null || die "openssl is not installed; it makes the registry's token signing key" "apt-get install openssl"
  if [[ ! -s $HOME_DIR/token.crt ]]; then
    (umask 077; openssl req -x509 -newkey rsa:2048 -nodes -keyout "$HOME_DIR/token.key" -out "$HOME_DIR/token.crt" \
      -days 3650 -subj "/CN=kiln-registry-token" >/dev/null 2>&1) || die "openssl could not make the token signing key" "see openssl's output: run it by hand"
  fi
  local entry user actions users="" sep=""
  local prefixes push
  for entry in "${TOKEN_USERS[@]}"; do
    IFS=: read -r user actions prefixes <<<"$entry"
    push=""
    [[ -n $prefixes ]] && push=", \"push_prefixes\": [\"${prefixes//,/\", \"}\"]"
    users+="$sep\"$user\": {\"sha256\": \"$(printf %s "$(password "$user")" | sha256sum | cut -d' ' -f1)\", \"actions\": [\"${actions//,/\", \"}\"]$push}"
    sep=", "
  done
  local config
  config=$(printf '{"host": "127.0.0.1", "port": %s, "issuer": "kiln-registry-token", "service": "kiln-registry",\n "key": "%s", "users": {%s}}' \
    "$TOKEN_PORT" "$HOME_DIR/token.key" "$users")
  if [[ $(cat "$HOME_DIR/token.json" 2>/dev/null) != "$config" ]]; then
    (umask 077; echo "$config" >"$HOME_DIR/token.json")
    # A token server still running reads its users only at start.
    if pid_alive "$TOKEN_PIDFILE"; then kill -TERM "$(cat "$TOKEN_PIDFILE")"; wait_for "token server exit" 10 bash -c "! kill -0 $(cat "$TOKEN_PIDFILE")" || true; fi
  fi
  for user in admin puller; do
    mkdir -p "$KILN_STATE/docker/$user"
    client_auth "$KILN_STATE/docker/$user/config.json" "127.0.0.1:$PORT" "$user" \
      || die "the docker client configuration $KILN_STATE/docker/$user/config.json could not be written" \
             "check that it is JSON (or delete it: it is written again)"
  done
}

# client_auth CONFIG REGISTRY USER: USER's credentials for REGISTRY in the docker client configuration
# CONFIG, replaced atomically. Only that registry's entry changes: the main registry's admin and
# puller configurations are shared (every script's docker commands, the hub's engine), and a second
# instance, such as a test's on a port of its own, must not take the main one's entry away.
client_auth() {
  (umask 077; KILN_DOCKER_AUTH=$(printf '%s:%s' "$3" "$(password "$3")" | base64 -w0) python3 - "$1" "$2" <<'PY'
import json, os, sys

path, registry = sys.argv[1:]
try:
    with open(path) as f:
        config = json.load(f)
except FileNotFoundError:
    config = {}
config.setdefault("auths", {})[registry] = {"auth": os.environ["KILN_DOCKER_AUTH"]}
with open(path + ".new", "w") as f:
    json.dump(config, f)
    f.write("\n")
os.replace(path + ".new", path)
PY
  )
}

auth_config() {  # the registry configuration's auth section for MODE
  case $MODE in
    htpasswd)
      htpasswd -Bbc "$HOME_DIR/htpasswd" "$KILN_REGISTRY_HTPASSWD_USER" "${KILN_REGISTRY_HTPASSWD_PASSWORD:?set KILN_REGISTRY_HTPASSWD_PASSWORD}" 2>/dev/null
      printf 'auth:\n  htpasswd:\n    realm: kiln-registry\n    path: %s\n' "$HOME_DIR/htpasswd" ;;
    token)
      printf 'auth:\n  token:\n    realm: http://127.0.0.1:%s/token\n    service: kiln-registry\n    issuer: kiln-registry-token\n    rootcertbundle: %s\n' \
        "$TOKEN_PORT" "$HOME_DIR/token.crt" ;;
    none) ;;
    *) die "KILN_REGISTRY_AUTH=$MODE" "use token (the default) or none" ;;
  esac
}

start_token_server() {
  pid_alive "$TOKEN_PIDFILE" && port_open 127.0.0.1 "$TOKEN_PORT" && return 0
  local python="$KILN_ROOT/.venv/bin/python"
  [[ -x $python ]] || die "the project's virtualenv is missing; the registry's token server runs from it" "run make dev (make up does)"
  port_open 127.0.0.1 "$TOKEN_PORT" && die "port $TOKEN_PORT is in use, so the registry's token server cannot listen there" \
    "stop that program (ss -ltnp 'sport = :$TOKEN_PORT' shows it) or set KILN_REGISTRY_TOKEN_PORT"
  setsid nohup "$python" "$KILN_ROOT/deploy/local/registry_token.py" "$HOME_DIR/token.json" >>"$LOG" 2>&1 </dev/null &
  echo $! >"$TOKEN_PIDFILE"
  wait_for "token server" 30 port_open 127.0.0.1 "$TOKEN_PORT" || { tail -n 20 "$LOG" >&2; die "the registry's token server did not start (log: $LOG)" "read the log above"; }
}

start() {
  if [[ -n ${KILN_REGISTRY_URL:-} ]]; then ok "registry: using $KILN_REGISTRY_URL"; return; fi
  command -v docker-registry >/dev/null || die "docker-registry is not installed" "apt-get install docker-registry (make up does this when run as root)"
  # Before anything is written: a start that fails leaves the running stack's files as they were.
  if ! pid_alive "$PIDFILE" && port_open 127.0.0.1 "$PORT"; then port_in_use; fi
  mkdir -p "$HOME_DIR/data"
  [[ $MODE == token ]] && token_setup
  [[ -f $HOME_DIR/secret ]] || head -c 24 /dev/urandom | base64 >"$HOME_DIR/secret"
  local config
  config=$(cat <<YAML
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
$(auth_config)
YAML
)
  if pid_alive "$PIDFILE" && [[ $(cat "$HOME_DIR/config.yml" 2>/dev/null) != "$config" ]]; then
    warn "the registry ($INSTANCE) runs with an older configuration: restarting it"; stop
  fi
  if pid_alive "$PIDFILE" && port_open 127.0.0.1 "$PORT"; then
    [[ $MODE == token ]] && start_token_server
    ok "registry ($INSTANCE) already running on 127.0.0.1:$PORT"; return
  fi
  port_open 127.0.0.1 "$PORT" && port_in_use
  [[ $MODE == token ]] && start_token_server
  (umask 077; echo "$config" >"$HOME_DIR/config.yml")
  step "starting the registry ($INSTANCE) on 127.0.0.1:$PORT"
  setsid nohup docker-registry serve "$HOME_DIR/config.yml" >>"$LOG" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  wait_for "registry" 30 curl -s -o /dev/null "http://127.0.0.1:$PORT/v2/" || { tail -n 20 "$LOG" >&2; die "the registry did not start (log: $LOG)" "read the log above"; }
  ok "registry ($INSTANCE) ready on 127.0.0.1:$PORT (auth: $MODE)"
}

port_in_use() {
  die "port $PORT is already in use, so the registry cannot listen there" \
    "stop that program (ss -ltnp 'sport = :$PORT' shows it) or set KILN_REGISTRY_PORT"
}

stop() {
  if pid_alive "$TOKEN_PIDFILE"; then kill -TERM "$(cat "$TOKEN_PIDFILE")" 2>/dev/null || true; fi
  rm -f "$TOKEN_PIDFILE"
  pid_alive "$PIDFILE" || { rm -f "$PIDFILE"; return; }
  kill -TERM "$(cat "$PIDFILE")"; wait_for "registry exit" 15 bash -c "! kill -0 $(cat "$PIDFILE")" || true
  rm -f "$PIDFILE"; ok "registry ($INSTANCE) stopped"
}

status() {
  if [[ -n ${KILN_REGISTRY_URL:-} ]]; then echo "registry   external  $KILN_REGISTRY_URL"; return; fi
  local tokens=""; [[ $MODE == token ]] && tokens=" (tokens 127.0.0.1:$TOKEN_PORT)"
  if pid_alive "$PIDFILE" && port_open 127.0.0.1 "$PORT"; then echo "registry   running   127.0.0.1:$PORT$tokens"; else echo "registry   stopped   127.0.0.1:$PORT$tokens"; fi
}

case "${1:-}" in start) start ;; stop) stop ;; status) status ;; *) echo "usage: $0 start|stop|status" >&2; exit 2 ;; esac
