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

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: wsrt needs Python 3.11 or newer ($python is $("$python" --version 2>&1))" >&2
    exit 2
fi
venv=${WSRT_TEST_VENV:-.venv-test}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e '.[test]'

echo "== ruff"
"$venv/bin/ruff" check wsrt tests scripts
"$venv/bin/ruff" format --check wsrt tests scripts
echo "== mypy"
"$venv/bin/mypy"
echo "== pytest"
exec "$venv/bin/pytest" "$@"
