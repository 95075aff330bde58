#!/usr/bin/env bash
# Runs Kiln's services:
#   services.sh start|stop|status [SERVICE...]   (default: all five)
#   services.sh env SERVICE                      write the service's environment file and print its path
# KILN_SERVICES_FROM=images (default): each service in its own container, from the image
# deploy/local/images.sh built, on the host network. KILN_SERVICES_FROM=venv: processes from .venv
# (quicker while changing code: no image to rebuild).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/kiln.env"
ALL=(resolver builder launcher analytics gateway)
RUN="$KILN_STATE/services"
VENV="$KILN_ROOT/.venv"
MODE=${KILN_SERVICES_FROM:-images}
REGISTRY=${KILN_REGISTRY_HOST:-127.0.0.1:5000}
# The builder's own memory (not its builds', which the engine limits): it holds a build context in
# memory while sending it, up to KILN_MAX_REPO_BYTES (1 GiB) for each of two builds at once. Empty: no limit.
BUILDER_MEMORY=${KILN_BUILDER_MEMORY-4g}
[[ -z $BUILDER_MEMORY || $BUILDER_MEMORY =~ ^[0-9]+[bkmgBKMG]?$ ]] || die "KILN_BUILDER_MEMORY=$BUILDER_MEMORY" "use a size such as 4g"
mkdir -p "$RUN"
[[ $MODE == images || $MODE == venv ]] || die "KILN_SERVICES_FROM=$MODE" "use images or venv"
names=("${@:2}"); ((${#names[@]})) || names=("${ALL[@]}")

seal_keys() {
  local keyfile="$KILN_STATE/token-seal-key"
  [[ -s $keyfile ]] || (umask 077; "$VENV/bin/kiln-keygen" >"$keyfile")
  echo "[\"$(cat "$keyfile")\"]"
}

# write_env SERVICE: the service's environment as KEY=VALUE lines (read literally by docker
# --env-file and by env), in .state/services/SERVICE.env, readable by root only. Each service gets
# only its own secrets: its hub service token, and the sealing key for the two that use it.
write_env() {
  local s=$1 file="$RUN/$1.env"
  (
    unset KILN_METRICS_PORT
    # On the local broker each service is a Kafka user of its own, allowed only its own topics: always
    # its own, whatever account the calling shell holds (the tests' admin, for one).
    if [[ -z ${KILN_KAFKA_BOOTSTRAP:-} && -s $KILN_STATE/secrets/kafka-$s ]]; then
      export KILN_KAFKA_SASL_USERNAME=$s KILN_KAFKA_SASL_PASSWORD="$(cat "$KILN_STATE/secrets/kafka-$s")"
    fi
    export KILN_KAFKA_BOOTSTRAP="$KILN_KAFKA_BOOTSTRAP_EFFECTIVE"
    # One instance of each service here, always under the same name: a static group member, so one
    # restarted after a crash (--restart=on-failure) takes its partitions back at once.
    export KILN_KAFKA_GROUP_INSTANCE_ID="${KILN_KAFKA_GROUP_INSTANCE_ID:-kiln-$s}"
    # On the local registry the builder may push and the resolver only pull (deploy/local/registry.sh);
    # the other services need no account.
    if [[ -z ${KILN_REGISTRY_URL:-} && ${KILN_REGISTRY_AUTH:-token} == token && -s $KILN_STATE/secrets/registry-builder ]]; then
      unset KILN_REGISTRY_USERNAME KILN_REGISTRY_PASSWORD
      case $s in
        builder) export KILN_REGISTRY_USERNAME=builder KILN_REGISTRY_PASSWORD="$(cat "$KILN_STATE/secrets/registry-builder")" ;;
        resolver) export KILN_REGISTRY_USERNAME=puller KILN_REGISTRY_PASSWORD="$(cat "$KILN_STATE/secrets/registry-puller")" ;;
      esac
    fi
    # Private repositories' credentials are the resolver's and the builder's alone; forge API tokens
    # and the hub token that reads users' auth state (every user's forge token) the resolver's alone.
    [[ $s == resolver || $s == builder ]] || unset KILN_GIT_CREDENTIALS KILN_GITHUB_APP KILN_SWH_ACCESS_TOKEN
    [[ $s == resolver ]] || unset KILN_GITHUB_ACCESS_TOKEN KILN_GITLAB_ACCESS_TOKEN KILN_GITEA_ACCESS_TOKEN \
      KILN_BITBUCKET_ACCESS_TOKEN KILN_HUB_AUTH_STATE_TOKEN
    case $s in
      resolver) export KILN_METRICS_PORT=$KILN_RESOLVER_METRICS_PORT ;;
      builder) export KILN_METRICS_PORT=$KILN_BUILDER_METRICS_PORT
        # In a container the checkouts and the git mirror cache live on a volume (see start_container).
        [[ $MODE == images ]] && export KILN_WORK_DIR=/var/lib/kiln-builder ;;
      launcher) export KILN_METRICS_PORT=$KILN_LAUNCHER_METRICS_PORT
        export KILN_HUB_API_TOKEN="${KILN_HUB_API_TOKEN:-$(cat "$KILN_STATE/hub/launcher-token" 2>/dev/null)}"
        export KILN_TOKEN_SEAL_KEYS="${KILN_TOKEN_SEAL_KEYS:-$(seal_keys)}" ;;
      gateway) export KILN_HUB_API_TOKEN="${KILN_HUB_API_TOKEN:-$(cat "$KILN_STATE/hub/gateway-token" 2>/dev/null)}"
        export KILN_TOKEN_SEAL_KEYS="${KILN_TOKEN_SEAL_KEYS:-$(seal_keys)}"
        # Event ids, build tokens and login sessions must stay valid when the gateway restarts.
        export KILN_RESUME_SECRET="${KILN_RESUME_SECRET:-$(secret resume)}" \
          KILN_BUILD_TOKEN_SECRET="${KILN_BUILD_TOKEN_SECRET:-$(secret build-token)}" \
          KILN_SESSION_SECRET="${KILN_SESSION_SECRET:-$(secret session)}" ;;
    esac
    umask 077
    env | grep '^KILN_' | grep -Ev '^KILN_(ROOT|STATE|LOGS|KAFKA_BOOTSTRAP_EFFECTIVE|SERVICES_FROM|WITH_BROWSER)=' \
      | sort >"$file"
  )
  echo "$file"
}

