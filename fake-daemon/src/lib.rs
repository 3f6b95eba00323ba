//! `fake_ctdbd`: a CTDB daemon that serves a scripted cluster state, so the
//! `ctdb` tool (ours or CTDB's) can be tested against every kind of
//! cluster (banned, stopped, disconnected, unhealthy nodes, failing
//! controls) without running a cluster.
//!
//! It answers on behalf of every node of the scripted cluster through one
//! unix socket, as CTDB 4.17's `fake_ctdbd` does.
//!
//! * [`state`]: the input format and the scripted state;
//! * [`tunables`]: the tunables table;
//! * [`db`]: databases, each a real TDB file;
//! * [`nodes`]: nodes files;
//! * [`daemon`]: the state clients change, and queued effects;
//! * [`controls`]: control handlers;
//! * [`server`]: sockets and packet routing (messages and calls too).

pub mod controls;
pub mod daemon;
pub mod db;
pub mod nodes;
pub mod server;
pub mod state;
pub mod tunables;
