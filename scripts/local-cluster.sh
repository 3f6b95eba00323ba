#!/usr/bin/env bash
# Run a local N-node CTDB cluster on loopback addresses BASE_IP.1..N, node K
# under DIR/node.K, laid out as CTDB's own local test daemons are
# (CTDB_TEST_MODE=yes, CTDB_BASE=DIR/node.K, socket DIR/node.K/run/ctdbd.socket,
# config DIR/node.K/ctdb.conf, nodes file DIR/node.K/nodes, cluster lock
# DIR/shared/cluster.lock, log DIR/node.K/log.ctdb).
#
# By default it runs the reference CTDB from Debian's package (apt-get install
# ctdb); point CTDBD at our daemon to run ours (scripts/cluster.sh does).
# The test harness (tests/src/cluster.rs) starts every cluster through it.
#
# Environment:
#   CTDBD=PATH                  daemon to start (default /usr/sbin/ctdbd)
#   CTDB_TOOL=PATH              admin tool for `tool`, `wait` and `stop` (default /usr/bin/ctdb)
#   CTDB_RECOVERY_HELPER=PATH   recovery helper the daemons spawn (default: the daemon's own)
#   CTDB_TEST_HELPER_BINDIR     where the daemons find their helpers (default /usr/libexec/ctdb)
#   BASE_IP=127.0.0             first three octets of the node addresses
#   NODE_IPS="A B C"            the node addresses themselves (instead of BASE_IP.1..N)
#   NETNS_PREFIX=NAME           start node K's daemon in network namespace NAME<K>
#   CLUSTER_LOCK=SETTING        [cluster] cluster lock (default DIR/shared/cluster.lock;
#                               or "!helper args" for a lock helper)
#                               (made beforehand, holding node K's address)
#   LOG_LEVEL=NOTICE            daemon log level
#   FAILOVER=1                  [failover] disabled = false (public addresses move;
#                               default: failover disabled)
#   NO_TEST_MODE=1              (with NETNS_PREFIX) start each daemon without CTDB_TEST_MODE,
#                               as installed, in a mount namespace of its own where
#                               DIR/node.K is on /etc/ctdb, DIR/node.K/run on /run/ctdb and
#                               DIR/node.K/var on /var/lib/ctdb (so the files are where the
#                               harness looks); realtime scheduling off. CTDB skips its
#                               "is this address on my interfaces" checks in test mode, so
#                               with addresses really added (10.interface) it needs this.
#
# usage: local-cluster.sh DIR start N      write configs under DIR and start N daemons
#        local-cluster.sh DIR wait N [S]   wait up to S seconds (default 60) until N nodes are OK
#                                          and the cluster is out of recovery
#        local-cluster.sh DIR tool K ARGS  run the admin tool against node K
#        local-cluster.sh DIR stop N       ask the N daemons to shut down
# A ctdb.tunables or public_addresses file already in DIR/node.K is kept (the
# daemon reads it).
set -u

usage() {
  echo "usage: $0 DIR start N | DIR wait N [S] | DIR tool K ARGS... | DIR stop N" >&2
  exit 2
}

[ $# -ge 3 ] || usage
dir=$1; cmd=$2; shift 2
export CTDB_TEST_MODE=yes
export CTDB_TEST_HELPER_BINDIR=${CTDB_TEST_HELPER_BINDIR:-/usr/libexec/ctdb}
ctdbd=${CTDBD:-/usr/sbin/ctdbd}
tool=${CTDB_TOOL:-/usr/bin/ctdb}
ip=${BASE_IP:-127.0.0}

case $cmd in
start)
  n=$1
  if [ ! -x "$ctdbd" ]; then
    echo "local-cluster.sh: daemon $ctdbd not found (CTDBD, or apt-get install ctdb)" >&2
    exit 1
  fi
  mkdir -p "$dir/shared"
  : > "$dir/nodes"
  if [ -n "${NODE_IPS:-}" ]; then
    for a in $NODE_IPS; do echo "$a" >> "$dir/nodes"; done
  else
    for i in $(seq 1 "$n"); do echo "$ip.$i" >> "$dir/nodes"; done
  fi
  failed=0
  for k in $(seq 0 $((n-1))); do
    b=$dir/node.$k
    mkdir -p "$b/run" "$b/var" "$b/share" "$b/db/volatile" "$b/db/persistent" "$b/db/state" "$b/events/legacy"
    cp "$dir/nodes" "$b/nodes"; [ -e "$b/public_addresses" ] || : > "$b/public_addresses"
    cat > "$b/ctdb.conf" <<C
[logging]
	location = file:$b/log.ctdb
	log level = ${LOG_LEVEL:-NOTICE}
[cluster]
	cluster lock = ${CLUSTER_LOCK-$dir/shared/cluster.lock}
	node address = $(sed -n "$((k+1))p" "$dir/nodes")
[database]
	volatile database directory = $b/db/volatile
	persistent database directory = $b/db/persistent
	state database directory = $b/db/state
[failover]
	disabled = $([ "${FAILOVER:-}" = 1 ] && echo false || echo true)
C
    wrap=()
    if [ -n "${NETNS_PREFIX:-}" ]; then wrap=(ip netns exec "$NETNS_PREFIX$k"); fi
    if [ "${NO_TEST_MODE:-}" = 1 ]; then
      if [ -z "${NETNS_PREFIX:-}" ]; then
        echo "local-cluster.sh: NO_TEST_MODE needs NETNS_PREFIX" >&2; exit 1
      fi
      printf '[legacy]\n\trealtime scheduling = false\n' >> "$b/ctdb.conf"
      # The mount points (Debian's package makes /run/ctdb only when its
      # service starts); `ip netns exec` gives each daemon a mount
      # namespace of its own, so the bind mounts are seen by it alone.
      mkdir -p /etc/ctdb /run/ctdb /var/lib/ctdb
      wrap+=(env -u CTDB_TEST_MODE sh -c 'mount --bind "$1" /etc/ctdb && mount --bind "$1/run" /run/ctdb && mount --bind "$1/var" /var/lib/ctdb && exec "$2"' sh "$b")
    fi
    if ! CTDB_BASE=$b "${wrap[@]}" "$ctdbd"; then
      echo "node $k failed to start" >&2
      failed=1
    fi
  done
  exit $failed ;;
wait)
  n=$1; limit=${2:-60}
  for _ in $(seq 1 "$limit"); do
    out=$(CTDB_BASE=$dir/node.0 "$tool" status 2>/dev/null)
    if [ "$(printf '%s\n' "$out" | grep -c '^pnn:.* OK')" = "$n" ] && printf '%s\n' "$out" | grep -q 'Recovery mode:NORMAL'; then
      exit 0
    fi
    sleep 1
  done
  echo "cluster in $dir not healthy after ${limit}s" >&2; exit 1 ;;
stop)
  n=$1
  for k in $(seq 0 $((n-1))); do CTDB_BASE=$dir/node.$k "$tool" shutdown >/dev/null 2>&1; done
  exit 0 ;;
tool)
  k=$1; shift
  CTDB_BASE=$dir/node.$k exec "$tool" "$@" ;;
*) usage ;;
esac
