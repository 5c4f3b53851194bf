#!/usr/bin/env bash
# Usage: scripts/packages-test.sh [--profile debug|release]
# Builds the .deb packages (scripts/package.sh) from the binaries already built in that profile
# (default debug: what scripts/test.sh builds), installs them on this machine with dpkg -i, checks
# what they installed (binaries, units, configs and their modes, system users), runs --version and
# `config check` on the shipped configs as the service users, then removes and purges them and
# checks that everything is gone. Needs root (or passwordless sudo); otherwise it says so and skips.
# Refuses to touch a machine where either package, or its /etc directory, is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=debug
case "${1:-}" in
    "") ;;
    --profile) profile=${2:?--profile needs debug or release} ;;
    --profile=*) profile=${1#*=} ;;
    -h|--help) sed -n '2,8s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "packages-test.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
esac

if [ "$(id -u)" = 0 ]; then
    sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo=(sudo)
else
    echo "packages-test.sh: SKIPPED: installing packages needs root or passwordless sudo (CI runs as root)"
    exit 0
fi
for tool in dpkg dpkg-deb dpkg-statoverride runuser; do
    command -v "$tool" >/dev/null || {
        echo "packages-test.sh: SKIPPED: no $tool here (not a dpkg system)"
        exit 0
    }
done

packages=(relay-server relay-connector)
for p in "${packages[@]}"; do
    if dpkg-query -W -f '${db:Status-Status}' "$p" 2>/dev/null | grep -qv '^not-installed$'; then
        echo "packages-test.sh: package $p is installed on this machine; not touching it" >&2
        exit 1
    fi
done
for d in /etc/relay-server /etc/relay-connector /var/lib/relay-server; do
    if [ -e "$d" ]; then
        echo "packages-test.sh: $d exists on this machine; not touching it" >&2
        exit 1
    fi
done

fail() { echo "packages-test.sh: FAILED: $*" >&2; exit 1; }
step() { echo "packages-test.sh: $*"; }
# expect_code CODE OUTFILE COMMAND…: runs it, keeps stdout+stderr in OUTFILE, checks the exit code.
expect_code() {
    local want=$1 file=$2 code=0
    shift 2
    "$@" >"$file" 2>&1 || code=$?
    [ "$code" = "$want" ] || { cat "$file" >&2; fail "$* exited $code, expected $want"; }
}
# mode_owner PATH WANT: e.g. mode_owner /etc/relay-server "750 root:relay-server"
mode_owner() {
    local got
    got=$(stat -c '%a %U:%G' "$1")
    [ "$got" = "$2" ] || fail "$1 is $got, expected $2"
}

