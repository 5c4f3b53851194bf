#!/usr/bin/env bash
# Usage: scripts/package.sh [--profile release|debug] [--out DIR] [--build]
# Builds the .deb packages relay-server and relay-connector with dpkg-deb from the binaries of one
# cargo profile (default release: target/release/; debug: target/debug/, what scripts/test.sh
# builds), the files in packaging/ and the version in Cargo.toml. Writes DIR/*.deb (default
# target/packages) and prints their paths. It never builds unless --build is given (then
# `cargo build --locked -p relay-server -p connector --bins` in that profile): CI packages the
# binaries its test run already built.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

profile=release
out=target/packages
build=no
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile=${2:?--profile needs release or debug}; shift 2 ;;
        --profile=*) profile=${1#*=}; shift ;;
        --out) out=${2:?--out needs a directory}; shift 2 ;;
        --out=*) out=${1#*=}; shift ;;
        --build) build=yes; shift ;;
        -h|--help) sed -n '2,8s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "package.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
# Release packages are small (xz); debug ones are for the test run, where time matters (gzip -1).
case "$profile" in
    release) cargo_profile=(--release); compress=(-Zxz) ;;
    debug|dev) profile=debug; cargo_profile=(); compress=(-Zgzip -z1) ;;
    *) echo "package.sh: --profile is release or debug, not $profile" >&2; exit 2 ;;
esac
for tool in dpkg-deb dpkg; do
    command -v "$tool" >/dev/null || { echo "package.sh: $tool is missing (apt-get install dpkg)" >&2; exit 1; }
done

target_dir=${CARGO_TARGET_DIR:-target}
bin_dir=$target_dir/$profile
if [ "$build" = yes ]; then
    cargo build --locked "${cargo_profile[@]}" -p relay-server -p connector --bins
fi

# The version of the workspace ([workspace.package] version), as Debian spells it (1.0.0-rc.1 →
# 1.0.0~rc.1, which sorts before 1.0.0).
cargo_version=$(awk '
    /^\[/ { section = $0 }
    section == "[workspace.package]" && $1 == "version" { gsub(/[" ]/, "", $3); print $3; exit }
' Cargo.toml)
[ -n "$cargo_version" ] || { echo "package.sh: no [workspace.package] version in Cargo.toml" >&2; exit 1; }
deb_version=${cargo_version//-/\~}
arch=$(dpkg --print-architecture)

mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# shared library dependencies of a binary: dpkg-shlibdeps (dpkg-dev) when present, else the two
# libraries every Rust binary here links (glibc, libgcc_s), unversioned.
shlib_depends() {
    local bin=$1
    if command -v dpkg-shlibdeps >/dev/null; then
        mkdir -p "$work/shlibs/debian"
        printf 'Source: relay\n\nPackage: relay\nArchitecture: any\n' >"$work/shlibs/debian/control"
        (cd "$work/shlibs" && dpkg-shlibdeps -O "$bin" 2>/dev/null) | sed -n 's/^shlibs:Depends=//p'
    else
        echo "libc6, libgcc-s1"
    fi
}

# package NAME BINARY UNIT CONFIG_DIR CONFIG_FILE SUMMARY DESCRIPTION
package() {
    local name=$1 binary=$2 unit=$3 etc=$4 config=$5 summary=$6 description=$7
    local exe=$bin_dir/$binary
    if [ ! -x "$exe" ]; then
        echo "package.sh: $exe is missing; build it first (cargo build --locked ${cargo_profile[*]} -p relay-server -p connector), or pass --build" >&2
        exit 1
    fi
    # A stale binary would ship another version under this one's name.
    local said
    said=$("$exe" --version)
    if [ "$said" != "$binary $cargo_version" ]; then
        echo "package.sh: $exe says \"$said\", Cargo.toml says $cargo_version: rebuild it" >&2
        exit 1
    fi
    local stage=$work/$name
    install -d "$stage/DEBIAN" "$stage/usr/bin" "$stage/lib/systemd/system" "$stage/$etc" \
        "$stage/usr/share/doc/$name"
    install -m 0755 "$exe" "$stage/usr/bin/$binary"
    # Packages carry no debug information (a debug build's line tables are most of its size).
    if command -v strip >/dev/null; then
        strip --strip-debug "$stage/usr/bin/$binary"
    fi
    install -m 0644 "packaging/$name/$unit" "$stage/lib/systemd/system/$unit"
    install -m 0644 "packaging/$name/$(basename "$config")" "$stage/$etc/$(basename "$config")"
    for doc in docs/install.md docs/configuration.md docs/operations.md README.md; do
        install -m 0644 "$doc" "$stage/usr/share/doc/$name/$(basename "$doc")"
    done
    cat >"$stage/usr/share/doc/$name/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: relay

Files: *
License: Apache-2.0
 On Debian systems the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF
    for script in postinst prerm postrm; do
        install -m 0755 "packaging/$name/$script" "$stage/DEBIAN/$script"
    done
    # Everything under /etc is a conffile: an upgrade keeps the operator's edits.
    (cd "$stage" && find etc -type f -printf '/%p\n' | sort) >"$stage/DEBIAN/conffiles"
    local size
    size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
    cat >"$stage/DEBIAN/control" <<EOF
Package: $name
Version: $deb_version
Architecture: $arch
Maintainer: relay maintainers <relay@localhost>
Installed-Size: $size
Depends: $(shlib_depends "$root/$exe")
Section: net
Priority: optional
Description: $summary
$(printf '%s\n' "$description" | fold -s -w 76 | sed 's/ *$//; s/^/ /')
EOF
    local deb=$out/${name}_${deb_version}_${arch}.deb
    dpkg-deb --root-owner-group "${compress[@]}" --build "$stage" "$deb" >/dev/null
    echo "$deb"
}

package relay-server relay-server relay-server.service etc/relay-server etc/relay-server/relay.toml \
    "relay of a self-hosted HTTPS reverse-proxy tunnel" \
    "The internet-facing side of the tunnel: HTTPS ingress for visitors, the QUIC and TLS endpoint for connectors, tenants, queue mode and the management web on its admin listener. Installs /usr/bin/relay-server, the relay-server systemd unit (not started on install), /etc/relay-server/relay.toml and the relay-server system user; data lives in /var/lib/relay-server."
package relay-connector connector relay-connector.service etc/relay-connector etc/relay-connector/connector.toml \
    "connector of a self-hosted HTTPS reverse-proxy tunnel" \
    "The on-premises agent: dials out to the relay and forwards its requests to local backends, with no inbound port. Installs /usr/bin/connector, the relay-connector systemd unit (not started on install), /etc/relay-connector/connector.toml and the relay-connector system user."
