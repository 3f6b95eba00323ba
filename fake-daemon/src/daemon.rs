//! The fake daemon's state and what changes it: the scripted cluster plus
//! what clients did to it (attached databases, tunables, flags, srvids).
//!
//! Handlers never touch sockets: they queue outgoing packets and delayed
//! work in an [`Effects`] that the connection task carries out after
//! releasing the lock on the [`Daemon`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use ctdb_protocol::header::{CTDB_UNKNOWN_PNN, INVALID_GENERATION};
use ctdb_protocol::types::{Connection, Timeval};
use ctdb_protocol::{Body, ControlReply, Header, Operation, Packet, ReplyControl, ReqMessage};

use crate::db::Database;
use crate::state::ClusterState;
use crate::tunables::Tunables;

/// A connected client.
pub struct ClientInfo {
    /// The client's process id (from the socket's peer credentials).
    pub pid: i32,
    /// Where to queue packets for it.
    pub tx: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
}

/// Work to do after a packet has been handled.
#[derive(Default)]
pub struct Effects {
    /// Encoded packets for clients, by client id.
    pub send: Vec<(u64, Vec<u8>)>,
    /// Delayed work.
    pub later: Vec<Later>,
    /// Stop the daemon.
    pub shutdown: bool,
}

/// Delayed work.
pub enum Later {
    /// Finish a recovery (`SET_RECMODE` active), then reply to the client
    /// that asked.
    Recovery { client: u64, reply_to: Header },
    /// Lift a ban of node `pnn` after `after`, if it is still ban `serial`.
    Unban {
        pnn: u32,
        serial: u64,
        after: Duration,
    },
    /// Re-enable recoveries on node `pnn` after `after`, if still `serial`.
    EnableRecoveries {
        pnn: u32,
        serial: u64,
        after: Duration,
    },
}

/// Everything the fake daemon knows.
pub struct Daemon {
    pub st: ClusterState,
    pub dbdir: PathBuf,
    pub dbs: Vec<Database>,
    pub tunables: Tunables,
    pub log_level: u32,
    pub recmode: u32,
    pub start_time: Timeval,
    pub recovery_start: Timeval,
    pub recovery_end: Timeval,
    pub clients: HashMap<u64, ClientInfo>,
    /// Registered srvids: srvid -> client ids.
    pub srvids: HashMap<u64, Vec<u64>>,
    /// Tickle lists, by (node, public address).
    pub tickles: HashMap<(u32, String), Vec<Connection>>,
    /// Ban serials per node, so an expired timer never lifts a newer ban.
    pub ban_serial: HashMap<u32, u64>,
    pub serial: u64,
}

impl Daemon {
    /// A daemon for `st`, with its databases' files under `dbdir`.
    pub fn new(mut st: ClusterState, dbdir: PathBuf) -> anyhow::Result<Daemon> {
        let now = Timeval::now();
        if st.generation == INVALID_GENERATION {
            st.generation = new_generation(st.generation);
        }
        let mut dbs = Vec::new();
        for d in &st.dbs {
            dbs.push(Database::open(&dbdir, d.id, &d.name, d.flags, d.seqnum)?);
        }
        Ok(Daemon {
            st,
            dbdir,
            dbs,
            tunables: Tunables::default(),
            log_level: 0,
            recmode: 0,
            start_time: now,
            recovery_start: now,
            recovery_end: now,
            clients: HashMap::new(),
            srvids: HashMap::new(),
            tickles: HashMap::new(),
            ban_serial: HashMap::new(),
            serial: 0,
        })
    }

    pub fn num_clients(&self) -> usize {
        self.clients.len()
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

    /// A header for a packet this daemon sends in answer to `req`.
    pub fn answer_header(&self, op: Operation, req: &Header) -> Header {
        let mut h = Header::new(op, req.srcnode, req.destnode, req.reqid);
        h.generation = self.st.generation;
        h
    }

    /// Queues a control reply to `client`.
    pub fn reply(&self, fx: &mut Effects, client: u64, req: &Header, reply: ReplyControl) {
        let h = self.answer_header(Operation::ReplyControl, req);
        fx.send
            .push((client, Packet::new(h, Body::ReplyControl(reply)).encode()));
    }

    /// Queues a message from node `req.destnode` to `client`.
    pub fn message_to(
        &self,
        fx: &mut Effects,
        client: u64,
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
        let Some(ids) = self.srvids.get(&srvid) else {
            return;
        };
        for &id in ids {
            let mut h = Header::new(Operation::ReqMessage, self.st.pnn, src, 0);
            h.generation = self.st.generation;
            fx.send.push((
                id,
                Packet::new(h, Body::ReqMessage(ReqMessage::data(srvid, data.to_vec()))).encode(),
            ));
        }
    }

    /// Ends a recovery: normal mode, a new generation.
    pub fn finish_recovery(&mut self) {
        self.recmode = 0;
        self.recovery_end = Timeval::now();
        self.st.generation = new_generation(self.st.generation);
    }

    /// Whether some node has recoveries disabled.
    pub fn recoveries_disabled(&self) -> bool {
        self.st.nodes.iter().any(|n| n.recovery_disabled != 0)
    }

    /// Forgets a client and its srvids.
    pub fn remove_client(&mut self, id: u64) {
        self.clients.remove(&id);
        for ids in self.srvids.values_mut() {
            ids.retain(|c| *c != id);
        }
        self.srvids.retain(|_, ids| !ids.is_empty());
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

/// A successful reply with no data for `op`'s empty reply variant.
pub fn ok_empty(data: ControlReply) -> ReplyControl {
    ReplyControl::ok(data)
}
