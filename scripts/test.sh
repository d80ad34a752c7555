#!/usr/bin/env bash
# The whole test suite, from a fresh machine: its own virtual environment,
# lint and type checks, then unit and integration tests against a real Kafka
# broker that the run starts and stops itself.
#
#   scripts/test.sh                              # Apache Kafka where Java is present
#   WSRT_TEST_BROKER=embedded scripts/test.sh    # the embedded broker of `wsrt dev`
#   scripts/test.sh tests/unit -k hub            # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/venv.sh
venv_dir=${WSRT_TEST_VENV:-.venv-test}
venv "$venv_dir" test

echo "== ruff"
"$venv_dir/bin/ruff" check wsrt tests scripts
"$venv_dir/bin/ruff" format --check wsrt tests scripts
echo "== mypy"
"$venv_dir/bin/mypy"
echo "== pytest"
exec "$venv_dir/bin/pytest" "$@"
