#!/usr/bin/env bash
# Install ctdb-rs where Debian's ctdb package puts CTDB (with PREFIX=/usr):
#   $PREFIX/sbin/ctdbd, $PREFIX/bin/ctdb,
#   $PREFIX/libexec/ctdb/ctdb_recovery_helper, ctdb_takeover_helper,
#   ctdb_mutex_fcntl_helper, ctdb-eventd,
#   /lib/systemd/system/ctdb.service ($PREFIX/lib/systemd/system unless
#   PREFIX is /usr), /etc/ctdb/ctdb.conf (kept if it exists),
#   /etc/logrotate.d/ctdb.
# The daemon reads /etc/ctdb whatever the prefix (as CTDB does).
#
# usage: scripts/install.sh
# Environment:
#   PREFIX=/usr/local   installation prefix
#   DESTDIR=            staging root (packages); nothing outside it is touched
#   CTDB_RS_BIN=DIR     already built binaries (default: build them with cargo
#                       into ${CARGO_TARGET_DIR:-target}/release)
# It installs nothing of Debian's CTDB. (CTDB's event scripts are not part of
# ctdb-rs: the event daemon runs whatever is in /etc/ctdb/events.)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
prefix=${PREFIX:-/usr/local}
destdir=${DESTDIR:-}
case $prefix in /*) ;; *) echo "install.sh: PREFIX must be absolute" >&2; exit 2 ;; esac

if [ -n "${CTDB_RS_BIN:-}" ]; then
  bin=$CTDB_RS_BIN
else
  # The same build as scripts/test.sh's, so neither rebuilds the other's.
  cargo build --release --locked --workspace --bins >&2
  target=${CARGO_TARGET_DIR:-$root/target}
  case $target in /*) ;; *) target=$root/$target ;; esac
  bin=$target/release
fi

sbindir=$prefix/sbin
bindir=$prefix/bin
libexecdir=$prefix/libexec
if [ "$prefix" = /usr ]; then unitdir=/lib/systemd/system; else unitdir=$prefix/lib/systemd/system; fi

install -d "$destdir$sbindir" "$destdir$bindir" "$destdir$libexecdir/ctdb" \
  "$destdir$unitdir" "$destdir/etc/ctdb" "$destdir/etc/logrotate.d"
install -m 0755 "$bin/ctdbd" "$destdir$sbindir/ctdbd"
install -m 0755 "$bin/ctdb" "$destdir$bindir/ctdb"
install -m 0755 "$bin/ctdb_recovery_helper" "$destdir$libexecdir/ctdb/ctdb_recovery_helper"
install -m 0755 "$bin/ctdb_takeover_helper" "$destdir$libexecdir/ctdb/ctdb_takeover_helper"
install -m 0755 "$bin/ctdb_mutex_fcntl_helper" "$destdir$libexecdir/ctdb/ctdb_mutex_fcntl_helper"
install -m 0755 "$bin/ctdb-eventd" "$destdir$libexecdir/ctdb/ctdb-eventd"

sed -e "s|@SBINDIR@|$sbindir|g" -e "s|@BINDIR@|$bindir|g" -e "s|@LIBEXECDIR@|$libexecdir|g" \
  packaging/ctdb.service.in > "$destdir$unitdir/ctdb.service"
chmod 0644 "$destdir$unitdir/ctdb.service"
if [ ! -e "$destdir/etc/ctdb/ctdb.conf" ]; then
  install -m 0644 packaging/ctdb.conf "$destdir/etc/ctdb/ctdb.conf"
else
  echo "install.sh: keeping the existing $destdir/etc/ctdb/ctdb.conf" >&2
fi
install -m 0644 packaging/logrotate "$destdir/etc/logrotate.d/ctdb"
echo "installed ctdb-rs under ${destdir:-/} (prefix $prefix)" >&2
