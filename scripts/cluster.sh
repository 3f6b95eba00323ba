#!/usr/bin/env bash
# Build ctdb-rs and start a local 3-node cluster of our ctdbd on 127.0.0.1..3,
# then print `ctdb status`.  Node K lives under $CLUSTER_DIR/node.K (default
# ./cluster), laid out as CTDB's own local test daemons are.
#
# usage: scripts/cluster.sh [start|status|stop]
set -euo pipefail
cd "$(dirname "$0")/.."
echo "ctdbd is not built yet (see issue 4); there is no cluster to start." >&2
exit 1
