#!/usr/bin/env bash
# Usage: bench/run.sh [--smoke] [--rounds N] [--duration SECONDS]
# Installs the load tools when missing (nginx, wrk, curl, python3), builds the relay and the
# connector in release mode, runs bench/bench.py (interleaved rounds over every path) and writes
# docs/benchmarks.md and docs/benchmarks.svg from the results. Not a test: nothing here is timed
# by CI. --smoke runs one short round to prove the harness works.
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1; }
missing=()
have nginx || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
have wrk || missing+=(wrk)
have h2load || missing+=(nghttp2-client)
have openssl || missing+=(openssl)
have curl || missing+=(curl)
have python3 || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cargo build --release --locked -p relay-server -p connector -p session-sim
if [ "${1:-}" = "--sessions" ]; then
    # Only the connector-session benchmark: bench/run.sh --sessions [N]
    python3 bench/sessions.py --sessions "${2:-10000}"
    exec python3 bench/report.py bench/results/latest.json
fi
python3 bench/bench.py "$@"
if [ "${1:-}" = "--smoke" ]; then
    exec python3 bench/sessions.py --smoke
fi
