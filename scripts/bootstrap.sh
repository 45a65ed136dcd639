# Sourced by scripts/serve and scripts/test: make .venv hold this checkout, installed.
# Quiet when nothing needs installing; on a failed install, shows pip's output and stops.

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "llm-proxy needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
    return 1
}

# bootstrap EXTRAS: create .venv if missing; (re)install when setup.cfg or the extras changed.
bootstrap() {
    local extras="$1" spec="." python stamp want
    [ -n "$extras" ] && spec=".[$extras]"
    if [ ! -x .venv/bin/python ]; then
        python=$(find_python) || exit 1
        "$python" -m venv .venv || { echo "could not create .venv with $python" >&2; exit 1; }
    fi
    stamp=.venv/.llm-proxy-installed
    want="$(cat setup.cfg pyproject.toml | cksum) $extras"
    # An install for the test extra also satisfies plain serving.
    if [ -f "$stamp" ] && { [ "$(cat "$stamp")" = "$want" ] || \
        { [ -z "$extras" ] && grep -q "^$(cat setup.cfg pyproject.toml | cksum) " "$stamp"; }; }; then
        return 0
    fi
    echo "Installing llm-proxy${extras:+ with [$extras]} into .venv ..." >&2
    if ! .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec" \
            >.venv/install.log 2>&1; then
        cat .venv/install.log >&2
        echo "pip install -e '$spec' failed (log: .venv/install.log)" >&2
        exit 1
    fi
    echo "$want" >"$stamp"
}

# The systemd unit tests verify the units with systemd-analyze (Debian's systemd package).
# Installed when missing and apt-get can (root); says so, and is quiet when it is there.
ensure_systemd_analyze() {
    command -v systemd-analyze >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "systemd-analyze missing: installing Debian's systemd package for the unit tests ..." >&2
        if { apt-get install -y -qq --no-install-recommends systemd || \
             { apt-get update -qq && apt-get install -y -qq --no-install-recommends systemd; }; } \
                >.venv/apt-systemd.log 2>&1; then
            return 0
        fi
        echo "apt-get install systemd failed (log: .venv/apt-systemd.log); the unit tests will fail" >&2
    else
        echo "systemd-analyze missing (install Debian's systemd package); the unit tests will fail" >&2
    fi
}
