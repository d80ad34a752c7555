#!/usr/bin/env bash
# The main job on a fresh machine, on the embedded default: its own virtual
# environment (in the checkout), then `wsrt dev` (embedded Kafka-compatible
# broker, demo feed on all three topics, and the server) in the folder you ran
# this from, where it leaves a .env for the other commands it prints. Ctrl-C
# stops everything.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

. "$root/scripts/venv.sh"
venv_dir=${WSRT_VENV:-.venv}
(cd "$root" && venv "$venv_dir" embedded,load)
case $venv_dir in /*) ;; *) venv_dir=$root/$venv_dir ;; esac
exec "$venv_dir/bin/wsrt" dev "$@"
