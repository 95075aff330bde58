#!/bin/sh
# buildctl-daemonless.sh ARG...: `buildctl ARG...` against a buildkitd of its own, started for this
# one command and stopped after it (the name matches the official rootless image's, so either image
# serves a build pod). As a user other than root, buildkitd runs inside RootlessKit's user namespace.
# Settings (environment):
#   BUILDKITD_FLAGS               more buildkitd flags, e.g. --oci-worker-no-process-sandbox
#   BUILDKITD_INSECURE_REGISTRIES host:port,... that buildkitd reaches over plain HTTP (a buildkitd.toml
#                                 is written for them; without it, ~/.config/buildkit/buildkitd.toml
#                                 is read if mounted there)
#   BUILDKITD_START_TIMEOUT       seconds to wait for the daemon to answer (60)
set -eu

uid=$(id -u)
if [ "$uid" = 0 ]; then
  run=/run/buildkit
else
  run=${XDG_RUNTIME_DIR:-/run/user/$uid}
  export XDG_RUNTIME_DIR="$run"
  # buildkitd takes its rootless defaults (state under ~/.local/share/buildkit, config under
  # ~/.config/buildkit) only when USER names someone other than root; a pod sets no USER.
  [ -n "${USER:-}" ] || USER=$(id -un 2>/dev/null || echo "uid$uid")
  export USER
fi
mkdir -p "$run/buildkit"
addr="unix://$run/buildkit/buildkitd.sock"
log="$run/buildkit/buildkitd.log"

config=""
if [ -n "${BUILDKITD_INSECURE_REGISTRIES:-}" ]; then
  config="$run/buildkit/buildkitd.toml"
  : >"$config"
  for registry in $(echo "$BUILDKITD_INSECURE_REGISTRIES" | tr ',' ' '); do
    printf '[registry."%s"]\n  http = true\n  insecure = true\n\n' "$registry" >>"$config"
  done
fi

# BUILDKITD_FLAGS is split into words on purpose: it holds several flags.
# shellcheck disable=SC2086
if [ "$uid" = 0 ]; then
  buildkitd --addr "$addr" ${config:+--config "$config"} ${BUILDKITD_FLAGS:-} >"$log" 2>&1 &
else
  # Host network: RUN steps reach what the pod reaches, under the pod's NetworkPolicy, with no
  # user-mode network stack in between. No copy-up: that is for a network namespace of its own.
  rootlesskit --net=host --subid-source=static --state-dir="$run/rootlesskit-buildkit" \
    buildkitd --addr "$addr" ${config:+--config "$config"} ${BUILDKITD_FLAGS:-} >"$log" 2>&1 &
fi
daemon=$!

stop() {
  kill -TERM "$daemon" 2>/dev/null || return 0
  i=0
  while kill -0 "$daemon" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
  kill -KILL "$daemon" 2>/dev/null || true
}
trap stop EXIT
trap 'exit 143' TERM INT

limit=${BUILDKITD_START_TIMEOUT:-60}
started=$(date +%s)
until buildctl --addr "$addr" debug workers >/dev/null 2>&1; do
  if ! kill -0 "$daemon" 2>/dev/null || [ $(($(date +%s) - started)) -ge "$limit" ]; then
    echo "buildctl-daemonless.sh: buildkitd did not start within ${limit}s; its log:" >&2
    cat "$log" >&2
    exit 1
  fi
  sleep 0.2
done

status=0
buildctl --addr "$addr" "$@" || status=$?
exit "$status"
