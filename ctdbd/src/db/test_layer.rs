//! For unit tests of the database layer: the layer as node 1 of a
//! three-node cluster sees it (vnnmap 0, 1, 2 at generation 5), with one
//! database open ([`node1_of_three`]), and the same with the node's
//! environment around it ([`Layer`]), and a recovery of it driven through
//! the controls ([`Recovery`]). Each test module adds what its rules need
//! on top.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ctdb_protocol::types::{
    CTDB_RECOVERY_NORMAL, LtdbHeader, PullDbExt, RecBuffer, TransDb, TunableList, VnnMap,
    capabilities,
};
use ctdb_protocol::{ControlRequest, Marshal, ReplyControl, ReqControl};
use tokio::sync::mpsc;

use super::{Databases, DbConfig, DbEvent, Effect, Env, ltdb};
use crate::config::NodeEntry;
use crate::control::{ClientInfo, ControlCtx};
use crate::messaging::ClientId;
use crate::node::NodeState;
use crate::server::ReplyTo;

/// The layer, its event receiver, the node's state and the id of the
/// database `name` (volatile, in `dir`).
pub(crate) fn node1_of_three(
    dir: &Path,
    name: &str,
    mutexes: bool,
) -> (Databases, mpsc::UnboundedReceiver<DbEvent>, NodeState, u32) {
    let (mut dbs, rx) = Databases::new(DbConfig {
        volatile_dir: dir.join("v"),
        persistent_dir: dir.join("p"),
        state_dir: dir.join("s"),
        mutexes,
        traverse_helper: "ctdbd".into(),
    });
    let entries: Vec<NodeEntry> = (1..=3)
        .map(|i| NodeEntry {
            addr: Some(format!("127.0.0.{i}").parse().unwrap()),
        })
        .collect();
    let mut node = NodeState::new(1, &entries, capabilities::DEFAULT);
    node.set_vnnmap(VnnMap {
        generation: 5,
        map: vec![0, 1, 2],
    })
    .unwrap();
    let db = super::file::open(&dbs.cfg, name, 0, 1, 131, 5, 5).unwrap();
    let id = db.id;
    dbs.order.push(id);
    dbs.dbs.insert(id, db);
    (dbs, rx, node, id)
}

/// [`node1_of_three`] as the rule tests start from it: every node healthy,
/// the cluster out of recovery, default tunables, no clients. The temp
/// dir lives as long as it. Test modules add their own steps in `impl
/// Layer` blocks of their own.
pub(crate) struct Layer {
    _dir: tempfile::TempDir,
    pub(crate) dbs: Databases,
    /// The layer's events (a repack's or an apply's handle coming back).
    pub(crate) rx: mpsc::UnboundedReceiver<DbEvent>,
    pub(crate) node: NodeState,
    pub(crate) tunables: TunableList,
    pub(crate) clients: BTreeMap<ClientId, ClientInfo>,
    /// The database the test works on: `name` given to [`Layer::new`],
    /// unless the test points it at another it opened.
    pub(crate) id: u32,
}

impl Layer {
    /// With the volatile database `name` open; robust mutexes for record
    /// locks when `mutexes`.
    pub(crate) fn new(name: &str, mutexes: bool) -> Layer {
        let dir = tempfile::tempdir().unwrap();
        let (dbs, rx, mut node, id) = node1_of_three(dir.path(), name, mutexes);
        for p in 0..3 {
            node.node_mut(p).unwrap().flags = 0;
        }
        node.recovery_mode = CTDB_RECOVERY_NORMAL;
        Layer {
            _dir: dir,
            dbs,
            rx,
            node,
            tunables: crate::tunables::defaults(),
            clients: BTreeMap::new(),
            id,
        }
    }

    /// Opens one more database (`flags` as `DB_ATTACH_EXT`'s); its id.
    pub(crate) fn open(&mut self, name: &str, flags: u8) -> u32 {
        let db = super::file::open(&self.dbs.cfg, name, flags, 1, 131, 5, 5).unwrap();
        let id = db.id;
        self.dbs.order.push(id);
        self.dbs.dbs.insert(id, db);
        id
    }

