# Sourced by dev.sh and test.sh: `venv DIR EXTRAS` creates (once) a virtual
# environment in DIR with Python 3.11+ and installs this checkout with EXTRAS.
#
# It says what it does before each slow step. On a terminal pip shows what it
# downloads, with progress bars; piped (CI) it stays quiet. A second run with
# the same pyproject.toml and extras skips pip (a stamp file in DIR says so).
venv() {
    local dir=$1 extras=$2 python=${PYTHON:-python3}
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "error: wsrt needs Python 3.11 or newer ($python is $("$python" --version 2>&1))" >&2
        exit 2
    fi
    if [ ! -x "$dir/bin/python" ]; then
        echo "== creating the virtual environment $dir ($("$python" --version 2>&1))" >&2
        "$python" -m venv "$dir"
    fi
    local stamp="$dir/.wsrt-installed-${extras//,/-}"
    local want
    want="$("$dir/bin/python" --version 2>&1) $(sha256sum pyproject.toml | cut -c1-16)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        echo "== $dir is up to date with pyproject.toml (wsrt[$extras])" >&2
        return
    fi
    local quiet=(--quiet)
    [ -t 2 ] && quiet=()
    echo "== installing wsrt[$extras] into $dir with pip (the first time downloads the dependencies: a minute or two)" >&2
    # PYTHONWARNINGS: setuptools' editable-install banner is not ours to act on.
    PYTHONWARNINGS=ignore "$dir/bin/python" -m pip install "${quiet[@]}" --upgrade pip >&2
    PYTHONWARNINGS=ignore "$dir/bin/python" -m pip install "${quiet[@]}" -e ".[$extras]" >&2
    echo "$want" > "$stamp"
}
