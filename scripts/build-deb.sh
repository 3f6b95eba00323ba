#!/usr/bin/env bash
# Build a Debian package of ctdb-rs (dpkg-deb; no other tool needed) from
# what scripts/install.sh installs with PREFIX=/usr: the same paths as
# Debian's ctdb package, which it conflicts with and replaces.
#
# usage: scripts/build-deb.sh [OUTDIR]   (default target/debian); prints the
#        path of the .deb on stdout
# Environment: CTDB_RS_BIN (already built binaries; default: build them).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${1:-$root/target/debian}
mkdir -p "$out"
out=$(cd "$out" && pwd)
stage=$(mktemp -d "${TMPDIR:-/tmp}/ctdb-rs-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
pkg=$stage/root

PREFIX=/usr DESTDIR=$pkg ./scripts/install.sh

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
arch=$(dpkg --print-architecture)
size=$(du -sk "$pkg" | cut -f1)
install -d "$pkg/DEBIAN"
cat > "$pkg/DEBIAN/control" <<C
Package: ctdb-rs
Version: $version
Architecture: $arch
Maintainer: ctdb-rs developers <ctdb-rs@localhost>
Installed-Size: $size
Depends: libc6
Conflicts: ctdb
Replaces: ctdb
Section: net
Priority: optional
Description: clustered database daemon, a drop-in for Samba's CTDB 4.17
 ctdbd, the ctdb tool, ctdb_recovery_helper, ctdb_takeover_helper,
 ctdb_mutex_fcntl_helper and ctdb-eventd of ctdb-rs, a Rust
 reimplementation of CTDB speaking CTDB 4.17's protocol, with the same
 configuration files, paths and systemd unit name as Debian's ctdb package.
 CTDB's event scripts are not included.
C
printf '/etc/ctdb/ctdb.conf\n/etc/logrotate.d/ctdb\n' > "$pkg/DEBIAN/conffiles"
cat > "$pkg/DEBIAN/postinst" <<'S'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || true; fi
S
cat > "$pkg/DEBIAN/prerm" <<'S'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl stop ctdb.service >/dev/null 2>&1 || true
fi
S
chmod 0755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/prerm"
deb=$out/ctdb-rs_${version}_${arch}.deb
dpkg-deb --root-owner-group --build "$pkg" "$deb" >&2
echo "$deb"