work=$(mktemp -d)
installed=no
cleanup() {
    if [ "$installed" = yes ]; then
        "${sudo[@]}" dpkg --purge "${packages[@]}" >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

step "building packages from target/$profile"
mapfile -t debs < <(scripts/package.sh --profile "$profile" --out "$work/debs")
[ "${#debs[@]}" = 2 ] || fail "package.sh made ${#debs[@]} packages, expected 2"
version=$(dpkg-deb -f "${debs[0]}" Version)

step "installing ${debs[*]##*/}"
installed=yes
"${sudo[@]}" dpkg -i "${debs[@]}" >"$work/install.log" 2>&1 || { cat "$work/install.log" >&2; fail "dpkg -i"; }
for p in "${packages[@]}"; do
    [ "$(dpkg-query -W -f '${db:Status-Status}' "$p")" = installed ] || fail "$p is not installed"
done

step "checking the installed files"
for f in /usr/bin/relay-server /usr/bin/connector; do
    [ -x "$f" ] || fail "$f is missing"
done
for f in /lib/systemd/system/relay-server.service /lib/systemd/system/relay-connector.service \
    /usr/share/doc/relay-server/install.md /usr/share/doc/relay-connector/copyright; do
    [ -f "$f" ] || fail "$f is missing"
done
getent passwd relay-server >/dev/null || fail "no system user relay-server"
getent passwd relay-connector >/dev/null || fail "no system user relay-connector"
mode_owner /etc/relay-server "750 root:relay-server"
mode_owner /etc/relay-server/relay.toml "640 root:relay-server"
mode_owner /etc/relay-connector "750 root:relay-connector"
mode_owner /etc/relay-connector/connector.toml "640 root:relay-connector"
mode_owner /var/lib/relay-server "750 relay-server:relay-server"
dpkg-query --showformat='${Conffiles}\n' -W relay-server | grep -q '^ /etc/relay-server/relay.toml ' ||
    fail "/etc/relay-server/relay.toml is not a conffile"
dpkg-query --showformat='${Conffiles}\n' -W relay-connector | grep -q '^ /etc/relay-connector/connector.toml ' ||
    fail "/etc/relay-connector/connector.toml is not a conffile"
if command -v systemd-analyze >/dev/null; then
    # Unknown directives, bad values and missing executables fail the check.
    expect_code 0 "$work/verify.log" systemd-analyze verify \
        /lib/systemd/system/relay-server.service /lib/systemd/system/relay-connector.service
    if [ -s "$work/verify.log" ]; then
        cat "$work/verify.log" >&2
        fail "systemd-analyze verify complained about the units"
    fi
fi

step "--version"
expect_code 0 "$work/out" relay-server --version
[ "$(cat "$work/out")" = "relay-server ${version//\~/-}" ] || fail "relay-server --version: $(cat "$work/out")"
expect_code 0 "$work/out" connector --version
[ "$(cat "$work/out")" = "connector ${version//\~/-}" ] || fail "connector --version: $(cat "$work/out")"

step "relay-server config check on the shipped config, as the service user"
as_relay=("${sudo[@]}" runuser -u relay-server --)
expect_code 0 "$work/out" "${as_relay[@]}" relay-server config check --config /etc/relay-server/relay.toml
grep -qx 'data_dir = "/var/lib/relay-server"' "$work/out" || { cat "$work/out" >&2; fail "config check: data_dir"; }
grep -qx 'https = "0.0.0.0:8443"' "$work/out" || { cat "$work/out" >&2; fail "config check: listen.https"; }
# The service user can create its database and keys where the config puts them.
expect_code 0 "$work/out" "${as_relay[@]}" relay-server --config /etc/relay-server/relay.toml migrate
[ "$(stat -c %U /var/lib/relay-server/relay.db)" = relay-server ] || fail "relay.db is not the service user's"
# Other users cannot read the config (it may hold a database password).
if getent passwd nobody >/dev/null; then
    expect_code 64 "$work/out" "${sudo[@]}" runuser -u nobody -- relay-server config check --config /etc/relay-server/relay.toml
    grep -q 'cannot read config file' "$work/out" || { cat "$work/out" >&2; fail "nobody read the relay config"; }
fi

step "connector config check on the shipped config, as the service user"
as_connector=("${sudo[@]}" runuser -u relay-connector --)
# As shipped the config is a template: it names a secret file the operator creates.
expect_code 64 "$work/out" "${as_connector[@]}" connector config check --config /etc/relay-connector/connector.toml
grep -q '/etc/relay-connector/secret' "$work/out" || { cat "$work/out" >&2; fail "config check does not name the missing secret file"; }
# Filled in as docs/install.md says: a secret readable by the service's group only.
secret="rsk_packages-test-$RANDOM$RANDOM"
"${sudo[@]}" install -m 0640 -g relay-connector /dev/null /etc/relay-connector/secret
echo "$secret" | "${sudo[@]}" tee /etc/relay-connector/secret >/dev/null
expect_code 0 "$work/out" "${as_connector[@]}" connector config check --config /etc/relay-connector/connector.toml
grep -q 'relay.example.com' "$work/out" || { cat "$work/out" >&2; fail "connector config check printed no settings"; }
if grep -q "$secret" "$work/out"; then fail "connector config check printed the secret"; fi

step "dpkg -r: binaries and units go, configuration and data stay"
"${sudo[@]}" dpkg -r "${packages[@]}" >"$work/remove.log" 2>&1 || { cat "$work/remove.log" >&2; fail "dpkg -r"; }
for f in /usr/bin/relay-server /usr/bin/connector /lib/systemd/system/relay-server.service \
    /lib/systemd/system/relay-connector.service; do
    [ ! -e "$f" ] || fail "$f is still there after dpkg -r"
done
for f in /etc/relay-server/relay.toml /etc/relay-connector/connector.toml /etc/relay-connector/secret \
    /var/lib/relay-server/relay.db; do
    [ -e "$f" ] || fail "$f is gone after dpkg -r (only --purge removes it)"
done

step "dpkg --purge: configuration, data and overrides go; the users stay"
"${sudo[@]}" dpkg --purge "${packages[@]}" >"$work/purge.log" 2>&1 || { cat "$work/purge.log" >&2; fail "dpkg --purge"; }
installed=no
for d in /etc/relay-server /etc/relay-connector /var/lib/relay-server; do
    [ ! -e "$d" ] || fail "$d is still there after dpkg --purge"
done
for p in /etc/relay-server /etc/relay-server/relay.toml /etc/relay-connector /etc/relay-connector/connector.toml; do
    if dpkg-statoverride --list "$p" >/dev/null 2>&1; then fail "a stat override for $p is left"; fi
done
for p in "${packages[@]}"; do
    if dpkg-query -W -f '${db:Status-Status}' "$p" 2>/dev/null | grep -qv '^not-installed$'; then
        fail "$p is still known to dpkg after --purge"
    fi
done

step "passed"
