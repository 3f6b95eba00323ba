//! The event loop: one task owning all daemon state.
//!
//! The loop reads client and node sockets itself when they are readable
//! ([`crate::event_loop`]); everything happens here, one packet or event
//! at a time, without blocking:
//! routing controls and messages between local clients and nodes,
//! answering controls ([`crate::control`]), keepalives, timeouts, bans and
//! run-state changes (on a periodic tick). Work that must wait (the
//! cluster-lock check, delayed echoes) runs in its own task and comes back
//! as an event.
//!
//! Fairness: connections are served round-robin in the order they became
//! readable, each at most [`CONN_PACKETS`] packets per turn, so one busy
//! client cannot starve the others; after at most [`TURN_PACKETS`]
//! packets the turn's output is written (one vectored write per
//! connection).
//!
//! This file is the loop itself ([`Server`], its events, turns, output,
//! periodic tick, shutdown). Its rooms:
//!
//! * `ingress`: where a packet enters (ready connections served within
//!   their budgets, client and node packets handed on by operation);
//! * `controls`: where controls are dispatched (forwarded to other nodes,
//!   routed by family to the database layer, [`crate::takeover`] or
//!   [`Core::handle`]; replies; requests waiting on other nodes);
//! * `messages`: local clients (accepted, sent to, forgotten) and
//!   messages (routed, delivered, dropped for a client that does not
//!   read);
//! * `links`: node links (connect, dead, send, keepalives);
//! * `effects`: what the database layer, the address layer and the
//!   monitor ask the loop to do.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ctdb_protocol::types::{CTDB_RECOVERY_ACTIVE, Runstate, capabilities};
use ctdb_protocol::{ControlReply, ReplyControl};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::mpsc;
use tracing::{debug, error, info};

use crate::clients::ClientSocket;
use crate::control::Core;
use crate::db::{Databases, DbConfig, DbEvent};
use crate::event_loop::ReadyQueue;
use crate::messaging::ClientId;
use crate::transport::OutLink;

mod controls;
mod effects;
mod held;
mod ingress;
mod links;
#[cfg(test)]
mod links_tests;
#[cfg(test)]
mod loop_tests;
mod messages;

use controls::{Pending, PendingKind};
use links::NodeLinks;
pub use links::{KEEPALIVE_VERSION, keepalive_version};
use messages::Sender;

/// Largest packet accepted from a client or a node.
pub const MAX_PACKET: usize = 128 * 1024 * 1024;
/// Events waiting for the loop; their senders wait when it is full.
pub const EVENT_QUEUE: usize = 256;
/// Most events handled in one turn of the loop before its output is
/// written out.
const TURN_EVENTS: usize = 64;
/// Most packets of one connection handled in a turn; a connection with
/// more waits for the others' turn.
pub const CONN_PACKETS: usize = 16;
/// Most packets handled in one turn (over all connections) before its
/// output is written out.
pub const TURN_PACKETS: usize = 128;

/// Something for the event loop to do.
pub enum Event {
    ClientAccepted(UnixStream),
    NodeAccepted {
        stream: TcpStream,
        peer: SocketAddr,
    },
    NodeOutUp {
        pnn: u32,
        link: OutLink,
    },
    NodeOutDown {
        pnn: u32,
        error: String,
    },
    /// The cluster-lock check of a `SET_RECMODE` finished.
    LockChecked {
        to: ReplyTo,
        status: u8,
        latency: f64,
    },
    /// Shut down (signal).
    Terminate(&'static str),
    /// An event script run finished ([`crate::monitor`]).
    Eventd(crate::monitor::Done),
}

/// Where a control reply goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyTo {
    Client { id: ClientId, reqid: u32 },
    Node { pnn: u32, reqid: u32 },
    Nobody,
}

/// Fixed facts the loop needs besides [`Core`].
pub struct ServerConfig {
    pub socket: PathBuf,
    pub helper_dir: PathBuf,
    /// The daemon's log file, given to helpers as stderr.
    pub log_file: Option<crate::logging::LogFile>,
    pub my_addr: SocketAddr,
    /// Environment for helpers (`CTDB_LOGGING`, `CTDB_DEBUGLEVEL`).
    pub helper_env: Vec<(String, String)>,
    /// Bytes that may wait to be written to a client before its requests
    /// are no longer read and messages for it are dropped.
    pub client_queue_limit: usize,
}

