//! The fake daemon's state: the script, the cluster of daemon cores built
//! from it, databases, clients and tickles.
//!
//! Handlers never touch sockets: they queue outgoing packets and delayed
//! work in an [`Effects`] that the connection task carries out after
//! releasing the lock on the [`Daemon`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use ctdb_protocol::header::{CTDB_UNKNOWN_PNN, INVALID_GENERATION};
use ctdb_protocol::types::{Connection, EchoData, Timeval};
use ctdb_protocol::{Body, Header, Operation, Packet, ReplyControl, ReqMessage};
use ctdbd::messaging::ClientId;

use crate::cluster::Cluster;
use crate::db::Database;
use crate::state::ClusterState;

/// Work to do after a packet has been handled.
#[derive(Default)]
pub struct Effects {
    /// Encoded packets for clients, by client id.
    pub send: Vec<(ClientId, Vec<u8>)>,
    /// Delayed work.
    pub later: Vec<Later>,
    /// Stop the daemon.
    pub shutdown: bool,
}

/// Delayed work.
pub enum Later {
    /// Finish a recovery (`SET_RECMODE` active), then reply to the client
    /// that asked.
    Recovery { client: ClientId, reply_to: Header },
    /// Lift node `pnn`'s ban if it has run out by then.
    ExpireBan { pnn: u32, after: Duration },
    /// Re-enable recoveries on node `pnn` after `after`, if still `serial`.
    EnableRecoveries {
        pnn: u32,
        serial: u64,
        after: Duration,
    },
    /// `ECHO_DATA`: reply after the delay the client asked for.
    Echo {
        client: ClientId,
        reply_to: Header,
        delay: Duration,
        data: EchoData,
    },
}

/// Everything the fake daemon knows.
pub struct Daemon {
    /// The script (control failures, interfaces, public addresses, ...).
    pub st: ClusterState,
    /// The nodes, each a daemon core.
    pub cluster: Cluster,
    pub dbdir: PathBuf,
    pub dbs: Vec<Database>,
    /// Where to queue packets for each connected client.
    pub clients: HashMap<ClientId, tokio::sync::mpsc::UnboundedSender<Vec<u8>>>,
    /// Tickle lists, by (node, public address).
    pub tickles: HashMap<(u32, String), Vec<Connection>>,
    pub serial: u64,
    /// Where the address controls and ban messages received are written
    /// (`FAKE_CTDBD_CONTROL_LOG`), for tests of takeover helpers.
    pub control_log: Option<std::fs::File>,
}

impl Daemon {
    /// A daemon for `st`, with its databases' files under `dbdir`.
    pub fn new(st: ClusterState, dbdir: PathBuf) -> anyhow::Result<Daemon> {
        let generation = if st.generation == INVALID_GENERATION {
            new_generation(st.generation)
        } else {
            st.generation
        };
        let mut dbs = Vec::new();
        for d in &st.dbs {
            dbs.push(Database::open(&dbdir, d.id, &d.name, d.flags, d.seqnum)?);
        }
        Ok(Daemon {
            cluster: Cluster::new(&st, generation),
            st,
            dbdir,
            dbs,
            clients: HashMap::new(),
            tickles: HashMap::new(),
            serial: 0,
            control_log: open_control_log(),
        })
    }

    /// Appends `line` to the control log, if there is one.
    pub fn log_control(&mut self, line: std::fmt::Arguments) {
        use std::io::Write;
        if let Some(f) = &mut self.control_log {
            let _ = writeln!(f, "{line}");
        }
    }

    /// The current node (the one clients are connected to).
    pub fn pnn(&self) -> u32 {
        self.cluster.view.pnn
    }

    pub fn generation(&self) -> u32 {
        self.cluster.vnnmap.generation
    }

    pub fn db(&self, id: u32) -> Option<&Database> {
        self.dbs.iter().find(|d| d.id == id)
    }

    pub fn db_mut(&mut self, id: u32) -> Option<&mut Database> {
        self.dbs.iter_mut().find(|d| d.id == id)
    }