    /// The layer and this node's environment, side by side.
    pub(crate) fn parts(&mut self) -> (&mut Databases, Env<'_>) {
        let env = Env {
            node: &self.node,
            tunables: &self.tunables,
            clients: &self.clients,
        };
        (&mut self.dbs, env)
    }

    /// Runs `f` on the layer with this node's environment.
    pub(crate) fn with<R>(&mut self, f: impl FnOnce(&mut Databases, &Env) -> R) -> R {
        let (dbs, env) = self.parts();
        f(dbs, &env)
    }

    /// Hands the layer a packet from another node: what it does.
    pub(crate) fn packet(&mut self, b: Bytes) -> Vec<Effect> {
        self.with(|d, env| {
            d.node_packet(env, b);
            d.take_effects()
        })
    }

    /// Sends control `data` from node 0 with request id `reqid`; its
    /// reply, if any, is among the layer's effects.
    pub(crate) fn control(&mut self, reqid: u32, data: ControlRequest) {
        let ctx = ControlCtx {
            srcnode: 0,
            client: None,
            client_id: 0,
        };
        let req = ReqControl::new(data);
        self.with(|d, env| d.control(env, ctx, &req, ReplyTo::Node { pnn: 0, reqid }));
    }

    /// The next event the layer's background work reports (a lock
    /// helper, a worker), waited for at most 10 s; `what` names it in the
    /// failure.
    pub(crate) fn next_event(&mut self, what: &str) -> DbEvent {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let rx = &mut self.rx;
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), rx.recv()).await })
            .unwrap_or_else(|_| panic!("{what}: not within 10 s"))
            .expect("the layer's event channel")
    }

    /// Runs the work that became ready: what it does.
    pub(crate) fn run_ready(&mut self) -> Vec<Effect> {
        self.with(|d, env| {
            d.run_ready(env);
            d.take_effects()
        })
    }

    /// `key`'s chain locked by another thread, as a client process would
    /// hold it: its chain, the sender whose drop lets go, the thread.
    pub(crate) fn client_holds(
        &self,
        key: &[u8],
    ) -> (
        u32,
        std::sync::mpsc::Sender<()>,
        std::thread::JoinHandle<()>,
    ) {
        let tdb = self.dbs.dbs[&self.id].tdb.as_ref().unwrap();
        let (waiter, bucket) = (tdb.chain_waiter().unwrap(), tdb.bucket_of(key));
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let client = std::thread::spawn(move || {
            let held = waiter.lock(bucket).unwrap();
            locked_tx.send(()).unwrap();
            let _ = release_rx.recv();
            drop(held);
        });
        locked_rx.recv().unwrap();
        (bucket, release_tx, client)
    }

    /// Writes a record straight into the file of database [`Layer::id`].
    pub(crate) fn put(&self, key: &[u8], h: &LtdbHeader, data: &[u8]) {
        let tdb = self.dbs.dbs[&self.id].tdb.as_ref().unwrap();
        tdb.storev(
            key,
            &[&ltdb::header_bytes(h), data],
            tdb::StoreMode::Replace,
        )
        .unwrap();
    }

    /// A record of database [`Layer::id`]'s file, once the handle is back
    /// from a repack or an apply (their events handed to the layer).
    pub(crate) fn get(&mut self, key: &[u8]) -> Option<(LtdbHeader, Vec<u8>)> {
        while self.dbs.dbs[&self.id].tdb.is_none() {
            let ev = self.rx.blocking_recv().unwrap();
            self.with(|d, env| d.event(env, ev));
        }
        let tdb = self.dbs.dbs[&self.id].tdb.as_ref().unwrap();
        tdb.fetch(key)
            .unwrap()
            .and_then(|v| ltdb::split(&v).map(|(h, d)| (h, d.to_vec())))
    }
}

