//! `ctdb_takeover_helper`: CTDB's takeover run (which node hosts which
//! public address), interchangeable with CTDB 4.17's helper.
//!
//! # Invocation
//!
//! The leader's recovery daemon runs `ctdb_takeover_helper <write-fd>
//! <socket-path> [<force-rebalance-nodes>]` (its `CTDB_TAKEOVER_HELPER`, or
//! the helper in its helper directory) after recoveries, node state
//! changes and `ctdb ipreallocate`. The optional third argument is a comma
//! separated list of PNNs that the LCP2 algorithm may move addresses to
//! even though they host some already (nodes that were just given new
//! addresses). The helper connects to the daemon's socket as a client,
//! runs one takeover run ([`run`]), writes its result to `write-fd` as a
//! native-endian `int` (0, or the failure's errno-style code, e.g. -1 for a
//! control that failed with status -1, `ETIMEDOUT`) and exits with the same
//! code (modulo 256). That is what CTDB's helper does. With
//! `CTDB_DISABLE_IP_FAILOVER` set in its environment it only sends
//! `IPREALLOCATED`.
//!
//! It logs where the daemon logs (`CTDB_LOGGING`, `CTDB_DEBUGLEVEL`; the
//! recovery helper's formatter) as `ctdb-takeover[pid]`, with CTDB's
//! wording for every line a test or an admin might look for.
//!
//! # Modules
//!
//! * [`ipalloc`]: the allocation, pure functions from what the nodes report
//!   to where each address goes (LCP2, deterministic, non-deterministic);
//! * [`run`]: the controls of a run, timeouts and ban credits.
//!
//! In 4.17 the tunable NoIPHostOnAllDisabled is obsolete and the helper
//! does not read it; nodes that are disabled, unhealthy, stopped, banned or
//! not running report no available addresses and so host none.

pub mod ipalloc;
pub mod run;
