# Shared helpers for the local-stack scripts: paths, messages, readiness waits.
# Sourced, not run.
KILN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KILN_STATE="${KILN_STATE:-$KILN_ROOT/.state}"
KILN_LOGS="$KILN_STATE/logs"
mkdir -p "$KILN_LOGS"
chmod 700 "$KILN_STATE" "$KILN_LOGS" 2>/dev/null || true  # logs may quote settings; secrets live beside them
# The local registry lets only known users in (registry.sh): the scripts' docker commands push as its
# admin through this client configuration; services.sh gives the builder and the resolver their own.
if [[ -z ${KILN_REGISTRY_URL:-} && ${KILN_REGISTRY_AUTH:-token} == token && -z ${DOCKER_CONFIG:-} ]]; then
  export DOCKER_CONFIG="$KILN_STATE/docker/admin"
fi

step() { printf '  .. %s\n' "$*"; }
ok()   { printf '  ok %s\n' "$*"; }
warn() { printf '  !! %s\n' "$*" >&2; }
# die CAUSE FIX: stop with a message naming the cause and the fix, never a stack trace.
die()  { printf '\nkiln: %s\n  fix: %s\n' "$1" "${2:-see docs/local-stack.md}" >&2; exit 1; }

# wait_for DESCRIPTION TIMEOUT_S COMMAND...: poll COMMAND until it succeeds, or fail naming DESCRIPTION.
wait_for() {
  local what=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then return 1; fi
    sleep 0.2
  done
}

# secret NAME: a random secret made once and kept in .state/secrets/NAME (readable by root only).
secret() {
  local file="$KILN_STATE/secrets/$1"
  [[ -s $file ]] || (mkdir -p "$KILN_STATE/secrets"; umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$file")
  cat "$file"
}

# port_open HOST PORT: true when something accepts TCP connections there.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# pid_alive PIDFILE: true when the process recorded in PIDFILE runs.
pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