/// The `n`-th key (of `key0`, `key1`, ...) whose lmaster in a map of 0, 1,
/// 2 is node `lm`.
pub(crate) fn key_for(lm: u32, n: usize) -> Vec<u8> {
    (0u32..)
        .map(|i| format!("key{i}").into_bytes())
        .filter(|k| ltdb::key_hash(k) % 3 == lm)
        .nth(n)
        .unwrap()
}

/// Drives a recovery of a [`Layer`]'s database the way the recovery helper
/// does: controls from node 0, each waited for and required to succeed,
/// and the push message.
pub(crate) struct Recovery {
    pub(crate) rt: tokio::runtime::Runtime,
    next: u32,
    /// Effects other than control replies, in order.
    pub(crate) other: Vec<Effect>,
    replies: Vec<(u32, ReplyControl)>,
}

impl Recovery {
    pub(crate) fn new() -> Recovery {
        Recovery {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap(),
            next: 1,
            other: Vec::new(),
            replies: Vec::new(),
        }
    }

    fn collect(&mut self, f: &mut Layer) {
        for e in f.dbs.take_effects() {
            match e {
                Effect::Reply(ReplyTo::Node { reqid, .. }, r) => self.replies.push((reqid, r)),
                e => self.other.push(e),
            }
        }
    }

    /// Hands the layer its events until `done` holds (10 s at most).
    fn until(&mut self, f: &mut Layer, what: &str, mut done: impl FnMut(&Self, &Layer) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.collect(f);
            if done(self, f) {
                return;
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("{what}: not within 10 s"));
            let rx = &mut f.rx;
            let ev = self
                .rt
                .block_on(async { tokio::time::timeout(left, rx.recv()).await })
                .unwrap_or_else(|_| panic!("{what}: not within 10 s"))
                .expect("the layer's event channel");
            f.with(|d, env| d.event(env, ev));
        }
    }

    /// A control from node 0, answered with success.
    pub(crate) fn control(&mut self, f: &mut Layer, data: ControlRequest) {
        let reqid = self.next;
        self.next += 1;
        let what = format!("{data:?}");
        f.control(reqid, data);
        self.until(f, &what, |s, _| s.replies.iter().any(|r| r.0 == reqid));
        let i = self.replies.iter().position(|r| r.0 == reqid).unwrap();
        let (_, r) = self.replies.remove(i);
        assert_eq!(r.status, 0, "{what}: {r:?}");
    }

    /// Freezes database [`Layer::id`] and starts recovery transaction
    /// `tid` on it.
    pub(crate) fn start(&mut self, f: &mut Layer, tid: u32) {
        let id = f.id;
        self.control(f, ControlRequest::DbFreeze(id));
        self.control(
            f,
            ControlRequest::DbTransactionStart(TransDb { db_id: id, tid }),
        );
    }

    /// Pushes `b`'s records into database [`Layer::id`] (its `db_id` set
    /// to it) as the recovery helper does: the push's start, the records
    /// as a message to `srvid`, the confirm.
    pub(crate) fn push(&mut self, f: &mut Layer, srvid: u64, mut b: RecBuffer) {
        let id = f.id;
        self.control(
            f,
            ControlRequest::DbPushStart(PullDbExt {
                db_id: id,
                lmaster: 0,
                srvid,
            }),
        );
        b.db_id = id;
        let mut data = vec![0u8; b.len()];
        b.push(&mut data);
        assert!(f.with(|d, env| d.message(env, srvid, &data)));
        self.control(f, ControlRequest::DbPushConfirm(id));
    }

    /// Thaws database [`Layer::id`] and waits for its handle to come home.
    pub(crate) fn thaw(&mut self, f: &mut Layer) {
        let id = f.id;
        self.control(f, ControlRequest::DbThaw(id));
        self.until(f, "the handle back after the thaw", |_, f| {
            f.dbs.dbs[&id].tdb.is_some()
        });
        self.collect(f);
    }
}