running() {  # running SERVICE
  if [[ $MODE == images ]]; then
    [[ $(docker inspect -f '{{.State.Running}}' "kiln-$1" 2>/dev/null) == true ]]
  else
    pid_alive "$RUN/$1.pid"
  fi
}

ready() {  # ready SERVICE: the gateway answers /health; the others have joined their consumer group
  if [[ $1 == gateway ]]; then curl -fs -o /dev/null "http://$KILN_GATEWAY_HOST:$KILN_GATEWAY_PORT/health"
  else grep -q "kiln-$1: consuming" "$KILN_LOGS/$1.log"; fi
}

start_process() {
  local s=$1
  [[ -x $VENV/bin/kiln-$s ]] || die "kiln-$s is not installed in $VENV" "run make dev"
  local lines; readarray -t lines <"$(write_env "$s")"
  env "${lines[@]}" setsid nohup "$VENV/bin/kiln-$s" >>"$KILN_LOGS/$s.log" 2>&1 </dev/null &
  echo $! >"$RUN/$s.pid"
}

# run_options SERVICE: the container's restart policy and limits, as one line. The engine starts a
# service again when it dies (an OOM kill of the builder must not leave builds down for everyone);
# `docker stop` (stop_one) is not a failure, so a stopped service stays stopped. The line is kept on
# the container as a label, so that start_one replaces a container started with other options.
run_options() {
  local opts=(--restart=on-failure)
  [[ $1 == builder && -n $BUILDER_MEMORY ]] && opts+=("--memory=$BUILDER_MEMORY" "--memory-swap=$BUILDER_MEMORY")
  echo "${opts[*]}"
}

start_container() {
  local s=$1 image="$REGISTRY/kiln/$s:latest" extra=() opts
  docker image inspect "$image" >/dev/null 2>&1 || die "the image $image is not built" "run make images"
  docker rm -f "kiln-$s" >/dev/null 2>&1 || true
  if [[ $s == builder ]]; then
    # The builder drives the host's engine through its socket; its checkouts and git cache persist.
    mkdir -p "$KILN_STATE/builder"
    extra=(-v /var/run/docker.sock:/var/run/docker.sock -v "$KILN_STATE/builder:/var/lib/kiln-builder")
  fi
  read -ra opts <<<"$(run_options "$s")"
  docker run -d --name "kiln-$s" --network host --env-file "$(write_env "$s")" --label org.kiln.stack=local \
    --label "org.kiln.run-options=${opts[*]}" "${opts[@]}" --stop-timeout 40 "${extra[@]}" "$image" >/dev/null
  # The container's output goes to the same log file as a process's would, after restarts too.
  setsid nohup "$KILN_ROOT/deploy/local/services.sh" follow-logs "$s" >/dev/null 2>&1 </dev/null &
}

# follow_logs SERVICE: appends the container's output to its log file until the container is removed.
# `docker logs -f` ends when the container stops; when the restart policy starts it again, only what
# it printed since is appended. Tied to the container's id, so a new container of the same name gets
# its own follower and this one ends.
follow_logs() {
  local s=$1 id since=""
  id=$(docker inspect -f '{{.Id}}' "kiln-$s" 2>/dev/null) || return 0
  while docker inspect "$id" >/dev/null 2>&1; do
    docker logs -f ${since:+--since "$since"} "$id" >>"$KILN_LOGS/$s.log" 2>&1 </dev/null || true
    since=$(date +%s.%N)
    while [[ $(docker inspect -f '{{.State.Running}}' "$id" 2>/dev/null) == false ]]; do sleep 1; done
  done
}

