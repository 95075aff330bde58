#!/usr/bin/env bash
# Serves a sample repository (deploy/local/sample-repo) over git HTTP on 127.0.0.1, so a newcomer
# can launch something at once. Also serves any repository put under .state/git-repos/<owner>/<name>.
#   sample.sh start|stop|status|url
set -euo pipefail
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/kiln.env"
PORT=${KILN_SAMPLE_PORT:-8765}
ROOT="$KILN_STATE/git-repos"
REPO="$ROOT/kiln/sample"
PIDFILE="$KILN_STATE/gitserver.pid"

url() {
  printf 'http://%s:%s/v2/git/http%%3A%%2F%%2F127.0.0.1%%3A%s%%2Fkiln%%2Fsample/HEAD?labpath=index.ipynb\n' \
    "$KILN_GATEWAY_HOST" "$KILN_GATEWAY_PORT" "$PORT"
}

start() {
  if pid_alive "$PIDFILE" && port_open 127.0.0.1 "$PORT"; then ok "sample git server already running on 127.0.0.1:$PORT"; return; fi
  port_open 127.0.0.1 "$PORT" && die "port $PORT is already in use, so the sample git server cannot listen there" "set KILN_SAMPLE_PORT"
  local src="$KILN_ROOT/deploy/local/sample-repo"
  # The sample is committed afresh whenever its files change, so a launch shows the current sample.
  if [[ ! -d $REPO/.git ]] || ! diff -rq --exclude=.git "$src" "$REPO" >/dev/null 2>&1; then
    rm -rf "$REPO"; mkdir -p "$REPO"; cp -r "$src/." "$REPO/"
    git -C "$REPO" init -q -b main
    git -C "$REPO" add -A
    git -C "$REPO" -c user.name=Kiln -c user.email=kiln@localhost commit -q -m "Kiln sample repository"
  fi
  setsid nohup python3 "$KILN_ROOT/deploy/local/gitserver.py" "$ROOT" --port "$PORT" >"$KILN_LOGS/gitserver.log" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  wait_for "git server" 20 port_open 127.0.0.1 "$PORT" || die "the sample git server did not start (log: $KILN_LOGS/gitserver.log)" "read the log"
  ok "sample repository served at http://127.0.0.1:$PORT/kiln/sample"
}

stop() {
  pid_alive "$PIDFILE" || { rm -f "$PIDFILE"; return; }
  kill "$(cat "$PIDFILE")"; rm -f "$PIDFILE"; ok "sample git server stopped"
}

status() {
  if pid_alive "$PIDFILE"; then echo "git server running   http://127.0.0.1:$PORT/ (sample: kiln/sample)"; else echo "git server stopped"; fi
}

case "${1:-}" in start) start ;; stop) stop ;; status) status ;; url) url ;; *) echo "usage: $0 start|stop|status|url" >&2; exit 2 ;; esac
