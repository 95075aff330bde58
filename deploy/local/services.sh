#!/usr/bin/env bash
# Runs Kiln's services as processes from the project's virtualenv.
#   services.sh start|stop|status [SERVICE...]      (default: all five)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/kiln.env"
ALL=(resolver builder launcher analytics gateway)
RUN="$KILN_STATE/services"
VENV="$KILN_ROOT/.venv"
mkdir -p "$RUN"
names=("${@:2}"); ((${#names[@]})) || names=("${ALL[@]}")

ready() {  # ready SERVICE: the gateway answers /health; the others have joined their consumer group
  if [[ $1 == gateway ]]; then curl -fs -o /dev/null "http://$KILN_GATEWAY_HOST:$KILN_GATEWAY_PORT/health"
  else grep -q "kiln-$1: consuming" "$KILN_LOGS/$1.log"; fi
}

secret() {  # secret NAME: a random secret made once and kept in .state/secrets/NAME
  local file="$KILN_STATE/secrets/$1"
  [[ -s $file ]] || (mkdir -p "$KILN_STATE/secrets"; umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$file")
  cat "$file"
}

start_one() {
  local s=$1 pidfile="$RUN/$1.pid"
  if pid_alive "$pidfile"; then ok "$s already running"; return; fi
  [[ -x $VENV/bin/kiln-$s ]] || die "kiln-$s is not installed in $VENV" "run make dev"
  if [[ $s == gateway ]] && port_open "$KILN_GATEWAY_HOST" "$KILN_GATEWAY_PORT"; then
    die "port $KILN_GATEWAY_PORT is already in use, so the gateway cannot listen there" \
      "stop that program (ss -ltnp 'sport = :$KILN_GATEWAY_PORT' shows it) or set KILN_GATEWAY_PORT"
  fi
  : >"$KILN_LOGS/$s.log"
  # Each service gets only its own secrets: the hub token of its own service account, and the
  # sealing key for the two that seal and open server tokens.
  local token="" seal="" metrics=""
  case $s in
    resolver) metrics=$KILN_RESOLVER_METRICS_PORT ;;
    builder) metrics=$KILN_BUILDER_METRICS_PORT ;;
    launcher) token=$(cat "$KILN_STATE/hub/launcher-token" 2>/dev/null); seal=$SEAL_KEYS
      metrics=$KILN_LAUNCHER_METRICS_PORT ;;
    gateway) token=$(cat "$KILN_STATE/hub/gateway-token" 2>/dev/null); seal=$SEAL_KEYS
      # Event ids, build tokens and login sessions must stay valid when the gateway restarts.
      export KILN_RESUME_SECRET="${KILN_RESUME_SECRET:-$(secret resume)}" \
        KILN_BUILD_TOKEN_SECRET="${KILN_BUILD_TOKEN_SECRET:-$(secret build-token)}" \
        KILN_SESSION_SECRET="${KILN_SESSION_SECRET:-$(secret session)}" ;;
  esac
  if [[ -n $metrics ]]; then export KILN_METRICS_PORT=$metrics; else unset KILN_METRICS_PORT; fi
  KILN_KAFKA_BOOTSTRAP="$KILN_KAFKA_BOOTSTRAP_EFFECTIVE" KILN_HUB_API_TOKEN="${KILN_HUB_API_TOKEN:-$token}" \
    KILN_TOKEN_SEAL_KEYS="${KILN_TOKEN_SEAL_KEYS:-$seal}" \
    setsid nohup "$VENV/bin/kiln-$s" >>"$KILN_LOGS/$s.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
}

start() {
  local keyfile="$KILN_STATE/token-seal-key"
  [[ -s $keyfile ]] || (umask 077; "$VENV/bin/kiln-keygen" >"$keyfile")
  SEAL_KEYS="[\"$(cat "$keyfile")\"]"
  for s in "${names[@]}"; do start_one "$s"; done
  for s in "${names[@]}"; do
    if ! wait_for "$s" 60 ready "$s"; then
      tail -n 15 "$KILN_LOGS/$s.log" >&2; die "the $s did not become ready (log: $KILN_LOGS/$s.log)" "read the log above"
    fi
    ok "$s ready"
  done
}

stop() {
  for s in "${names[@]}"; do
    local pidfile="$RUN/$s.pid"
    pid_alive "$pidfile" || { rm -f "$pidfile"; continue; }
    local pid; pid=$(cat "$pidfile")
    kill -TERM "$pid"  # services finish the event in hand, commit and leave their group
    wait_for "$s exit" 40 bash -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"; ok "$s stopped"
  done
}

status() {
  for s in "${names[@]}"; do
    local where=""
    case $s in
      gateway) where="http://$KILN_GATEWAY_HOST:$KILN_GATEWAY_PORT/" ;;
      analytics) where="http://127.0.0.1:$KILN_ANALYTICS_PORT/ (dashboard)" ;;
    esac
    if pid_alive "$RUN/$s.pid"; then printf '%-10s running   %s\n' "$s" "$where"; else printf '%-10s stopped   %s\n' "$s" "$where"; fi
  done
}

case "${1:-}" in start) start ;; stop) stop ;; status) status ;; *) echo "usage: $0 start|stop|status [SERVICE...]" >&2; exit 2 ;; esac
