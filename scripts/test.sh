#!/usr/bin/env bash
# Usage: scripts/test.sh [extra cargo test args]
# The one test command (README, .ci/run): installs what the tests need when it is missing,
# builds the binaries the end-to-end tests start as processes, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1; }

install_packages() {
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        have sudo || { echo "test.sh: please install: $*" >&2; exit 1; }
        sudo="sudo"
    fi
    if have apt-get; then
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
    else
        echo "test.sh: no apt-get here; please install: $*" >&2
        exit 1
    fi
}

have_initdb() {
    [ -n "${PG_BIN:-}" ] && [ -x "$PG_BIN/initdb" ] && return 0
    have initdb && return 0
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

missing=()
have curl || missing+=(curl)          # the quickstart test runs the printed curl line
have openssl || missing+=(openssl)    # the compose test runs docker-compose.yml's init (a certificate)…
have python3 || missing+=(python3)    # …and its demo backend
have cc || missing+=(gcc)             # aws-lc-sys and other -sys crates build C code
have_initdb || missing+=(postgresql)  # store and relay tests start throwaway PostgreSQL clusters
have runuser || missing+=(util-linux) # as root, the clusters run as the postgres user
have ip || missing+=(iproute2)        # the firewall test builds a network namespace…
have iptables || missing+=(iptables)  # …and drops UDP in it
have slowhttptest || missing+=(slowhttptest)  # slowloris and slow POST against the relay
have node || missing+=(nodejs)        # the browser test drives Chromium with playwright-core…
have npm || missing+=(npm)
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)  # …in headless Chromium
have pebble || missing+=(pebble)      # the ACME tests run pebble, a test CA, and its mock DNS
if [ ${#missing[@]} -gt 0 ]; then
    echo "test.sh: installing ${missing[*]}"
    install_packages "${missing[@]}" ca-certificates
fi
# The CONNECT-proxy tests run a real proxy (Debian 12 packages the binary as tinyproxy-bin).
if ! have tinyproxy; then
    echo "test.sh: installing tinyproxy"
    install_packages tinyproxy-bin || install_packages tinyproxy
fi

# The TLS-inspecting proxy test runs mitmproxy (PyPI), in a venv under target/.
MITM_VENV=target/test-tools/mitmproxy
if [ -z "${MITMDUMP:-}" ] && ! have mitmdump && [ ! -x "$MITM_VENV/bin/mitmdump" ]; then
    echo "test.sh: installing mitmproxy into $MITM_VENV"
    have python3 || install_packages python3
    if ! python3 -m venv "$MITM_VENV" 2>/dev/null; then
        rm -rf "$MITM_VENV"
        install_packages python3-venv
        python3 -m venv "$MITM_VENV"
    fi
    "$MITM_VENV/bin/pip" install --quiet --disable-pip-version-check mitmproxy
fi

# The gRPC test runs real gRPC peers (grpcio from PyPI), in a venv under target/.
GRPC_VENV=target/test-tools/grpc
if [ -z "${GRPC_PYTHON:-}" ] && ! "$GRPC_VENV/bin/python" -c "import grpc" 2>/dev/null; then
    echo "test.sh: installing grpcio into $GRPC_VENV"
    have python3 || install_packages python3
    rm -rf "$GRPC_VENV"
    if ! python3 -m venv "$GRPC_VENV" 2>/dev/null; then
        rm -rf "$GRPC_VENV"
        install_packages python3-venv
        python3 -m venv "$GRPC_VENV"
    fi
    "$GRPC_VENV/bin/pip" install --quiet --disable-pip-version-check "grpcio==1.85.1"
fi

# playwright-core (npm, pinned by package-lock.json) drives Chromium in the browser test.
if [ ! -d testkit/browser/node_modules/playwright-core ]; then
    echo "test.sh: installing playwright-core into testkit/browser/node_modules"
    npm ci --prefix testkit/browser --no-audit --no-fund --loglevel=error
fi

# The pairing interop test runs the published @localfirst/relay client (npm, pinned by
# testkit/pairing/package-lock.json) in Node.
if [ ! -d testkit/pairing/node_modules/@localfirst/relay ]; then
    echo "test.sh: installing @localfirst/relay into testkit/pairing/node_modules"
    npm ci --prefix testkit/pairing --no-audit --no-fund --loglevel=error
fi

# The end-to-end tests start relay-server and connector as real processes.
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"

# A full run also checks what gets installed: the .deb packages built from the debug binaries
# above (dpkg -i, --version, config check, dpkg -r, --purge), and the Windows connector
# (cross-built, then run under Wine against the Linux relay; installs MinGW and Wine if missing).
if [ $# -eq 0 ]; then
    scripts/packages-test.sh
    scripts/windows.sh
fi

# Every end-to-end test of the tunnel once more with the connectors on TLS over TCP (the first
# pass runs them on QUIC): in-process connectors and the spawned binaries read the variable.
if [ $# -eq 0 ]; then
    echo "test.sh: end-to-end suites again over TLS/TCP sessions"
    CONNECTOR_TRANSPORT=tcp cargo test --locked -p testkit \
        --test tunnel --test streaming --test limits --test shutdown --test auth --test processes --test hostnames --test audit --test smuggling \
        --test management_api --test management_pages --test admin_listener --test browser --test grpc --test edge --test targets --test liveness --test compose --test forwarding --test policies
fi
