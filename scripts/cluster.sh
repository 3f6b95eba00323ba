#!/usr/bin/env bash
# Build ctdb-rs and start a local 3-node cluster of our ctdbd on 127.0.0.1..3
# (or BASE_IP.1..3), then print `ctdb status`.  Node K lives under
# $CLUSTER_DIR/node.K (default ./cluster), laid out as CTDB's own local test
# daemons are (CTDB_TEST_MODE, CTDB_BASE=$CLUSTER_DIR/node.K).
#
# usage: scripts/cluster.sh [start|status|stop]
#   start   build (release), start 3 daemons, wait until healthy, print status
#   status  print `ctdb status` from node 0
#   stop    shut the daemons down
# Environment: CLUSTER_DIR, BASE_IP (default 127.0.0), NODES (default 3),
#   CTDB_TOOL (default: ours if built, else /usr/bin/ctdb).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dir=${CLUSTER_DIR:-$root/cluster}
case $dir in /*) ;; *) dir=$root/$dir ;; esac
nodes=${NODES:-3}
export BASE_IP=${BASE_IP:-127.0.0}
script=$root/../shared/tools/real-ctdb-cluster.sh
if [ ! -x "$script" ]; then
  echo "cluster.sh: $script not found (../shared beside the repository)" >&2
  exit 1
fi
target=${CARGO_TARGET_DIR:-$root/target}
export CTDBD=$target/release/ctdbd
if [ -z "${CTDB_TOOL:-}" ]; then
  if [ -x "$target/release/ctdb" ]; then CTDB_TOOL=$target/release/ctdb; else CTDB_TOOL=/usr/bin/ctdb; fi
fi
export CTDB_TOOL

status() {
  "$script" "$dir" tool 0 status
}

case ${1:-start} in
start)
  cargo build --release --locked -p ctdbd >&2
  if [ -S "$dir/node.0/run/ctdbd.socket" ] && "$script" "$dir" tool 0 pnn >/dev/null 2>&1; then
    echo "cluster.sh: a cluster is already running in $dir (scripts/cluster.sh stop)" >&2
    exit 1
  fi
  rm -rf "$dir"/node.* "$dir/shared" "$dir/nodes"
  mkdir -p "$dir"
  "$script" "$dir" start "$nodes"
  if ! "$script" "$dir" wait "$nodes" 60; then
    tail -n 20 "$dir"/node.*/log.ctdb >&2 || true
    exit 1
  fi
  status
  ;;
status)
  status
  ;;
stop)
  "$script" "$dir" stop "$nodes" || true
  ;;
*)
  echo "usage: $0 [start|status|stop]" >&2
  exit 2
  ;;
esac
