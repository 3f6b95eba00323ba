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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ctdb_protocol::call::{ReplyError, ReqCall};
use ctdb_protocol::control::CTDB_CTRL_FLAG_NOREPLY;
use ctdb_protocol::header::{
    CTDB_BROADCAST_ACTIVE, CTDB_BROADCAST_ALL, CTDB_BROADCAST_CONNECTED, CTDB_CURRENT_NODE,
    CTDB_MULTICAST, HEADER_LEN,
};
use ctdb_protocol::keepalive::ReqKeepalive;
use ctdb_protocol::types::{CTDB_RECOVERY_ACTIVE, Runstate, capabilities};
use ctdb_protocol::{
    Body, ControlReply, ControlRequest, Header, Opcode, Operation, Packet, ReplyControl,
    ReqControl, ReqMessage,
};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::mpsc;
use tracing::{debug, error, info, trace, warn};

use crate::clients::ClientSocket;
use crate::cluster_mutex;
use crate::control::{AsyncOp, ClientInfo, ControlCtx, Core, Outcome};
use crate::db::{Databases, DbConfig, DbEvent, Effect, Env};
use crate::event_loop::{Next, ReadyQueue, Token};
use crate::messaging::ClientId;
use crate::transport::{self, InLink, OutCmd, OutLink};

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
/// The keepalive version CTDB 4.17 sends: (major << 16) | minor.
pub const KEEPALIVE_VERSION: u32 = (4 << 16) | 17;

/// The version this node sends and checks keepalives with:
/// [`KEEPALIVE_VERSION`], or `CTDB_TEST_SAMBA_VERSION` when set to a
/// positive number (CTDB's way to test the mixed-version check).
pub fn keepalive_version() -> u32 {
    static V: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *V.get_or_init(|| match std::env::var("CTDB_TEST_SAMBA_VERSION") {
        Err(_) => KEEPALIVE_VERSION,
        Ok(t) => match t.trim().parse::<i64>() {
            Ok(v) if v > 0 && v <= i64::from(u32::MAX) => v as u32,
            _ => {
                warn!("Failed to parse env var: CTDB_TEST_SAMBA_VERSION={t}");
                KEEPALIVE_VERSION
            }
        },
    })
}

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

/// Who a message for local clients comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sender {
    /// A client (here or on another node) or another daemon.
    Peer,
    /// This daemon, with records a client asked for.
    Daemon,
}

/// Where a control reply goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyTo {
    Client { id: ClientId, reqid: u32 },
    Node { pnn: u32, reqid: u32 },
    Nobody,
}

/// The links to one other node.
#[derive(Default)]
struct NodeLinks {
    /// The connector's command queue.
    out: Option<mpsc::UnboundedSender<OutCmd>>,
    out_up: bool,
    /// The outgoing connection, while up.
    link: Option<OutLink>,
    in_link: Option<InLink>,
}

impl NodeLinks {
    /// Forgets the outgoing connection (shutting it down).
    fn drop_link(&mut self) {
        if let Some(l) = self.link.take() {
            l.close();
        }
    }
}

/// A request this daemon sent to another node and is waiting on.
struct Pending {
    dest: u32,
    deadline: Instant,
    kind: PendingKind,
}

enum PendingKind {
    /// A client's control forwarded to another node.
    Forward { id: ClientId, reqid: u32 },
    /// `START_RECOVERY`'s question to the leader about its cluster lock.
    ReclockCheck { to: ReplyTo },
    /// A control the database layer sent; its reply goes back there.
    Db { tag: u64, opcode: Opcode },
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

    /// Installs the monitor (event scripts through the event daemon).
    pub fn install_monitor(&mut self, m: crate::monitor::Monitor) {
        self.monitor = m;
    }

    /// The monitor, for start-up.
    pub fn monitor_mut(&mut self) -> (&mut crate::monitor::Monitor, &mut Core) {
        (&mut self.monitor, &mut self.core)
    }

    fn monitor_actions(&mut self, acts: Vec<crate::monitor::Action>) {
        for a in acts {
            match a {
                crate::monitor::Action::Reply(to, r) => self.reply(to, r),
                crate::monitor::Action::BroadcastStartup => self.broadcast_startup(),
                crate::monitor::Action::TakeoverDone(tag, st) => {
                    let e = self.takeover.event_done(&mut self.core, tag, st);
                    self.takeover_effects(e);
                }
            }
        }
    }

    /// Installs the public addresses ([`crate::takeover`]).
    pub fn install_takeover(&mut self, t: crate::takeover::Takeover) {
        self.takeover = t;
    }

    /// Carries out what the public-address layer asked for.
    fn takeover_effects(&mut self, effects: Vec<crate::takeover::Effect>) {
        use crate::takeover::Effect as E;
        let mut queue = std::collections::VecDeque::from(effects);
        while let Some(e) = queue.pop_front() {
            match e {
                E::Reply(to, r) => self.reply(to, r),
                E::Message { dest, srvid, data } => self.send_message(dest, srvid, &data),
                E::Control { dest, req } => {
                    let targets = if matches!(
                        dest,
                        CTDB_BROADCAST_ALL | CTDB_BROADCAST_ACTIVE | CTDB_BROADCAST_CONNECTED
                    ) {
                        self.broadcast_targets(dest)
                    } else {
                        vec![dest]
                    };
                    for pnn in targets {
                        self.db_control(pnn, req.clone(), None);
                    }
                }
                E::RunEvent { event, args, tag } => {
                    if !self.monitor.run_ip_event(&self.core, event, &args, tag) {
                        queue.extend(self.takeover.event_done(&mut self.core, tag, -1));
                    }
                }
            }
        }
    }

    /// The database layer and what it sees of the node, for start-up
    /// (attaching the databases found on disk). What it asks for is
    /// carried out once the loop runs.
    pub fn databases(&mut self) -> (&mut Databases, Env<'_>) {
        let env = Env {
            node: &self.core.node,
            tunables: &self.core.tunables,
            clients: &self.core.clients,
        };
        (&mut self.dbs, env)
    }

    /// Runs `f` on the database layer, then carries out what it asked for.
    fn with_dbs<R>(&mut self, f: impl FnOnce(&mut Databases, &Env) -> R) -> R {
        let r = {
            let (d, env) = self.databases();
            f(d, &env)
        };
        self.run_db_effects();
        r
    }