    pub fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    /// A client connected.
    pub fn add_client(
        &mut self,
        id: ClientId,
        pid: i32,
        tx: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    ) {
        self.clients.insert(id, tx);
        self.cluster.add_client(id, pid);
    }

    /// A client went away: forgets it and its srvids, and sends the
    /// messages it registered for that moment.
    pub fn remove_client(&mut self, fx: &mut Effects, id: ClientId) {
        self.clients.remove(&id);
        for n in self.cluster.remove_client(id) {
            self.dispatch(fx, self.pnn(), n.srvid, &n.data);
        }
    }

    /// A header for a packet this daemon sends in answer to `req`.
    pub fn answer_header(&self, op: Operation, req: &Header) -> Header {
        let mut h = Header::new(op, req.srcnode, req.destnode, req.reqid);
        h.generation = self.generation();
        h
    }

    /// Queues a control reply to `client`.
    pub fn reply(&self, fx: &mut Effects, client: ClientId, req: &Header, reply: ReplyControl) {
        let h = self.answer_header(Operation::ReplyControl, req);
        fx.send
            .push((client, Packet::new(h, Body::ReplyControl(reply)).encode()));
    }

    /// Queues a message from node `req.destnode` to `client`.
    pub fn message_to(
        &self,
        fx: &mut Effects,
        client: ClientId,
        req: &Header,
        srvid: u64,
        data: Vec<u8>,
    ) {
        let mut h = self.answer_header(Operation::ReqMessage, req);
        h.reqid = 0;
        fx.send.push((
            client,
            Packet::new(h, Body::ReqMessage(ReqMessage::data(srvid, data))).encode(),
        ));
    }

    /// Queues `data` for every client that registered `srvid`, as sent by
    /// node `src`.
    pub fn dispatch(&self, fx: &mut Effects, src: u32, srvid: u64, data: &[u8]) {
        for id in self.cluster.recipients(srvid) {
            let mut h = Header::new(Operation::ReqMessage, self.pnn(), src, 0);
            h.generation = self.generation();
            fx.send.push((
                id,
                Packet::new(h, Body::ReqMessage(ReqMessage::data(srvid, data.to_vec()))).encode(),
            ));
        }
    }

    /// Starts a recovery.
    pub fn start_recovery(&mut self) {
        self.cluster.recovery_started = Timeval::now();
    }

    /// Ends a recovery: normal mode, a new generation.
    pub fn finish_recovery(&mut self) {
        let c = &mut self.cluster;
        c.recmode = ctdb_protocol::types::CTDB_RECOVERY_NORMAL;
        c.recovery_finished = Timeval::now();
        c.vnnmap.generation = new_generation(c.vnnmap.generation);
    }

    /// The leader broadcast: the leader's pnn to every `LEADER` listener.
    pub fn leader_broadcast(&self, fx: &mut Effects) {
        let leader = self.st.leader;
        if leader == CTDB_UNKNOWN_PNN {
            return;
        }
        self.dispatch(
            fx,
            leader,
            ctdb_protocol::message::srvid::LEADER,
            &leader.to_le_bytes(),
        );
    }
}

/// The file `FAKE_CTDBD_CONTROL_LOG` names, opened for appending.
fn open_control_log() -> Option<std::fs::File> {
    let path = std::env::var_os("FAKE_CTDBD_CONTROL_LOG")?;
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        Ok(f) => Some(f),
        Err(e) => {
            eprintln!("cannot open {}: {e}", std::path::Path::new(&path).display());
            None
        }
    }
}

/// The next generation after `old`: never the invalid one nor `old`.
/// Deterministic (a linear congruential step), so scripted runs print the
/// same generations every time.
pub fn new_generation(old: u32) -> u32 {
    let mut g = old;
    loop {
        g = g.wrapping_mul(1_103_515_245).wrapping_add(12_345) & 0x7fff_ffff;
        if g != INVALID_GENERATION && g != old {
            return g;
        }
    }
}
