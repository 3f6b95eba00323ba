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
#   CTDB_RS_BIN (a directory of already built ctdbd, ctdb,
#   ctdb_recovery_helper, ctdb_takeover_helper, ctdb-eventd and
#   ctdb_mutex_fcntl_helper: `start` then builds nothing;
#   default: build them into $CARGO_TARGET_DIR/release, itself default
#   ./target/release),
#   CTDB_TOOL, CTDB_RECOVERY_HELPER, CTDB_EVENTD, CTDB_TEST_HELPER_BINDIR
#   (where the daemons look for their other helpers: the takeover and
#   cluster lock helpers) (default: ours, from that directory).
# The daemons are started by scripts/local-cluster.sh; nothing of Debian's
# ctdb package is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dir=${CLUSTER_DIR:-$root/cluster}
case $dir in /*) ;; *) dir=$root/$dir ;; esac
nodes=${NODES:-3}
export BASE_IP=${BASE_IP:-127.0.0}
script=$root/scripts/local-cluster.sh
target=${CARGO_TARGET_DIR:-$root/target}
case $target in /*) ;; *) target=$root/$target ;; esac
bin=${CTDB_RS_BIN:-$target/release}
export CTDBD=$bin/ctdbd
export CTDB_TOOL=${CTDB_TOOL:-$bin/ctdb}
export CTDB_RECOVERY_HELPER=${CTDB_RECOVERY_HELPER:-$bin/ctdb_recovery_helper}
export CTDB_EVENTD=${CTDB_EVENTD:-$bin/ctdb-eventd}
# The takeover helper (which our daemon runs even with failover disabled),
# the cluster lock helper and any other: ours too.
export CTDB_TEST_HELPER_BINDIR=${CTDB_TEST_HELPER_BINDIR:-$bin}

status() {
  "$script" "$dir" tool 0 status
}

case ${1:-start} in
start)
  if [ -z "${CTDB_RS_BIN:-}" ]; then
    # Only the six programs the cluster runs, not the whole workspace (the
    # benchmark with its plotting, the fake daemon, the test programs).
    # After scripts/test.sh's build in the same target directory this has
    # nothing left to compile (.ci/clone-check relies on it in CI).
    cargo build --release --locked \
      -p ctdbd -p ctdb-tool -p ctdb-recovery-helper -p ctdb-takeover-helper \
      -p ctdb-eventd -p ctdb-mutex-helper \
      --bin ctdbd --bin ctdb --bin ctdb_recovery_helper --bin ctdb_takeover_helper \
      --bin ctdb-eventd --bin ctdb_mutex_fcntl_helper >&2
  fi
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
  pids=()
  for k in $(seq 0 $((nodes-1))); do
    p=$(cat "$dir/node.$k/run/ctdbd.pid" 2>/dev/null || true)
    [ -n "$p" ] && pids+=("$p")
  done
  "$script" "$dir" stop "$nodes" || true
  # Wait (bounded) until the daemons have exited, so `start` can follow.
  for _ in $(seq 1 100); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && exit 0
    sleep 0.1
  done
  echo "cluster.sh: daemons still running after 10 s: ${pids[*]}" >&2
  exit 1
  ;;
*)
  echo "usage: $0 [start|status|stop]" >&2
  exit 2
  ;;
esac
