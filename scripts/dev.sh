#!/usr/bin/env bash
# The main job on a fresh machine, on the embedded default: its own virtual
# environment, then `wsrt dev` (embedded Kafka-compatible broker, demo feed on
# all three topics, and the server). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: wsrt needs Python 3.11 or newer ($python is $("$python" --version 2>&1))" >&2
    exit 2
fi
venv=${WSRT_VENV:-.venv}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e '.[embedded,load]'
exec "$venv/bin/wsrt" dev "$@"
