#!/usr/bin/env bash
# Brings Kiln up on this machine, all on 127.0.0.1, installing what is missing. Idempotent.
#   up.sh          everything: infrastructure and the five services
#   up.sh infra    only what the tests need underneath (Kafka, Docker, registry, base image, hub)
set -euo pipefail
here="$(dirname "$0")"
source "$here/lib.sh"
source "$here/kiln.env"
started=$SECONDS
echo "kiln: bringing the local stack up (logs in $KILN_LOGS)"
"$here/install-system.sh"
"$here/venv.sh"
"$here/kafka.sh" start
"$here/docker.sh" start
"$here/network.sh" start
"$here/registry.sh" start
"$here/base-image.sh"
"$here/hub.sh" start
if [[ ${1:-all} != infra ]]; then
  "$here/services.sh" start
  "$here/sample.sh" start
  printf '\nKiln is up in %ss. Open http://%s:%s/ and launch a repository,\n' "$((SECONDS - started))" "$KILN_GATEWAY_HOST" "$KILN_GATEWAY_PORT"
  printf 'or launch the sample repository served from this machine:\n  %s\n' "$("$here/sample.sh" url)"
  echo "Analytics: http://127.0.0.1:$KILN_ANALYTICS_PORT/. 'make status' shows each part and its address; 'make down' stops them."
else
  ok "infrastructure up in $((SECONDS - started))s"
fi
