//! `fake_ctdbd`: a CTDB daemon that serves a scripted cluster state, so the
//! `ctdb` tool (ours or CTDB's) can be tested against every kind of
//! cluster (banned, stopped, disconnected, unhealthy nodes, failing
//! controls) without running a cluster.
//!
//! It answers on behalf of every node of the scripted cluster through one
//! unix socket, as CTDB 4.17's `fake_ctdbd` does.
//!
//! Each scripted node is one of `ctdbd`'s control cores, so tunables,
//! node flag changes, bans, statistics and the rest behave as in our
//! daemon; the fake adds only what a script controls or what `ctdbd` has
//! no layer for yet (databases, public addresses).
//!
//! * [`state`]: the input format and the scripted state;
//! * [`cluster`]: the nodes as `ctdbd` cores, and the cluster's view;
//! * [`db`]: databases, each a real TDB file; [`dbctl`]: their controls;
//! * [`ips`]: public addresses, interfaces, tickles;
//! * [`daemon`]: everything together, and queued effects;
//! * [`controls`]: where each control is answered;
//! * [`server`]: sockets and packet routing (messages and calls too).

pub mod cluster;
pub mod controls;
pub mod daemon;
pub mod db;
pub mod dbctl;
pub mod ips;
pub mod server;
pub mod state;
