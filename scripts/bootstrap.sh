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

# bootstrap_clients: the npm packages pinned in tests/npm (the real Claude Code and Codex CLIs the
# tests drive) installed into a cache outside the checkout that survives between runs:
# ${LLM_PROXY_TEST_CACHE:-~/.cache/llm-proxy-tests}/npm-<sha256 of package.json + lock, 16 hex>,
# the directory tests/realclients.py looks in. Each pinned set has its own directory, so
# checkouts with different pins never disturb each other; one unused for 30 days is removed.
# Quiet when installed; when npm is missing or fails, says so and goes on (the tests that need
# the CLIs then skip, or fail under CI).
bootstrap_clients() {
    local cache="${LLM_PROXY_TEST_CACHE:-${HOME:-~}/.cache/llm-proxy-tests}" dir
    dir="$cache/npm-$(cat tests/npm/package.json tests/npm/package-lock.json | sha256sum | cut -c1-16)"
    if [ -f "$dir/.installed" ]; then
        touch "$dir"
        return 0
    fi
    if ! command -v npm >/dev/null 2>&1; then
        echo "npm not found: the tests with the real Claude Code and Codex CLIs cannot run" >&2
        return 0
    fi
    mkdir -p "$cache" || return 0
    # One installer at a time; a concurrent run waits, then finds the work done.
    ( flock 9
      [ -f "$dir/.installed" ] && exit 0
      echo "Installing the test clients (tests/npm/package.json) into $dir ..." >&2
      rm -rf "$dir" && mkdir -p "$dir" && cp tests/npm/package.json tests/npm/package-lock.json "$dir/" || exit 1
      if ! npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error >"$dir.log" 2>&1; then
          tail -n 20 "$dir.log" >&2
          echo "npm ci failed (log: $dir.log): the tests with the real CLIs cannot run" >&2
          exit 1
      fi
      touch "$dir/.installed"
      find "$cache" -mindepth 1 -maxdepth 1 -name 'npm-*' -mtime +30 -exec rm -rf {} +
    ) 9>"$cache/.install.lock" || true
}

# in_loopback_namespace CMD…: run CMD in a new network namespace with only `lo` (up), as root or,
# failing that, in a user namespace; nothing it starts can reach beyond this machine. Runs CMD
# unconfined when neither is possible (the tests that need the namespace then skip).
in_loopback_namespace() {
    local flags
    if command -v unshare >/dev/null 2>&1 && command -v ip >/dev/null 2>&1; then
        for flags in -n -rn; do
            if unshare "$flags" sh -c 'ip link set lo up' 2>/dev/null; then
                exec unshare "$flags" sh -c 'ip link set lo up && exec "$@"' sh "$@"
            fi
        done
    fi
    exec "$@"
}

# ensure_command COMMAND PACKAGE WHAT: Debian's PACKAGE, installed when COMMAND is missing and
# apt-get can (root), for WHAT; says so, and is quiet when the command is there.
ensure_command() {
    local command="$1" package="$2" what="$3"
    command -v "$command" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "$command missing: installing Debian's $package package for $what ..." >&2
        if { apt-get install -y -qq --no-install-recommends "$package" || \
             { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$package"; }; } \
                >".venv/apt-$package.log" 2>&1; then
            return 0
        fi
        echo "apt-get install $package failed (log: .venv/apt-$package.log); $what will fail" >&2
    else
        echo "$command missing (install Debian's $package package); $what will fail" >&2
    fi
}

# The systemd unit tests verify the units with systemd-analyze (Debian's systemd package).
ensure_systemd_analyze() {
    ensure_command systemd-analyze systemd "the unit tests"
}

# The shell integration runs in real bash, zsh and fish (tests/test_shell_integration.py).
ensure_shells() {
    ensure_command bash bash "the shell tests"
    ensure_command zsh zsh "the shell tests"
    ensure_command fish fish "the shell tests"
}

# bootstrap_wheelhouse: wheels of llm-proxy's dependencies and of its build backend in
# .venv/wheelhouse, made here, before the tests run in their loopback-only namespace, where
# tests/test_install.py installs the tool with pipx from the checkout without an index
# (--no-index --find-links .venv/wheelhouse). Made again when setup.cfg or pyproject.toml
# change; quiet when it is there; when pip fails, says so and goes on (that test then fails
# under CI, skips elsewhere).
bootstrap_wheelhouse() {
    local dir=.venv/wheelhouse want
    want="$(cat setup.cfg pyproject.toml | cksum)"
    [ -f "$dir/.made" ] && [ "$(cat "$dir/.made")" = "$want" ] && return 0
    echo "Making .venv/wheelhouse (llm-proxy's dependencies, for the install test) ..." >&2
    rm -rf "$dir" && mkdir -p "$dir" || return 0
    .venv/bin/python -c '
import tomllib
from importlib.metadata import requires
with open("pyproject.toml", "rb") as f:
    build = tomllib.load(f)["build-system"]["requires"]
print("\n".join([r for r in requires("llm-proxy") if "extra ==" not in r] + build))' >"$dir/requirements.txt"
    if .venv/bin/python -m pip wheel --quiet --disable-pip-version-check -w "$dir" -r "$dir/requirements.txt" \
            >.venv/wheelhouse.log 2>&1; then
        echo "$want" >"$dir/.made"
    else
        tail -n 20 .venv/wheelhouse.log >&2
        echo "pip wheel failed (log: .venv/wheelhouse.log): the install test cannot run" >&2
    fi
}

# The explorer's browser tests drive a real headless Chromium: Debian's chromium package (never
# a browser Playwright would download).
ensure_chromium() {
    ensure_command chromium chromium "the explorer's browser tests"
}