start_one() {
  local s=$1 env_file
  env_file=$(write_env "$s")
  # The end-to-end suite runs the services as containers of its own under the same names; a make up
  # during it (the newcomer test) leaves them to the suite rather than replacing them.
  if running "$s" && [[ $(docker inspect -f '{{index .Config.Labels "org.kiln.stack"}}' "kiln-$s" 2>/dev/null) == e2e ]]; then
    ok "$s running (the end-to-end suite's container)"; return
  fi
  # A service started with other settings (new credentials, a changed default), or from an image that
  # has since been rebuilt, is started again.
  if running "$s" && ! cmp -s "$env_file" "$RUN/$s.env.started"; then
    warn "$s runs with other settings: restarting it"; stop_one "$s"
  elif [[ $MODE == images ]] && running "$s" && [[ $(docker inspect -f '{{.Image}}' "kiln-$s" 2>/dev/null) \
      != $(docker image inspect -f '{{.Id}}' "$REGISTRY/kiln/$s:latest" 2>/dev/null) ]]; then
    warn "$s runs an older image: restarting it"; stop_one "$s"
  elif [[ $MODE == images ]] && running "$s" && [[ $(docker inspect -f '{{index .Config.Labels "org.kiln.run-options"}}' \
      "kiln-$s" 2>/dev/null) != "$(run_options "$s")" ]]; then
    warn "$s runs with another restart policy or memory limit: restarting it"; stop_one "$s"
  fi
  if running "$s"; then ok "$s already running"; return; fi
  cp "$env_file" "$RUN/$s.env.started"
  if [[ $s == gateway ]] && port_open "$KILN_GATEWAY_HOST" "$KILN_GATEWAY_PORT"; then
    die "port $KILN_GATEWAY_PORT is already in use, so the gateway cannot listen there" \
      "stop that program (ss -ltnp 'sport = :$KILN_GATEWAY_PORT' shows it) or set KILN_GATEWAY_PORT"
  fi
  : >"$KILN_LOGS/$s.log"
  if [[ $MODE == images ]]; then start_container "$s"; else start_process "$s"; fi
}

start() {
  [[ $MODE == images ]] && "$KILN_ROOT/deploy/local/images.sh" "${names[@]}"
  for s in "${names[@]}"; do start_one "$s"; done
  for s in "${names[@]}"; do
    if ! wait_for "$s" 90 ready "$s"; then
      tail -n 15 "$KILN_LOGS/$s.log" >&2; die "the $s did not become ready (log: $KILN_LOGS/$s.log)" "read the log above"
    fi
    if [[ $MODE == venv ]]; then ok "$s ready (process)"; else ok "$s ready (container kiln-$s)"; fi
  done
}

stop_one() {  # stop_one SERVICE, whichever way it was started: it finishes the event in hand, commits and leaves its group
  local s=$1 pidfile="$RUN/$1.pid" pid
  if [[ -n $(docker ps -aq -f "name=^kiln-$s\$" 2>/dev/null) ]]; then
    docker stop -t 40 "kiln-$s" >/dev/null 2>&1 || true
    docker rm -f "kiln-$s" >/dev/null 2>&1 || true
    ok "$s stopped"
  fi
  pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  pid=$(cat "$pidfile")
  kill -TERM "$pid"
  wait_for "$s exit" 40 bash -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"; ok "$s stopped"
}

stop() {  # all at once: each finishes its own event in hand, whatever the others do
  for s in "${names[@]}"; do stop_one "$s" & done
  wait
}

status() {
  for s in "${names[@]}"; do
    local where=""
    case $s in
      gateway) where="http://$KILN_GATEWAY_HOST:$KILN_GATEWAY_PORT/" ;;
      analytics) where="http://127.0.0.1:$KILN_ANALYTICS_PORT/ (dashboard)" ;;
      resolver) where="http://127.0.0.1:$KILN_RESOLVER_METRICS_PORT/metrics" ;;
      builder) where="http://127.0.0.1:$KILN_BUILDER_METRICS_PORT/metrics" ;;
      launcher) where="http://127.0.0.1:$KILN_LAUNCHER_METRICS_PORT/metrics" ;;
    esac
    if [[ $MODE == images ]] && running "$s"; then
      # A container the restart policy brought back says so: an OOM kill is otherwise silent.
      local restarts; restarts=$(docker inspect -f '{{.RestartCount}} {{.State.OOMKilled}}' "kiln-$s" 2>/dev/null || echo "0 false")
      [[ ${restarts%% *} != 0 ]] && where+="  (restarted ${restarts%% *} time(s) after failing)"
    fi
    if running "$s"; then printf '%-10s running   %s\n' "$s" "$where"; else printf '%-10s stopped   %s\n' "$s" "$where"; fi
  done
}

case "${1:-}" in
  start) start ;; stop) stop ;; status) status ;;
  env) [[ -n ${2:-} ]] || die "services.sh env needs a service name" "services.sh env gateway"; write_env "$2" ;;
  follow-logs) follow_logs "$2" ;;  # internal: started by start_container
  *) echo "usage: $0 start|stop|status [SERVICE...] | env SERVICE" >&2; exit 2 ;;
esac
