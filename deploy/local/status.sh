#!/usr/bin/env bash
# One line per part of the local stack: running or stopped, and where.
set -uo pipefail
here="$(dirname "$0")"
source "$here/lib.sh"
source "$here/kiln.env"
"$here/kafka.sh" status
"$here/docker.sh" status
"$here/network.sh" status
"$here/registry.sh" status
if [[ -f $KILN_STATE/base-image ]]; then echo "base image $(cat "$KILN_STATE/base-image")"; else echo "base image not built"; fi
"$here/hub.sh" status
"$here/services.sh" status
"$here/sample.sh" status