/// The daemon.
pub struct Server {
    pub core: Core,
    cfg: ServerConfig,
    ev_tx: mpsc::Sender<Event>,
    ev_rx: mpsc::Receiver<Event>,
    /// Connections with something to read.
    ready: std::sync::Arc<ReadyQueue>,
    clients: HashMap<ClientId, ClientSocket>,
    /// Connections with packets queued since the last flush.
    dirty_clients: Vec<ClientId>,
    dirty_nodes: Vec<u32>,
    /// Packets this node sent itself (a control or call to its own pnn),
    /// handled on the next turn of the loop, not by recursion.
    loopback: Vec<BytesMut>,
    next_client: ClientId,
    links: HashMap<u32, NodeLinks>,
    next_link: u64,
    pending: HashMap<u32, Pending>,
    next_reqid: u32,
    echoes: Vec<(Instant, ReplyTo, ctdb_protocol::types::EchoData)>,
    next_keepalive: Instant,
    next_stat_rotation: Instant,
    shutdown: bool,
    /// The database layer: record calls, database controls and recovery
    /// of databases go to it.
    dbs: Databases,
    /// What its background work (lock waits, traverses, freezes) reports.
    db_rx: mpsc::UnboundedReceiver<DbEvent>,
    /// The recovery mode the database layer last saw.
    db_recmode: u32,
    /// Event scripts and node health.
    monitor: crate::monitor::Monitor,
    /// Public addresses.
    takeover: crate::takeover::Takeover,
}

impl Server {
    /// The daemon, with a database layer of `db` that has no databases
    /// yet (start-up attaches them through [`Server::databases`]).
    pub fn new(core: Core, cfg: ServerConfig, db: DbConfig) -> Server {
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
        let (mut dbs, db_rx) = Databases::new(db);
        dbs.stats = core.stats.handle();
        let monitor = crate::monitor::Monitor::detached(ev_tx.clone());
        Server {
            core,
            cfg,
            ev_tx,
            ev_rx,
            ready: ReadyQueue::new(),
            clients: HashMap::new(),
            dirty_clients: Vec::new(),
            dirty_nodes: Vec::new(),
            loopback: Vec::new(),
            next_client: 1,
            links: HashMap::new(),
            next_link: 1,
            pending: HashMap::new(),
            next_reqid: 1,
            echoes: Vec::new(),
            next_keepalive: Instant::now(),
            next_stat_rotation: Instant::now(),
            shutdown: false,
            dbs,
            db_rx,
            db_recmode: CTDB_RECOVERY_ACTIVE,
            monitor,
            takeover: crate::takeover::Takeover::empty(),
        }
    }

    /// A daemon that is not started, for tests and fuzzing: node `pnn` of
    /// a cluster of `nodes` (their addresses), default tunables, its
    /// database files under `dir`, no socket, helpers or log file.
    #[doc(hidden)]
    pub fn detached(pnn: u32, nodes: &[std::net::IpAddr], dir: &std::path::Path) -> Server {
        let entries: Vec<crate::config::NodeEntry> = nodes
            .iter()
            .map(|a| crate::config::NodeEntry { addr: Some(*a) })
            .collect();
        let node = crate::node::NodeState::new(pnn, &entries, capabilities::DEFAULT);
        let core = Core::new(
            node,
            crate::tunables::defaults(),
            crate::logging::LogControl::detached(0),
            None,
            "/nonexistent/nodes".into(),
        );
        let db = DbConfig {
            volatile_dir: dir.join("volatile"),
            persistent_dir: dir.join("persistent"),
            state_dir: dir.join("state"),
            mutexes: false,
            traverse_helper: "/nonexistent/ctdbd".into(),
        };
        Server::new(
            core,
            ServerConfig {
                socket: "/nonexistent/ctdbd.socket".into(),
                helper_dir: "/nonexistent".into(),
                log_file: None,
                my_addr: SocketAddr::new(nodes[pnn as usize], 4379),
                helper_env: Vec::new(),
                client_queue_limit: 64 * 1024,
            },
            db,
        )
    }

    /// Installs the monitor (event scripts through the event daemon).
    pub fn install_monitor(&mut self, m: crate::monitor::Monitor) {
        self.monitor = m;
    }

    /// The monitor, for start-up.
    pub fn monitor_mut(&mut self) -> (&mut crate::monitor::Monitor, &mut Core) {
        (&mut self.monitor, &mut self.core)
    }

    /// Installs the public addresses ([`crate::takeover`]).
    pub fn install_takeover(&mut self, t: crate::takeover::Takeover) {
        self.takeover = t;
    }

