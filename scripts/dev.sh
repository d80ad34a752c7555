#!/usr/bin/env bash
# The main job on a fresh machine, on the embedded default: its own virtual
# environment, then `wsrt dev` (embedded Kafka-compatible broker, demo feed on
# all three topics, and the server). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/venv.sh
venv_dir=${WSRT_VENV:-.venv}
venv "$venv_dir" embedded,load
exec "$venv_dir/bin/wsrt" dev "$@"
