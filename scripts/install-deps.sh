#!/usr/bin/env bash
# Installs what building and testing ctdb-rs needs on a fresh Debian machine:
# the reference CTDB (for interop tests), libtdb's tools and python binding,
# libtdb's headers (for the tdb benchmark), Samba's smbd and an SMB2 client
# library (python3-impacket) for the file-server tests, iproute2 and nftables
# (network-namespace tests), systemd (systemd-analyze, for the package test),
# etcd and python3-etcd (the cluster lock through CTDB's ctdb_etcd_lock),
# ethtool and iptables (CTDB's 10.interface.script, in the IP failover test),
# procps (ps, for the rolling-upgrade snapshot of client processes),
# and rustfmt/clippy.
# Idempotent and non-interactive; safe to run on every test run.
set -euo pipefail

need_pkgs=()
for p in ctdb tdb-tools python3-tdb libtdb-dev gcc samba python3-impacket iproute2 nftables systemd etcd-server python3-etcd ethtool iptables procps; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_pkgs[*]}" >&2
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo -n"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq </dev/null
  $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" </dev/null >/dev/null
  # The package's own units would start a daemon on the host's default paths; we never want that.
  # Samba's would hold port 445 on every address the tests give their smbds.
  for unit in ctdb smbd nmbd samba-ad-dc winbind etcd; do
    if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now "$unit" >/dev/null 2>&1 || true; fi
    if [ -x "/etc/init.d/$unit" ]; then $SUDO "/etc/init.d/$unit" stop >/dev/null 2>&1 || true; fi
  done
fi

if command -v rustup >/dev/null 2>&1; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c" </dev/null
  done
fi