    /// Carries out the database layer's effects (which may produce more).
    fn run_db_effects(&mut self) {
        loop {
            let effects = {
                let (d, env) = self.databases();
                if d.has_ready() {
                    d.run_ready(&env);
                }
                d.take_effects()
            };
            if effects.is_empty() {
                break;
            }
            for e in effects {
                self.db_effect(e);
            }
        }
    }

    fn db_effect(&mut self, e: Effect) {
        match e {
            Effect::ToNode(pnn, b) => self.send_node(pnn, b),
            Effect::ToClient(id, b) => self.send_client(id, b),
            // Records a client asked for (traverse data, pulled records):
            // held to the packet limit only (see `client_full`).
            Effect::Message { dest, srvid, data } => {
                self.send_message_as(dest, srvid, &data, Sender::Daemon)
            }
            Effect::Reply(to, r) => self.reply(to, r),
            Effect::Control { dest, req, tag } => self.db_control(dest, req, tag),
            Effect::RecoveryActive(why) => {
                if !self.core.node.in_recovery() {
                    error!("{why}: setting recovery mode to ACTIVE");
                    self.core.node.recovery_mode = CTDB_RECOVERY_ACTIVE;
                }
            }
        }
    }

    /// Sends a control for the database layer.
    fn db_control(&mut self, dest: u32, req: ReqControl, tag: Option<u64>) {
        let connected = dest == self.pnn()
            || self
                .core
                .node
                .node(dest)
                .is_some_and(|n| !n.is_deleted() && n.is_connected());
        if !connected {
            if let Some(tag) = tag {
                self.with_dbs(|d, env| {
                    d.control_reply(env, tag, Err("node is disconnected".to_owned()))
                });
            }
            return;
        }
        let reqid = match tag {
            Some(tag) => {
                let r = self.new_reqid();
                let deadline = Instant::now()
                    + Duration::from_secs(u64::from(self.core.tunables.control_timeout.max(1)));
                self.pending.insert(
                    r,
                    Pending {
                        dest,
                        deadline,
                        kind: PendingKind::Db {
                            tag,
                            opcode: req.opcode(),
                        },
                    },
                );
                r
            }
            None => 0,
        };
        let mut h = Header::new(Operation::ReqControl, dest, self.pnn(), reqid);
        h.generation = self.generation();
        let b: Bytes = Packet::new(h, Body::ReqControl(req)).encode().into();
        self.send_node(dest, b);
    }