    /// A handle for tasks that feed the loop.
    pub fn events(&self) -> mpsc::Sender<Event> {
        self.ev_tx.clone()
    }

    fn pnn(&self) -> u32 {
        self.core.node.pnn
    }

    fn generation(&self) -> u32 {
        self.core.node.vnnmap.generation
    }

    /// Runs until shut down.
    ///
    /// The loop is a task of a `LocalSet`; a panic in it ends the task and
    /// is logged. (Running the loop as the runtime's main future instead
    /// was measured on tokio 1.54: the same system calls and context
    /// switches per packet, one `epoll_wait` per wake-up either way, and no
    /// CPU difference beyond the noise; `bench-results/event-loop.md`.)
    pub async fn run(self) {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async move {
                if let Err(e) = tokio::task::spawn_local(self.run_loop()).await {
                    error!("event loop failed: {e}");
                }
            })
            .await;
    }

    async fn run_loop(mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The database layer's next wake-up: one timer, moved when the
        // time changes (not a new one registered every turn).
        let db_timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(db_timer);
        let mut db_timer_at: Option<Instant> = None;
        while !self.shutdown {
            if !self.loopback.is_empty() {
                self.serve_loopback();
            }
            let wake = self.dbs.next_wakeup();
            if wake != db_timer_at {
                if let Some(t) = wake {
                    db_timer.as_mut().reset(t.into());
                }
                db_timer_at = wake;
            }
            tokio::select! {
                biased;
                _ = tick.tick() => self.on_tick(Instant::now()),
                Some(ev) = self.db_rx.recv() => {
                    self.with_dbs(|d, env| d.event(env, ev));
                    self.after_event();
                }
                ev = self.ev_rx.recv() => match ev {
                    Some(ev) => {
                        self.on_event(ev);
                        // Whatever else has arrived is handled in the same
                        // turn, so its output leaves in the same writes.
                        for _ in 0..TURN_EVENTS {
                            match self.ev_rx.try_recv() {
                                Ok(ev) => self.on_event(ev),
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                _ = std::future::poll_fn(|cx| self.ready.poll_ready(cx)) => self.serve_ready(),
                _ = &mut db_timer, if wake.is_some() => {
                    db_timer_at = None;
                    let now = Instant::now();
                    self.with_dbs(|d, env| d.tick(env, now));
                    self.after_event();
                }
                // Packets to ourselves wait for the next turn, not for an
                // event.
                _ = std::future::ready(()), if !self.loopback.is_empty() => {}
            }
            self.flush();
        }
        self.finish().await;
    }

    /// Handles the packets this node sent itself in the last turn, and
    /// writes out what they produced at once: the loop waits for the next
    /// event after this, and the reply to this node's own part of a
    /// commit (an `UPDATE_RECORD` to itself) is often the last one its
    /// client waits for. (Left queued, it went out with whatever woke the
    /// loop next: the 100 ms tick on a quiet node.)
    fn serve_loopback(&mut self) {
        let pnn = self.pnn();
        for pkt in std::mem::take(&mut self.loopback) {
            self.node_packet(pnn, pkt);
        }
        self.after_event();
        self.flush();
    }

    /// Writes out what this turn queued for clients and nodes.
    fn flush(&mut self) {
        for id in std::mem::take(&mut self.dirty_clients) {
            if let Some(c) = self.clients.get(&id)
                && !c.flush()
            {
                // The loop reads the end of the connection and drops it.
                debug!("client {id}: write failed");
            }
        }
        for pnn in std::mem::take(&mut self.dirty_nodes) {
            if let Some(l) = self.links.get(&pnn).and_then(|l| l.link.as_ref())
                && !l.flush()
            {
                debug!("node {pnn}: write failed");
            }
        }
    }

    /// Lets queued replies reach clients before the process exits.
    async fn finish(&mut self) {
        self.core.set_runstate(Runstate::Shutdown);
        error!("Shutdown sequence commencing.");
        self.flush();
        self.monitor.shutdown(&mut self.core).await;
        let clients: Vec<ClientSocket> = self.clients.drain().map(|(_, c)| c).collect();
        let deadline = Instant::now() + Duration::from_secs(1);
        for c in &clients {
            while c.queued() > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            c.close();
        }
        drop(clients);
        for l in self.links.values_mut() {
            if let Some(i) = l.in_link.take() {
                i.close();
            }
            l.drop_link();
            l.out = None;
        }
        error!("Shutdown sequence complete, exiting.");
    }

    /// Handles one event.
    pub fn on_event(&mut self, ev: Event) {
        match ev {
            Event::ClientAccepted(s) => self.client_accepted(s),
            Event::NodeAccepted { stream, peer } => self.node_accepted(stream, peer),
            Event::NodeOutUp { pnn, link } => self.node_out_up(pnn, link),
            Event::NodeOutDown { pnn, error } => {
                debug!("outgoing connection to node {pnn} down: {error}");
                let was = self.links.get(&pnn).is_some_and(|l| l.out_up);
                if let Some(l) = self.links.get_mut(&pnn) {
                    l.out_up = false;
                    l.drop_link();
                }
                if was {
                    // As CTDB restarts a node's transport: both directions
                    // go, so the peer reconnects afresh (and a stale
                    // incoming connection cannot block its return).
                    self.node_dead(pnn, true);
                }
            }
            Event::LockChecked {
                to,
                status,
                latency,
            } => {
                if status == b'1' {
                    self.core.stats.bump(|s| s.reclock_ctdbd.record(latency));
                }
                let r = self.core.finish_recmode_normal(status);
                self.reply(to, r);
            }
            Event::Terminate(why) => {
                info!("Received {why}, shutting down");
                self.shutdown = true;
            }
            Event::Eventd(d) => {
                let acts = self.monitor.done(&mut self.core, d);
                self.monitor_actions(acts);
            }
        }
        self.after_event();
    }

    /// Follow-ups a control may have asked for.
    fn after_event(&mut self) {
        self.db_recmode_check();
        if let Some(changed) = self.core.reloaded.take() {
            for pnn in changed {
                if let Some(mut l) = self.links.remove(&pnn) {
                    l.drop_link();
                    if let Some(i) = l.in_link.take() {
                        i.close();
                    }
                }
                if !self.core.node.node(pnn).is_some_and(|n| n.is_deleted()) {
                    self.start_out_link(pnn);
                }
            }
            // Deleted nodes lose their links.
            let deleted: Vec<u32> = self
                .links
                .keys()
                .copied()
                .filter(|p| self.core.node.node(*p).is_none_or(|n| n.is_deleted()))
                .collect();
            for p in deleted {
                if let Some(mut l) = self.links.remove(&p) {
                    l.drop_link();
                    if let Some(i) = l.in_link.take() {
                        i.close();
                    }
                }
            }
        }
        for (dest, id, data) in std::mem::take(&mut self.core.pending_messages) {
            self.send_message(dest, id, &data);
        }
        for id in std::mem::take(&mut self.core.pending_drops) {
            self.drop_client(id);
        }
    }

    /// Periodic work: control timeouts, echoes, bans, keepalives, and
    /// run-state progress.
    pub fn on_tick(&mut self, now: Instant) {
        let expired: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(r, _)| *r)
            .collect();
        for r in expired {
            self.core.stats.bump(|s| s.timeouts.control += 1);
            self.fail_pending(r, "ctdb_control timed out");
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.echoes)
            .into_iter()
            .partition(|e| e.0 <= now);
        self.echoes = later;
        for (_, to, data) in due {
            self.reply(to, ReplyControl::ok(ControlReply::EchoData(data)));
        }
        if self.core.node.expire_ban(now) {
            error!("Banning timed out");
        }
        if now >= self.next_stat_rotation {
            let every = u64::from(self.core.tunables.stat_history_interval.max(1));
            self.next_stat_rotation = now + Duration::from_secs(every);
            self.core.stats.rotate();
        }
        let clients = self.clients.values().map(|c| c.queued_bytes() as u64).sum();
        let nodes = (self.links.values().filter_map(|l| l.link.as_ref()))
            .map(|l| l.queued_bytes() as u64)
            .sum();
        self.core.stats.set_queued(clients, nodes);
        if now >= self.next_keepalive {
            self.next_keepalive = now + self.keepalive_interval();
            self.keepalive_round();
        }
        self.expire_silent_links(now);
        self.expire_held(now);
        self.monitor.tick(&mut self.core, now);
        let e = self.takeover.tick(&mut self.core, now);
        self.takeover_effects(e);
        self.with_dbs(|d, env| d.tick(env, now));
        self.db_recmode_check();
    }

    /// Whether this node may lead (for the recovery daemon).
    pub fn can_lead(&self) -> bool {
        self.core.node.capabilities & capabilities::RECMASTER != 0
    }
}
