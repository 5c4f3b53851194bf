#!/usr/bin/env bash
# Usage: bench/run.sh [--smoke] [--rounds N] [--duration SECONDS]
#        bench/run.sh --sessions [N]
#        bench/run.sh --queue [--smoke] [--rounds N] [--duration SECONDS] [--store sqlite|postgres|both]
# Installs the load tools when missing (nginx, wrk, curl, python3, PostgreSQL), builds the relay and
# the connector in release mode (and the peers rathole and bore, pinned, into target/peers/), runs bench/bench.py (interleaved rounds over every path) and writes
# docs/benchmarks.md and docs/benchmarks.svg from the results. Not a test: nothing here is timed
# by CI. --smoke runs one short round to prove the harness works. --sessions runs only the
# connector-session benchmark, --queue only the queue-mode one (bench/queue.py →
# bench/results/queue.json); both then write the page again from the last full run.
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
# rathole (a peer measured beside the relay, bench/peers.py) links OpenSSL for its TLS transport.
have pkg-config || missing+=(pkg-config)
[ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
# initdb, pg_ctl, pgbench, psql: the cluster paths and the queue benchmark start their own PostgreSQL.
{ have pgbench && have psql && { have initdb || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }; } ||
    missing+=(postgresql postgresql-client)
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
if [ "${1:-}" = "--queue" ]; then
    # Only the queue-mode benchmark; a smoke run renders bench/results/smoke.md (if a smoke run of
    # bench.py left smoke.json), never docs/.
    shift
    python3 bench/queue.py "$@"
    case " $* " in
    *" --smoke "*)
        if [ -f bench/results/smoke.json ]; then exec python3 bench/report.py bench/results/smoke.json; fi
        exit 0 ;;
    esac
    exec python3 bench/report.py bench/results/latest.json
fi
python3 bench/bench.py "$@"
if [ "${1:-}" = "--smoke" ]; then
    exec python3 bench/sessions.py --smoke
fi
