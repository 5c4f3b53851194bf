#!/usr/bin/env bash
# Usage: scripts/windows.sh [--release] [--no-wine]
#
# The Windows connector in CI: cross-builds connector.exe for x86_64-pc-windows-gnu (debug unless
# --release), runs `connector.exe --version` under Wine and the end-to-end test testkit/tests/wine.rs
# (connector.exe establishes a QUIC session with the Linux relay-server on loopback and serves a
# request from a local backend), then packages target/dist/connector-windows-x86_64.zip
# (connector.exe + README.txt). Installs what is missing: the Rust target, MinGW-w64, Wine, zip
# (Debian/Ubuntu, apt-get). --no-wine stops after the build and the zip. docs/windows.md explains
# what Wine covers and what it does not.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=debug
run_wine=1
for arg in "$@"; do
    case "$arg" in
        --release) profile=release ;;
        --no-wine) run_wine=0 ;;
        *) echo "usage: scripts/windows.sh [--release] [--no-wine]" >&2; exit 64 ;;
    esac
done

target=x86_64-pc-windows-gnu
started=$SECONDS
step() { printf '\n== %s (%ds)\n' "$*" "$((SECONDS - started))"; }

step "tools"
if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target"
fi
missing=()
command -v x86_64-w64-mingw32-gcc >/dev/null || missing+=(gcc-mingw-w64-x86-64)
command -v zip >/dev/null || missing+=(zip)
if [ "$run_wine" = 1 ] && ! command -v wine >/dev/null; then
    missing+=(wine wine64)
fi
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

step "cross-build connector.exe ($profile)"
cargo_profile=()
[ "$profile" = release ] && cargo_profile=(--release)
cargo build --locked -p connector --target "$target" "${cargo_profile[@]}"
out="target/$target/$profile"
exe="$out/connector.exe"

if [ "$run_wine" = 1 ]; then
    step "shim DLL (test only): bcryptprimitives.dll"
    # Wine 8.0 has no bcryptprimitives.dll, whose ProcessPrng Rust's std needs; see the C file.
    x86_64-w64-mingw32-gcc -O2 -shared -o "$out/bcryptprimitives.dll" \
        testkit/wine/bcryptprimitives.c -ladvapi32

    # A prefix of our own, so that `wineserver -k` below stops only what this script started.
    export WINEPREFIX="${WINEPREFIX:-$PWD/target/wine-prefix}"
    export WINEDEBUG="${WINEDEBUG:--all}"
    trap 'wineserver -k >/dev/null 2>&1 || true' EXIT

    step "wine connector.exe --version"
    version=$(wine "$exe" --version | tr -d '\r')
    echo "$version"
    case "$version" in
        "connector "*) ;;
        *) echo "unexpected --version output: $version" >&2; exit 1 ;;
    esac

    step "end to end: connector.exe under Wine against the Linux relay"
    cargo build --locked -p relay-server --bin relay-server
    WINE_CONNECTOR="$PWD/$exe" cargo test --locked -p testkit --test wine -- --nocapture
fi

step "zip"
dist=target/dist
stage="$dist/connector-windows-x86_64"
rm -rf "$stage" "$dist/connector-windows-x86_64.zip"
mkdir -p "$stage"
cp "$exe" "$stage/connector.exe"
x86_64-w64-mingw32-strip "$stage/connector.exe"
cat > "$stage/README.txt" <<'EOF'
Relay tunnel connector for Windows (x86_64)
===========================================

connector.exe dials out to the relay (QUIC, or TLS over TCP port 443 where UDP is blocked) and
forwards the relay's requests to backends on this network. It never listens on a port.

Install as a service (an elevated PowerShell or cmd):

  1. Create the folder and put the config and the tenant secret in it:

       mkdir C:\ProgramData\relay-connector
       notepad C:\ProgramData\relay-connector\connector.toml
       notepad C:\ProgramData\relay-connector\secret      (the rsk_... secret, one line)

     connector.toml, for example:

       server = "https://relay.example.com"
       tenant = "acme"
       secret_file = "secret"          # relative to this file

       [targets.app]
       url = "http://127.0.0.1:8080"
       # timeout = "30s"
       # http2 = true                  # h2c / ALPN h2, e.g. gRPC
       # preserve_host = true

  2. Check it:    connector.exe config check --config C:\ProgramData\relay-connector\connector.toml
  3. Install:     connector.exe service install
                  (auto-start service "relay-connector", restarted when it fails; the folder is
                  restricted to SYSTEM and Administrators)
  4. Manage:      connector.exe service status | stop | start | uninstall

Logs: the Windows Event Log (Application, source "relay-connector": start, stop, warnings and
errors) and daily files in C:\ProgramData\relay-connector\logs\ (14 days kept). RUST_LOG set
for the service raises the level, e.g. RUST_LOG=debug.

Stopping the service lets requests in flight finish first, as SIGTERM does on Linux.

Without a service (a console):  connector.exe run --config connector.toml
All options:                    connector.exe run --help
More: docs/windows.md and docs/configuration.md in the source repository.
EOF
sed -i 's/$/\r/' "$stage/README.txt"
(cd "$stage" && zip -q -9 "../connector-windows-x86_64.zip" connector.exe README.txt)
ls -l "$dist/connector-windows-x86_64.zip"
zip -sf "$dist/connector-windows-x86_64.zip"

step "done"
