//! ctdb-rs's `ctdbd`: the clustered database daemon, a drop-in for CTDB
//! 4.17's (same configuration files, socket, packets).
//!
//! Where things are:
//!
//! * [`config`]: `ctdb.conf`, the `nodes` file, paths;
//! * [`tunables`]: the tunables table and `ctdb.tunables`;
//! * [`logging`]: CTDB's log levels and line format on `tracing`;
//! * [`node`]: the node map, flags, bans, run state (pure state);
//! * [`messaging`]: srvid registrations; [`tunnel`]: tunnel ids and
//!   `REQ_TUNNEL` routing;
//! * [`control`]: answering the node's own controls ([`control::Core`],
//!   reusable without sockets; database controls are [`db`]'s);
//! * [`db`]: the databases: attach, record calls and migration,
//!   persistent transactions, traverses, recovery of databases;
//! * [`server`]: the single-threaded event loop that owns all state and
//!   routes packets between clients and nodes;
//! * [`clients`]: the unix socket; [`transport`]: TCP links to nodes;
//!   [`event_loop`]: how the loop learns which of them to read;
//! * [`cluster_mutex`]: the cluster lock through a mutex helper;
//! * [`recoverd`]: leader election and recovery (a process of its own,
//!   `ctdbd --recoverd`, a client of the daemon, as CTDB's recovery daemon
//!   is);
//! * [`monitor`]: event scripts through the event daemon
//!   ([`eventd_client`]) and the node's health;
//! * [`startup`], [`daemonize`]: getting the daemon running.

pub mod clients;
pub mod cluster_mutex;
pub mod config;
pub mod control;
pub mod daemonize;
pub mod db;
pub mod event_loop;
pub mod eventd_client;
pub mod logging;
pub mod memory;
pub mod messaging;
pub mod metrics;
pub mod monitor;
pub mod node;
pub mod outbox;
pub mod recd_ping;
pub mod recoverd;
pub mod server;
pub mod startup;
pub mod stats;
pub mod takeover;
pub mod transport;
pub mod tunables;
pub mod tunnel;