    /// The database layer learns about recovery mode changes.
    fn db_recmode_check(&mut self) {
        let now = self.core.node.recovery_mode;
        if now != self.db_recmode {
            self.db_recmode = now;
            if !self.core.node.in_recovery() {
                self.with_dbs(|d, env| d.recmode_normal(env));
            }
        }
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

    /// Starts the outgoing link to every other node.
    pub fn start_transport(&mut self) {
        let others: Vec<u32> = self
            .core
            .node
            .nodes
            .iter()
            .filter(|n| !n.is_deleted() && n.pnn != self.pnn())
            .map(|n| n.pnn)
            .collect();
        for pnn in others {
            self.start_out_link(pnn);
        }
        self.next_keepalive = Instant::now() + self.keepalive_interval();
        info!("Keepalive monitoring has been started");
    }

    fn start_out_link(&mut self, pnn: u32) {
        let Some(peer) = self.core.node.node(pnn).and_then(|n| n.addr) else {
            return;
        };
        let tx = transport::spawn_connector(pnn, self.cfg.my_addr.ip(), peer, self.events());
        let l = self.links.entry(pnn).or_default();
        l.out = Some(tx);
        l.out_up = false;
    }

    fn keepalive_interval(&self) -> Duration {
        Duration::from_secs(u64::from(self.core.tunables.keepalive_interval.max(1)))
    }

    /// Runs until shut down.
    ///
    /// The loop is a task of a `LocalSet`, so a wake-up (a socket made
    /// ready by the reactor, an event) just queues it, instead of waking
    /// the runtime's main future (which costs the runtime an extra poll of
    /// the kernel's event queue on every wake-up).
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
                let pnn = self.pnn();
                for pkt in std::mem::take(&mut self.loopback) {
                    self.node_packet(pnn, pkt);
                }
                self.after_event();
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

    /// Serves the connections that are ready, round-robin: at most
    /// [`CONN_PACKETS`] each, [`TURN_PACKETS`] in all.
    fn serve_ready(&mut self) {
        let mut budget = TURN_PACKETS;
        for _ in 0..self.ready.len() {
            if budget == 0 {
                break;
            }
            let Some(t) = self.ready.pop() else {
                break;
            };
            let n = match t {
                Token::Client(id) => self.serve_client(id),
                Token::NodeIn { pnn, link } => self.serve_in_link(pnn, link),
            };
            budget = budget.saturating_sub(n.max(1));
        }
    }

    /// Reads and handles client `id`'s packets, up to its budget; returns
    /// how many.
    fn serve_client(&mut self, id: ClientId) -> usize {
        let limit = self.cfg.client_queue_limit;
        match self.clients.get(&id) {
            Some(c) => c.taken(),
            None => return 0,
        }
        let mut n = 0;
        loop {
            let Some(c) = self.clients.get_mut(&id) else {
                return n;
            };
            if n == CONN_PACKETS {
                c.requeue();
                return n;
            }
            match c.next_packet(limit) {
                Next::Packet(pkt) => {
                    n += 1;
                    self.client_packet(id, pkt);
                    self.after_event();
                }
                Next::Pending => return n,
                Next::Closed(error) => {
                    self.client_closed(id, error);
                    return n;
                }
            }
        }
    }

    /// Reads and handles packets of node `pnn`'s incoming connection
    /// `link`, up to its budget; returns how many.
    fn serve_in_link(&mut self, pnn: u32, link: u64) -> usize {
        let mut n = 0;
        loop {
            let Some(l) = self
                .links
                .get_mut(&pnn)
                .and_then(|l| l.in_link.as_mut())
                .filter(|i| i.id == link)
            else {
                return n;
            };
            if n == 0 {
                l.reader.taken();
            }
            if n == CONN_PACKETS {
                l.reader.requeue();
                return n;
            }
            let peer = l.peer;
            match l.reader.next_packet() {
                Next::Packet(pkt) => {
                    n += 1;
                    if self.checked_node_packet(pnn, peer, pkt) {
                        self.after_event();
                    } else {
                        return n;
                    }
                }
                Next::Pending => return n,
                Next::Closed(error) => {
                    self.in_link_closed(pnn, link, error);
                    return n;
                }
            }
        }
    }

    /// Client `id`'s connection ended (or failed).
    fn client_closed(&mut self, id: ClientId, error: Option<String>) {
        if let Some(e) = error {
            warn!("client {id}: {e}; closing its connection");
        }
        self.drop_client(id);
        self.after_event();
    }

    /// Node `pnn`'s incoming connection `link` ended (or failed).
    fn in_link_closed(&mut self, pnn: u32, link: u64, error: Option<String>) {
        let cur = self
            .links
            .get(&pnn)
            .and_then(|l| l.in_link.as_ref())
            .map(|x| (x.id, x.peer));
        if let Some((id, peer)) = cur
            && id == link
        {
            match error {
                Some(e) => {
                    error!("incoming connection from node {pnn} ({peer}): {e}; closing it")
                }
                None => info!("incoming connection from node {pnn} ({peer}) closed"),
            }
            if let Some(l) = self.links.get_mut(&pnn) {
                l.in_link = None;
            }
            self.node_dead(pnn, false);
        }
        self.after_event();
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
            Event::NodeOutUp { pnn, link } => {
                if let Some(l) = self.links.get_mut(&pnn) {
                    l.out_up = true;
                    l.drop_link();
                    l.link = Some(link);
                } else {
                    link.close();
                }
                self.maybe_connected(pnn);
            }
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
    }

    // ---- clients -------------------------------------------------------

    fn client_accepted(&mut self, stream: UnixStream) {
        let pid = stream.peer_cred().ok().and_then(|c| c.pid()).unwrap_or(0);
        let id = self.next_client;
        self.next_client = self.next_client.wrapping_add(1).max(1);
        let sock = match crate::clients::serve(id, stream, &self.ready) {
            Ok(s) => s,
            Err(e) => {
                error!("cannot serve client with pid:{pid}: {e}");
                return;
            }
        };
        debug!("Connected client with pid:{pid}");
        self.clients.insert(id, sock);
        self.core.clients.insert(
            id,
            ClientInfo {
                pid,
                notify: Vec::new(),
            },
        );
    }

    /// Closes a client's connection and forgets it.
    fn drop_client(&mut self, id: ClientId) {
        if let Some(c) = self.clients.remove(&id) {
            c.close();
        }
        self.core.srvids.remove_client(id);
        self.core.tunnels.remove_client(id);
        self.pending
            .retain(|_, p| !matches!(p.kind, PendingKind::Forward { id: i, .. } if i == id));
        self.with_dbs(|d, env| d.client_gone(env, id));
        self.takeover.client_gone(&self.core, id);
        if let Some(info) = self.core.clients.remove(&id) {
            for n in info.notify {
                self.send_message(CTDB_BROADCAST_CONNECTED, n.srvid, &n.data);
            }
        }
    }

    fn send_client(&mut self, id: ClientId, bytes: Bytes) {
        if let Some(c) = self.clients.get(&id) {
            if c.queue(bytes) {
                self.dirty_clients.push(id);
            }
            self.core.stats.bump(|s| s.client_packets_sent += 1);
        }
    }

    fn client_packet(&mut self, id: ClientId, mut pkt: BytesMut) {
        self.core.stats.bump(|s| s.client_packets_recv += 1);
        self.with_dbs(|d, _| d.client_spoke(id));
        let hdr = match Header::pull(&pkt) {
            Ok((h, _)) => h,
            Err(e) => {
                error!("client {id}: bad packet ({e}); closing its connection");
                self.drop_client(id);
                return;
            }
        };
        match hdr.operation {
            Operation::ReqControl => {
                self.core.stats.bump(|s| s.client.req_control += 1);
                self.client_control(id, hdr, &mut pkt)
            }
            Operation::ReqMessage => {
                self.core.stats.bump(|s| s.client.req_message += 1);
                self.client_message(id, hdr, &mut pkt)
            }
            Operation::ReqCall => {
                self.core.stats.bump(|s| s.client.req_call += 1);
                match ReqCall::pull(&pkt[HEADER_LEN..]) {
                    Ok((c, _)) => {
                        self.with_dbs(|d, env| d.client_call(env, id, hdr.reqid, c));
                    }
                    Err(e) => {
                        warn!("client {id}: malformed REQ_CALL ({e})");
                        let e = ReplyError {
                            status: -1,
                            msg: format!("malformed call: {e}\0").into_bytes(),
                        };
                        let mut h = Header::new(Operation::ReplyError, 0, self.pnn(), hdr.reqid);
                        h.generation = self.generation();
                        self.send_client(id, Packet::new(h, Body::ReplyError(e)).encode().into());
                    }
                }
            }
            Operation::ReqTunnel => {
                self.core.stats.bump(|s| s.client.req_tunnel += 1);
                let (nodes, pnn, g) = (self.core.node.nodes.len(), self.pnn(), self.generation());
                if let Some(f) = self.core.tunnels.from_client(id, &pkt, nodes, pnn, g) {
                    self.send_node(f.dest, f.bytes);
                }
            }
            op => {
                error!("client {id}: unexpected {op:?} packet; closing its connection");
                self.drop_client(id);
            }
        }
    }

    fn client_control(&mut self, id: ClientId, hdr: Header, pkt: &mut BytesMut) {
        let body = &pkt[HEADER_LEN..];
        let req = match ReqControl::pull(body) {
            Ok((r, _)) => r,
            Err(e) => {
                // Readable enough to answer: refuse this one control.
                warn!("client {id}: malformed control ({e})");
                let noreply = body.len() >= 24
                    && u32::from_le_bytes([body[20], body[21], body[22], body[23]])
                        & CTDB_CTRL_FLAG_NOREPLY
                        != 0;
                if !noreply {
                    self.reply(
                        ReplyTo::Client {
                            id,
                            reqid: hdr.reqid,
                        },
                        ReplyControl::error(-1, format!("malformed control: {e}")),
                    );
                }
                return;
            }
        };
        let dest = if hdr.destnode == CTDB_CURRENT_NODE {
            self.pnn()
        } else {
            hdr.destnode
        };
        let noreply = req.flags & CTDB_CTRL_FLAG_NOREPLY != 0;
        let to = if noreply {
            ReplyTo::Nobody
        } else {
            ReplyTo::Client {
                id,
                reqid: hdr.reqid,
            }
        };
        if dest == self.pnn() {
            // CTDB queues a client's control to its own node as a node
            // packet, and the reply too: node_packets_sent counts both,
            // node.req_control and node.reply_control count them as they
            // come back in (node_packets_recv does not).
            self.core.stats.bump(|s| {
                s.node_packets_sent += 1;
                s.node.req_control += 1;
                if !noreply {
                    s.node_packets_sent += 1;
                    s.node.reply_control += 1;
                }
            });
            let ctx = ControlCtx {
                srcnode: self.pnn(),
                client: Some(id),
                client_id: id,
            };
            self.local_control(ctx, &req, to);
            return;
        }
        if matches!(
            dest,
            CTDB_BROADCAST_ALL | CTDB_BROADCAST_ACTIVE | CTDB_BROADCAST_CONNECTED
        ) {
            if !noreply {
                self.reply(
                    to,
                    ReplyControl::error(-1, "broadcast control without NOREPLY"),
                );
                return;
            }
            for pnn in self.broadcast_targets(dest) {
                if pnn == self.pnn() {
                    self.core.stats.bump(|s| {
                        s.node_packets_sent += 1;
                        s.node.req_control += 1;
                    });
                    let ctx = ControlCtx {
                        srcnode: self.pnn(),
                        client: Some(id),
                        client_id: id,
                    };
                    self.local_control(ctx, &req, ReplyTo::Nobody);
                } else {
                    let b = self.forward_bytes(pkt, pnn, 0, Some(id));
                    self.send_node(pnn, b);
                }
            }
            return;
        }
        let connected = self
            .core
            .node
            .node(dest)
            .is_some_and(|n| !n.is_deleted() && n.is_connected());
        if !connected {
            self.reply(
                to,
                ReplyControl::error(-1, "ctdb_control to disconnected node"),
            );
            return;
        }
        let reqid = if noreply {
            0
        } else {
            let r = self.new_reqid();
            let deadline = Instant::now()
                + Duration::from_secs(u64::from(self.core.tunables.control_timeout.max(1)));
            self.pending.insert(
                r,
                Pending {
                    dest,
                    deadline,
                    kind: PendingKind::Forward {
                        id,
                        reqid: hdr.reqid,
                    },
                },
            );
            r
        };
        let b = self.forward_bytes(pkt, dest, reqid, Some(id));
        self.send_node(dest, b);
    }

    /// A copy of packet `pkt` re-addressed from this node to `dest`.
    fn forward_bytes(
        &self,
        pkt: &BytesMut,
        dest: u32,
        reqid: u32,
        client_id: Option<ClientId>,
    ) -> Bytes {
        let mut b = pkt.clone();
        b[12..16].copy_from_slice(&self.generation().to_le_bytes());
        b[20..24].copy_from_slice(&dest.to_le_bytes());
        b[24..28].copy_from_slice(&self.pnn().to_le_bytes());
        if reqid != 0 {
            b[28..32].copy_from_slice(&reqid.to_le_bytes());
        }
        if let Some(c) = client_id
            && b.len() >= 52
        {
            b[48..52].copy_from_slice(&c.to_le_bytes());
        }
        b.freeze()
    }

    fn new_reqid(&mut self) -> u32 {
        loop {
            let r = self.next_reqid;
            self.next_reqid = self.next_reqid.wrapping_add(1);
            if r != 0 && !self.pending.contains_key(&r) {
                return r;
            }
        }
    }

    fn client_message(&mut self, id: ClientId, hdr: Header, pkt: &mut BytesMut) {
        let (srvid, data) = match ReqMessage::raw_payload(&pkt[HEADER_LEN..]) {
            Ok((s, d)) => (s, d.to_vec()),
            Err(e) => {
                error!("client {id}: malformed message ({e}); closing its connection");
                self.drop_client(id);
                return;
            }
        };
        let dest = if hdr.destnode == CTDB_CURRENT_NODE {
            self.pnn()
        } else {
            hdr.destnode
        };
        self.send_message(dest, srvid, &data);
    }

    // ---- messages ------------------------------------------------------

    /// The nodes a broadcast to `dest` reaches (this node included).
    fn broadcast_targets(&self, dest: u32) -> Vec<u32> {
        let nodes = &self.core.node.nodes;
        match dest {
            CTDB_BROADCAST_ALL => nodes
                .iter()
                .filter(|n| !n.is_deleted())
                .map(|n| n.pnn)
                .collect(),
            CTDB_BROADCAST_ACTIVE => {
                let mut v: Vec<u32> = self.core.node.vnnmap.map.clone();
                v.sort_unstable();
                v.dedup();
                v
            }
            CTDB_BROADCAST_CONNECTED => nodes
                .iter()
                .filter(|n| !n.is_deleted() && n.is_connected())
                .map(|n| n.pnn)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Sends a message to `srvid` on node `dest` (or a broadcast).
    pub fn send_message(&mut self, dest: u32, srvid: u64, data: &[u8]) {
        self.send_message_as(dest, srvid, data, Sender::Peer);
    }

    fn send_message_as(&mut self, dest: u32, srvid: u64, data: &[u8], from: Sender) {
        let targets = if matches!(
            dest,
            CTDB_BROADCAST_ALL | CTDB_BROADCAST_ACTIVE | CTDB_BROADCAST_CONNECTED
        ) {
            self.broadcast_targets(dest)
        } else if dest == CTDB_MULTICAST {
            Vec::new()
        } else {
            vec![dest]
        };
        for pnn in targets {
            if pnn == self.pnn() {
                self.deliver_local(srvid, data, from);
            } else if self.core.node.valid_pnn(pnn) {
                let mut h = Header::new(Operation::ReqMessage, pnn, self.pnn(), 0);
                h.generation = self.generation();
                let b = message_bytes(h, srvid, data);
                self.send_node(pnn, b);
            } else {
                error!("Failed to send message to unknown node {pnn}");
            }
        }
    }

    /// Delivers a message to the local clients registered for `srvid`
    /// (or to the database layer, for the srvids it listens on).
    fn deliver_local(&mut self, srvid: u64, data: &[u8], from: Sender) {
        if self.with_dbs(|d, env| d.message(env, srvid, data)) {
            return;
        }
        let recipients = self.core.srvids.recipients(srvid);
        if recipients.is_empty() {
            trace!("no client registered for srvid 0x{srvid:x}");
            return;
        }
        let mut h = Header::new(Operation::ReqMessage, 0, self.pnn(), 0);
        h.generation = self.generation();
        let b = message_bytes(h, srvid, data);
        for id in recipients {
            if self.client_full(id, srvid, b.len(), from) {
                continue;
            }
            self.send_client(id, b.clone());
        }
    }

    /// Whether a message for client `id` must be dropped: more packets
    /// than `MaxQueueDropMsg`, or more bytes than the client queue limit,
    /// wait to be written to it. The first drop of a run is logged, the
    /// run's total when it ends; drops are counted.
    ///
    /// Records a client asked for are held to the packet limit only, as
    /// CTDB holds every message: those this daemon produces (traverse
    /// data, pulled records) and pulled records from other nodes (srvids
    /// of the recovery range). A client may read them slowly on purpose
    /// (a recovery helper reads only as fast as it stores), and one
    /// dropped would fail its traverse or recovery.
    fn client_full(&mut self, id: ClientId, srvid: u64, len: usize, from: Sender) -> bool {
        let Some(c) = self.clients.get(&id) else {
            return false;
        };
        let max_packets = self.core.tunables.max_queue_depth_drop_msg as usize;
        let (packets, bytes) = (c.queued(), c.queued_bytes());
        let recovery = srvid & ctdb_protocol::message::srvid::PREFIX16_MASK
            == ctdb_protocol::message::srvid::RECOVERY;
        let bytes_limited = from == Sender::Peer && !recovery;
        let full = (max_packets != 0 && packets >= max_packets)
            || (bytes_limited && bytes >= self.cfg.client_queue_limit);
        if !full {
            if let Some((n, b)) = c.end_drops() {
                warn!("client {id}: reading again; {n} messages ({b} bytes) were dropped for it");
            }
            return false;
        }
        if c.count_drop(len) {
            let pid = self.core.clients.get(&id).map_or(0, |i| i.pid);
            warn!(
                "client {id} (pid {pid}) does not read: {packets} packets ({bytes} bytes) queued; dropping messages for it (first for srvid 0x{srvid:x})"
            );
        }
        let d = &mut self.core.stats.client_drops;
        d.messages += 1;
        d.bytes += len as u64;
        true
    }

    // ---- controls --------------------------------------------------------

    /// Answers a control addressed to this node.
    fn local_control(&mut self, ctx: ControlCtx, req: &ReqControl, to: ReplyTo) {
        let op = req.opcode();
        self.core.stats.control_started(&to, op);
        if crate::db::controls::handles(op) {
            self.with_dbs(|d, env| d.control(env, ctx, req, to));
            self.after_event();
            return;
        }
        if crate::takeover::Takeover::handles(op) {
            let e = self.takeover.control(&mut self.core, &ctx, req, to);
            self.takeover_effects(e);
            self.after_event();
            return;
        }
        if op == Opcode::Startup {
            let e = self.takeover.node_startup(&self.core);
            self.takeover_effects(e);
        }
        if op == Opcode::EndRecovery {
            // Trans3 commits waiting for the recovery finish first; the
            // reply waits for the "recovered" event.
            self.db_recmode_check();
            self.with_dbs(|d, env| d.end_recovery(env));
            let acts = self.monitor.end_recovery(&self.core, to);
            self.monitor_actions(acts);
            self.after_event();
            return;
        }
        if let ControlRequest::SetRecmode(m) = &req.data
            && *m == ctdb_protocol::types::CTDB_RECOVERY_NORMAL
            && self.core.node.in_recovery()
            && let Err(e) = self.with_dbs(|d, env| d.check_generations(env))
        {
            self.reply(to, ReplyControl::error(-1, e));
            return;
        }
        match self.core.handle(&ctx, req, Some(&self.dbs)) {
            Outcome::Reply(r) => self.reply(to, r),
            Outcome::Async(op) => self.start_async(op, to),
        }
        if op == Opcode::EndRecovery {
            self.db_recmode_check();
            self.with_dbs(|d, env| d.end_recovery(env));
        }
        self.after_event();
    }

    fn start_async(&mut self, op: AsyncOp, to: ReplyTo) {
        match op {
            AsyncOp::Shutdown => {
                self.reply(to, ReplyControl::ok(ControlReply::Shutdown));
                self.shutdown = true;
            }
            AsyncOp::Echo { delay, data } if delay.is_zero() => {
                self.reply(to, ReplyControl::ok(ControlReply::EchoData(data)));
            }
            AsyncOp::Echo { delay, data } => {
                // Held data counts against the client's queue limit, or a
                // client could park any amount of it here.
                if let ReplyTo::Client { id, .. } = to {
                    let held: usize = self
                        .echoes
                        .iter()
                        .filter(|e| matches!(e.1, ReplyTo::Client { id: i, .. } if i == id))
                        .map(|e| e.2.buf.len())
                        .sum();
                    if held + data.buf.len() > self.cfg.client_queue_limit {
                        self.reply(
                            to,
                            ReplyControl::error(-1, "too much echo data waiting for this client"),
                        );
                        return;
                    }
                }
                self.echoes.push((Instant::now() + delay, to, data));
            }
            AsyncOp::CheckClusterLock { lock } => {
                let ev = self.events();
                let dir = self.cfg.helper_dir.clone();
                let log = self.cfg.log_file.as_ref().and_then(|f| f.try_clone().ok());
                let env = self.cfg.helper_env.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let (st, held) = cluster_mutex::take(
                        &lock,
                        &dir,
                        log.as_ref(),
                        &env,
                        Duration::from_secs(5),
                    )
                    .await;
                    if let Some(h) = held {
                        h.release();
                    }
                    let _ = ev
                        .send(Event::LockChecked {
                            to,
                            status: st.as_byte(),
                            latency: started.elapsed().as_secs_f64(),
                        })
                        .await;
                });
            }
            AsyncOp::ReclockConsistency { leader } => {
                let ok_now = leader == self.pnn()
                    || !self
                        .core
                        .node
                        .node(leader)
                        .is_some_and(|n| n.is_connected());
                if ok_now {
                    let acts = self.monitor.start_recovery(&self.core, to);
                    self.monitor_actions(acts);
                    return;
                }
                let reqid = self.new_reqid();
                let deadline = Instant::now()
                    + Duration::from_secs(u64::from(self.core.tunables.control_timeout.max(1)));
                self.pending.insert(
                    reqid,
                    Pending {
                        dest: leader,
                        deadline,
                        kind: PendingKind::ReclockCheck { to },
                    },
                );
                let mut h = Header::new(Operation::ReqControl, leader, self.pnn(), reqid);
                h.generation = self.generation();
                let p = Packet::new(
                    h,
                    Body::ReqControl(ReqControl::new(ControlRequest::GetReclockFile)),
                );
                self.send_node(leader, p.encode().into());
            }
        }
    }

    fn reclock_checked(&mut self, to: ReplyTo, reply: Result<ReplyControl, String>) {
        let remote = match reply {
            Ok(r) if r.status == 0 => match r.data {
                Some(ControlReply::GetReclockFile(s)) => s,
                _ => None,
            },
            Ok(r) => {
                error!("GET_RECLOCK failed");
                self.reply(to, r);
                return;
            }
            Err(e) => {
                error!("GET_RECLOCK failed: {e}");
                self.reply(to, ReplyControl::error(-1, e));
                return;
            }
        };
        if remote != self.core.cluster_lock {
            error!(
                "Recovery lock configuration inconsistent: recmaster has {}, this node has {}, shutting down",
                remote.as_deref().unwrap_or("NULL"),
                self.core.cluster_lock.as_deref().unwrap_or("NULL")
            );
            self.reply(to, ReplyControl::status(-1));
            self.shutdown = true;
            return;
        }
        let acts = self.monitor.start_recovery(&self.core, to);
        self.monitor_actions(acts);
    }

    /// Sends a control reply.
    fn reply(&mut self, to: ReplyTo, r: ReplyControl) {
        self.core.stats.control_answered(&to);
        let (dest, reqid) = match to {
            ReplyTo::Nobody => return,
            ReplyTo::Client { reqid, .. } => (0, reqid),
            ReplyTo::Node { pnn, reqid } => (pnn, reqid),
        };
        let mut h = Header::new(Operation::ReplyControl, dest, self.pnn(), reqid);
        h.generation = self.generation();
        let bytes: Bytes = Packet::new(h, Body::ReplyControl(r)).encode().into();
        match to {
            ReplyTo::Client { id, .. } => self.send_client(id, bytes),
            ReplyTo::Node { pnn, .. } => self.send_node(pnn, bytes),
            ReplyTo::Nobody => {}
        }
    }

    // ---- nodes -----------------------------------------------------------

    fn node_accepted(&mut self, stream: TcpStream, peer: SocketAddr) {
        let Some(pnn) = self
            .core
            .node
            .pnn_of(peer.ip())
            .filter(|p| *p != self.pnn())
        else {
            error!("Refused connection from unknown node {}", peer.ip());
            return;
        };
        if self.links.get(&pnn).is_some_and(|l| l.in_link.is_some()) {
            // The node's link is up: whoever this is, it is not the node.
            error!("Incoming queue active, rejecting connection from {peer} (node {pnn})");
            return;
        }
        let id = self.next_link;
        self.next_link += 1;
        let reader = match transport::in_reader(pnn, id, stream, &self.ready) {
            Ok(r) => r,
            Err(e) => {
                error!("cannot serve connection from {peer} (node {pnn}): {e}");
                return;
            }
        };
        self.links.entry(pnn).or_default().in_link = Some(InLink {
            id,
            peer,
            reader,
            accepted: Instant::now(),
            proven: false,
        });
        self.maybe_connected(pnn);
    }

    /// Checks a packet from node `pnn` (at `peer`) and handles it, or
    /// closes the node's connection; `false` if it was closed.
    fn checked_node_packet(&mut self, pnn: u32, peer: SocketAddr, pkt: BytesMut) -> bool {
        let nodes = &self.core.node;
        let is_node = |p: u32| nodes.node(p).is_some_and(|n| !n.is_deleted());
        match transport::check_packet(pnn, &pkt, is_node) {
            Ok(_) => {
                if let Some(i) = self.links.get_mut(&pnn).and_then(|l| l.in_link.as_mut()) {
                    i.proven = true;
                }
                self.node_packet(pnn, pkt);
                true
            }
            Err(e) => {
                self.core.stats.bump(|s| s.node_packets_recv += 1);
                error!("node {pnn} ({peer}): {e}; closing its connection");
                self.node_dead(pnn, true);
                // Not connected (yet): node_dead left the link alone.
                self.close_in_link(pnn);
                false
            }
        }
    }

    /// For fuzzing: `bytes` as they would arrive on node `pnn`'s incoming
    /// connection, framed and checked as the reader and the loop do, until
    /// the stream ends or the connection would be closed.
    #[doc(hidden)]
    pub fn fuzz_node_stream(&mut self, pnn: u32, bytes: &[u8], chunk: usize) {
        let peer = SocketAddr::from(([127, 0, 0, 1], 4379));
        let mut f = ctdb_protocol::framing::Framer::new(MAX_PACKET);
        for c in bytes.chunks(chunk.max(1)) {
            f.push(c);
            loop {
                match f.next_packet() {
                    Ok(Some(pkt)) => {
                        if !self.checked_node_packet(pnn, peer, pkt) {
                            return;
                        }
                        self.after_event();
                    }
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
    }

    /// For fuzzing: `bytes` as they would arrive from client `id`, framed
    /// as its reader frames them and handed to the loop, until the stream
    /// ends or the connection would be closed.
    #[doc(hidden)]
    pub fn fuzz_client_stream(&mut self, id: ClientId, bytes: &[u8], chunk: usize) {
        self.core.clients.entry(id).or_insert(ClientInfo {
            pid: 1,
            notify: Vec::new(),
        });
        let mut f = ctdb_protocol::framing::Framer::new(MAX_PACKET);
        for c in bytes.chunks(chunk.max(1)) {
            f.push(c);
            loop {
                match f.next_packet() {
                    Ok(Some(pkt)) => {
                        self.client_packet(id, pkt);
                        self.after_event();
                        if !self.core.clients.contains_key(&id) {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        self.client_closed(id, Some("framing".into()));
                        return;
                    }
                }
            }
        }
        self.client_closed(id, None);
    }

    fn close_in_link(&mut self, pnn: u32) {
        if let Some(i) = self.links.get_mut(&pnn).and_then(|l| l.in_link.take()) {
            i.close();
        }
    }

    /// Incoming connections that sent nothing within the keepalive limit
    /// are closed: a real node speaks within a keepalive interval of both
    /// directions being up, a squatter would hold the node's place.
    fn expire_silent_links(&mut self, now: Instant) {
        let limit = Duration::from_secs(u64::from(
            self.core
                .tunables
                .keepalive_interval
                .max(1)
                .saturating_mul(self.core.tunables.keepalive_limit.max(1)),
        ));
        let silent: Vec<(u32, SocketAddr)> = self
            .links
            .iter()
            .filter_map(|(p, l)| l.in_link.as_ref().map(|i| (*p, i)))
            .filter(|(_, i)| !i.proven && now.duration_since(i.accepted) > limit)
            .map(|(p, i)| (p, i.peer))
            .collect();
        for (pnn, peer) in silent {
            error!(
                "node {pnn} ({peer}): nothing received within {} s of connecting; closing its connection",
                limit.as_secs()
            );
            self.close_in_link(pnn);
            self.node_dead(pnn, true);
        }
    }

    fn maybe_connected(&mut self, pnn: u32) {
        let up = self
            .links
            .get(&pnn)
            .is_some_and(|l| l.out_up && l.in_link.is_some());
        if up && self.core.node.node_connected(pnn) {
            let name = self.node_name(pnn);
            error!(
                "connected to {name} - {} connected",
                self.core.node.num_connected()
            );
        }
    }

    fn node_name(&self, pnn: u32) -> String {
        self.core
            .node
            .node(pnn)
            .and_then(|n| n.addr)
            .map(|a| a.to_string())
            .unwrap_or_else(|| format!("node {pnn}"))
    }

    /// Node `pnn` is gone: mark it, fail what waits on it, and tear its
    /// links down so both sides reconnect cleanly.
    fn node_dead(&mut self, pnn: u32, teardown_in: bool) {
        if let Some(l) = self.links.get_mut(&pnn) {
            if teardown_in && let Some(i) = l.in_link.take() {
                i.close();
            }
            if l.out_up {
                l.out_up = false;
                l.drop_link();
                if let Some(tx) = &l.out {
                    let _ = tx.send(OutCmd::Restart);
                }
            }
        }
        if self.core.node.node_dead(pnn) {
            let name = self.node_name(pnn);
            error!(
                "node {name} is dead: {} connected",
                self.core.node.num_connected()
            );
            let failed: Vec<u32> = self
                .pending
                .iter()
                .filter(|(_, p)| p.dest == pnn)
                .map(|(r, _)| *r)
                .collect();
            for r in failed {
                self.fail_pending(r, "node is disconnected");
            }
        }
    }

    fn fail_pending(&mut self, reqid: u32, why: &str) {
        let Some(p) = self.pending.remove(&reqid) else {
            return;
        };
        match p.kind {
            PendingKind::Forward { id, reqid } => {
                self.reply(ReplyTo::Client { id, reqid }, ReplyControl::error(-1, why));
            }
            PendingKind::ReclockCheck { to } => self.reclock_checked(to, Err(why.to_owned())),
            PendingKind::Db { tag, .. } => {
                self.with_dbs(|d, env| d.control_reply(env, tag, Err(why.to_owned())));
            }
        }
    }

    fn send_node(&mut self, pnn: u32, bytes: Bytes) {
        if pnn == self.pnn() {
            // Our own packets loop back on the next turn (counted as sent,
            // as CTDB counts what it queues to itself; not as received).
            self.core.stats.bump(|s| s.node_packets_sent += 1);
            self.loopback.push(BytesMut::from(&bytes[..]));
            return;
        }
        let Some(l) = self.links.get(&pnn) else {
            debug!("no link to node {pnn}, dropping packet");
            return;
        };
        if !l.out_up {
            debug!("no outgoing connection to node {pnn}, dropping packet");
            return;
        }
        if let Some(link) = &l.link {
            if link.queue(bytes) {
                self.dirty_nodes.push(pnn);
            }
            self.core.stats.bump(|s| s.node_packets_sent += 1);
        }
    }

    fn node_packet(&mut self, pnn: u32, pkt: BytesMut) {
        if pnn != self.pnn() {
            self.core.stats.bump(|s| s.node_packets_recv += 1);
        }
        if let Some(n) = self.core.node.node_mut(pnn) {
            n.rx_cnt = n.rx_cnt.wrapping_add(1);
        }
        let hdr = match Header::pull(&pkt) {
            Ok((h, _)) => h,
            Err(e) => {
                error!("bad packet from node {pnn} ({e}); tearing the connection down");
                self.node_dead(pnn, true);
                return;
            }
        };
        let srcnode = if self.core.node.valid_pnn(hdr.srcnode) {
            hdr.srcnode
        } else {
            pnn
        };
        match hdr.operation {
            Operation::ReqControl => {
                self.core.stats.bump(|s| s.node.req_control += 1);
                let req = match ReqControl::pull(&pkt[HEADER_LEN..]) {
                    Ok((r, _)) => r,
                    Err(e) => {
                        warn!("malformed control from node {pnn}: {e}");
                        self.reply(
                            ReplyTo::Node {
                                pnn: srcnode,
                                reqid: hdr.reqid,
                            },
                            ReplyControl::error(-1, format!("malformed control: {e}")),
                        );
                        return;
                    }
                };
                let to = if req.flags & CTDB_CTRL_FLAG_NOREPLY != 0 {
                    ReplyTo::Nobody
                } else {
                    ReplyTo::Node {
                        pnn: srcnode,
                        reqid: hdr.reqid,
                    }
                };
                let ctx = ControlCtx {
                    srcnode,
                    client: None,
                    client_id: req.client_id,
                };
                self.local_control(ctx, &req, to);
            }
            Operation::ReplyControl => {
                self.core.stats.bump(|s| s.node.reply_control += 1);
                self.node_reply(hdr, pkt);
            }
            Operation::ReqMessage => {
                self.core.stats.bump(|s| s.node.req_message += 1);
                match ReqMessage::raw_payload(&pkt[HEADER_LEN..]) {
                    Ok((srvid, data)) => {
                        let data = data.to_vec();
                        self.deliver_local(srvid, &data, Sender::Peer);
                    }
                    Err(e) => warn!("malformed message from node {pnn}: {e}"),
                }
            }
            Operation::ReqKeepalive => {
                self.core.stats.bump(|s| s.keepalive_packets_recv += 1);
                self.check_keepalive(pnn, &pkt);
            }
            Operation::ReqCall
            | Operation::ReplyCall
            | Operation::ReqDmaster
            | Operation::ReplyDmaster
            | Operation::ReplyError => {
                self.core.stats.bump(|s| match hdr.operation {
                    Operation::ReqCall => s.node.req_call += 1,
                    Operation::ReplyCall => s.node.reply_call += 1,
                    Operation::ReqDmaster => s.node.req_dmaster += 1,
                    Operation::ReplyDmaster => s.node.reply_dmaster += 1,
                    _ => s.node.reply_error += 1,
                });
                let b = pkt.freeze();
                self.with_dbs(|d, env| d.node_packet(env, b));
            }
            Operation::ReqTunnel => {
                self.core.stats.bump(|s| s.node.req_tunnel += 1);
                let (me, g) = (self.pnn(), self.generation());
                if let Some((id, b)) = self.core.tunnels.from_node(pnn, &pkt, me, g) {
                    self.send_client(id, b);
                }
            }
        }
    }

    fn check_keepalive(&mut self, pnn: u32, pkt: &[u8]) {
        if self.core.tunables.allow_mixed_versions == 1 {
            return;
        }
        let body = &pkt[HEADER_LEN..];
        let Ok((k, _)) = <ReqKeepalive as ctdb_protocol::Marshal>::pull(body) else {
            error!("Keepalive version missing from node {pnn}");
            return;
        };
        let mine = keepalive_version();
        if k.version != mine {
            let my_uptime = self.core.start_instant.elapsed().as_secs() as u32;
            if k.uptime > my_uptime || (k.uptime == my_uptime && k.version > mine) {
                error!(
                    "Keepalive version mismatch 0x{mine:08x} != 0x{:08x} from node {pnn}",
                    k.version
                );
                error!("CTDB Cluster with mixed versions, cannot continue");
                self.shutdown = true;
            }
        }
    }

    fn node_reply(&mut self, hdr: Header, pkt: BytesMut) {
        let Some(p) = self.pending.remove(&hdr.reqid) else {
            debug!("reply with unknown reqid {} dropped", hdr.reqid);
            return;
        };
        if p.dest != hdr.srcnode {
            warn!(
                "reply to reqid {} from node {} dropped: the request went to node {}",
                hdr.reqid, hdr.srcnode, p.dest
            );
            self.pending.insert(hdr.reqid, p);
            return;
        }
        match p.kind {
            PendingKind::Forward { id, reqid } => {
                // Relayed as this daemon's own reply, as CTDB does.
                let mut b = pkt;
                b[12..16].copy_from_slice(&self.generation().to_le_bytes());
                b[20..24].copy_from_slice(&0u32.to_le_bytes());
                b[24..28].copy_from_slice(&self.pnn().to_le_bytes());
                b[28..32].copy_from_slice(&reqid.to_le_bytes());
                self.send_client(id, b.freeze());
            }
            PendingKind::ReclockCheck { to } => {
                let r = ReplyControl::pull_for(Opcode::GetReclockFile, &pkt[HEADER_LEN..])
                    .map(|(r, _)| r)
                    .map_err(|e| e.to_string());
                self.reclock_checked(to, r);
            }
            PendingKind::Db { tag, opcode } => {
                let r = ReplyControl::pull_for(opcode, &pkt[HEADER_LEN..])
                    .map(|(r, _)| r)
                    .map_err(|e| e.to_string());
                self.with_dbs(|d, env| d.control_reply(env, tag, r));
            }
        }
    }

    // ---- time --------------------------------------------------------------

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
        self.monitor.tick(&mut self.core, now);
        let e = self.takeover.tick(&mut self.core, now);
        self.takeover_effects(e);
        self.with_dbs(|d, env| d.tick(env, now));
        self.db_recmode_check();
    }

    fn keepalive_round(&mut self) {
        let limit = self.core.tunables.keepalive_limit;
        let others: Vec<u32> = self
            .core
            .node
            .nodes
            .iter()
            .filter(|n| !n.is_deleted() && n.pnn != self.pnn())
            .map(|n| n.pnn)
            .collect();
        for pnn in others {
            let Some(n) = self.core.node.node_mut(pnn) else {
                continue;
            };
            if !n.is_connected() {
                continue;
            }
            if n.rx_cnt == 0 {
                n.dead_count += 1;
            } else {
                n.dead_count = 0;
            }
            n.rx_cnt = 0;
            if n.dead_count >= limit {
                info!("dead count reached for node {pnn}");
                self.node_dead(pnn, true);
                continue;
            }
            self.send_keepalive(pnn);
        }
    }

    fn send_keepalive(&mut self, pnn: u32) {
        let mut h = Header::new(Operation::ReqKeepalive, pnn, self.pnn(), 0);
        h.generation = self.generation();
        let k = ReqKeepalive {
            version: keepalive_version(),
            uptime: self.core.start_instant.elapsed().as_secs() as u32,
        };
        let b: Bytes = Packet::new(h, Body::ReqKeepalive(Some(k))).encode().into();
        self.core.stats.bump(|s| s.keepalive_packets_sent += 1);
        self.send_node(pnn, b);
    }

    /// Tells the other nodes this node has started up (after its
    /// `startup` event, [`crate::monitor`]).
    fn broadcast_startup(&mut self) {
        let mut req = ReqControl::new(ControlRequest::Startup);
        req.flags = CTDB_CTRL_FLAG_NOREPLY;
        for pnn in self.broadcast_targets(CTDB_BROADCAST_CONNECTED) {
            if pnn == self.pnn() {
                continue;
            }
            let mut h = Header::new(Operation::ReqControl, pnn, self.pnn(), 0);
            h.generation = self.generation();
            let b: Bytes = Packet::new(h, Body::ReqControl(req.clone()))
                .encode()
                .into();
            self.send_node(pnn, b);
        }
    }

    /// Whether this node may lead (for the recovery daemon).
    pub fn can_lead(&self) -> bool {
        self.core.node.capabilities & capabilities::RECMASTER != 0
    }
}

/// Encodes a `REQ_MESSAGE` with raw payload bytes.
fn message_bytes(h: Header, srvid: u64, data: &[u8]) -> Bytes {
    let p = Packet::new(h, Body::ReqMessage(ReqMessage::data(srvid, data.to_vec())));
    p.encode().into()
}

use ctdb_protocol::Marshal as _;
