# Sourced by dev.sh and test.sh: `venv DIR EXTRAS` creates (once) a virtual
# environment in DIR with Python 3.11+ and installs this checkout with EXTRAS.
venv() {
    local dir=$1 extras=$2 python=${PYTHON:-python3}
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "error: wsrt needs Python 3.11 or newer ($python is $("$python" --version 2>&1))" >&2
        exit 2
    fi
    [ -x "$dir/bin/python" ] || "$python" -m venv "$dir"
    "$dir/bin/python" -m pip install --quiet --upgrade pip
    "$dir/bin/python" -m pip install --quiet -e ".[$extras]"
}
