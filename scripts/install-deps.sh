#!/usr/bin/env bash
# Installs what building and testing ctdb-rs needs on a fresh Debian machine:
# the reference CTDB (for interop tests), libtdb's tools and python binding,
# libtdb's headers (for the tdb benchmark), and rustfmt/clippy.
# Idempotent and non-interactive; safe to run on every test run.
set -euo pipefail

need_pkgs=()
for p in ctdb tdb-tools python3-tdb libtdb-dev gcc; do
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
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now ctdb >/dev/null 2>&1 || true; fi
fi

if command -v rustup >/dev/null 2>&1; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c" </dev/null
  done
fi
