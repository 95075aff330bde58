#!/usr/bin/env bash
# Installs the project (shared library, five services, test tools) into one virtualenv, .venv.
# Idempotent: skipped while no pyproject or requirements file has changed since the last install.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
VENV="$KILN_ROOT/.venv"
cd "$KILN_ROOT"
command -v python3 >/dev/null || die "python3 is not installed" "apt-get install python3 python3-venv"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "Kiln needs Python 3.11 or newer (found $(python3 -V))" "install python3.11 and put it first on PATH"
want=$(cat lib/kilnbus/pyproject.toml services/*/pyproject.toml requirements-dev.txt | sha256sum | cut -d' ' -f1)
stamp="$VENV/.kiln-install-sha"
if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then ok "virtualenv .venv up to date"; exit 0; fi
step "installing Kiln into .venv"
[[ -x $VENV/bin/python ]] || python3 -m venv "$VENV" || die "python3 cannot make a virtualenv" "apt-get install python3-venv"
"$VENV/bin/pip" install -q --upgrade pip >/dev/null
"$VENV/bin/pip" install -q -r requirements-dev.txt -e lib/kilnbus \
  -e services/gateway -e services/resolver -e services/builder -e services/launcher -e services/analytics \
  >"$KILN_LOGS/venv-install.log" 2>&1 || { tail -n 20 "$KILN_LOGS/venv-install.log" >&2; die "installing Kiln's Python packages failed" "read the log above ($KILN_LOGS/venv-install.log)"; }
echo "$want" >"$stamp"
ok "virtualenv .venv ready"
