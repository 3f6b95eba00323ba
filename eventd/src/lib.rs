//! `ctdb-eventd`: CTDB 4.17's event daemon in Rust.
//!
//! It listens on `RUNDIR/eventd.socket` for the event protocol
//! (`ctdb_protocol::event`) and runs the scripts of `ETCDIR/events/<component>/`
//! for the events `ctdbd` (or `ctdb event run`) asks for, keeping each
//! event's last result for `status`.
//!
//! Where things are: [`config`] (paths and `ctdb.conf`), [`scripts`] (the
//! script directory: listing, enabling, result codes), [`proc`] (running one
//! script), [`runner`] (events, queueing, cancellation, timeouts, the debug
//! hook, results), [`server`] (the socket), [`daemon`] (start-up as `ctdbd`
//! starts it, signals, watching the parent), [`logging`].

pub mod config;
pub mod daemon;
pub mod logging;
pub mod proc;
pub mod runner;
pub mod scripts;
pub mod server;
