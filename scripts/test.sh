#!/usr/bin/env bash
# The whole test suite, from a fresh machine: its own virtual environment,
# Debian's chromium (and nodejs, npm) where missing, lint and type checks, then unit, browser and
# integration tests against a real Kafka broker that the run starts and stops itself.
#
#   scripts/test.sh                              # Apache Kafka where Java is present
#   WSRT_TEST_BROKER=embedded scripts/test.sh    # the embedded broker of `wsrt dev`
#   scripts/test.sh tests/unit -k hub            # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/venv.sh
venv_dir=${WSRT_TEST_VENV:-.venv-test}
venv "$venv_dir" test

# The browser tests drive Debian's Chromium (never a downloaded browser build).
if ! command -v chromium >/dev/null 2>&1; then
    echo "== installing Debian's chromium for the browser tests (apt-get)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -q
    $sudo apt-get install -y -q chromium
fi

# The OAuth issuer of the Kafka security tests is oidc-provider, run with Node.js.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "== installing Debian's nodejs and npm for the OAuth issuer of the tests (apt-get)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -q
    $sudo apt-get install -y -q nodejs npm
fi

echo "== ruff"
"$venv_dir/bin/ruff" check wsrt tests scripts
"$venv_dir/bin/ruff" format --check wsrt tests scripts
echo "== mypy"
"$venv_dir/bin/mypy"
echo "== pytest"
exec "$venv_dir/bin/pytest" "$@"
