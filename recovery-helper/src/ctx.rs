//! What every step of a recovery shares: the connection, the active nodes
//! with their ban credits, the tunables, the memory budget and the options.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ctdb_client::Client;
use ctdb_protocol::message::srvid;
use ctdb_protocol::types::{TunableList, capabilities};
use ctdb_protocol::{ControlRequest, ReplyControl};

use crate::budget::{self, Budget};
use crate::error::{Error, Result};

/// Settings read from the environment (besides CTDB's own).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Bytes of records all databases together may hold in memory
    /// (`CTDB_RECOVERY_HELPER_MEMORY`, e.g. `64M`).
    pub memory_limit: usize,
    /// Where to append trace events (`CTDB_RECOVERY_HELPER_TRACE`).
    pub trace: Option<PathBuf>,
    /// Test hook (`CTDB_RECOVERY_HELPER_HOLD`): while this file exists,
    /// each database waits (at most RecoverTimeout) after its transaction
    /// has started and before its records are pulled.
    pub hold: Option<PathBuf>,
    /// Directory for spill files (`CTDB_DBDIR_STATE`, which the reference
    /// daemon sets for its helper); else the database's own directory.
    pub dbdir_state: Option<PathBuf>,
}

impl Options {
    pub fn from_env() -> Options {
        let path = |v: &str| {
            std::env::var_os(v)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        };
        Options {
            memory_limit: std::env::var("CTDB_RECOVERY_HELPER_MEMORY")
                .ok()
                .and_then(|s| budget::parse_size(&s))
                .unwrap_or(budget::DEFAULT_LIMIT),
            trace: path("CTDB_RECOVERY_HELPER_TRACE"),
            hold: path("CTDB_RECOVERY_HELPER_HOLD"),
            dbdir_state: path("CTDB_DBDIR_STATE"),
        }
    }
}

/// The active nodes of this recovery, in node-map order, with their
/// capabilities and the ban credits they earn by making steps fail.
#[derive(Debug)]
pub struct NodeList {
    pub pnns: Vec<u32>,
    pub caps: Vec<u32>,
    credits: Mutex<Vec<u32>>,
}

impl NodeList {
    pub fn new(pnns: Vec<u32>, caps: Vec<u32>) -> NodeList {
        let n = pnns.len();
        NodeList {
            pnns,
            caps,
            credits: Mutex::new(vec![0; n]),
        }
    }

    /// Position of `pnn` in the list.
    pub fn index(&self, pnn: u32) -> Option<usize> {
        self.pnns.iter().position(|&p| p == pnn)
    }

    /// Gives `pnn` one ban credit.
    pub fn ban_credit(&self, pnn: u32, why: &str) {
        if let Some(i) = self.index(pnn) {
            let mut c = self.credits.lock().unwrap();
            c[i] += 1;
            tracing::warn!("ban credit for node {pnn} (now {}): {why}", c[i]);
            crate::trace_event!("ban-credit", "node={pnn} credits={}", c[i]);
        }
    }

    pub fn credits(&self) -> Vec<u32> {
        self.credits.lock().unwrap().clone()
    }

    pub fn clear_credits(&self, pnn: u32) {
        if let Some(i) = self.index(pnn) {
            self.credits.lock().unwrap()[i] = 0;
        }
    }

    /// The nodes that may be lmaster, for the new vnn map.
    pub fn lmasters(&self) -> Vec<u32> {
        self.pnns
            .iter()
            .zip(&self.caps)
            .filter(|(_, c)| *c & capabilities::LMASTER != 0)
            .map(|(p, _)| *p)
            .collect()
    }
}

/// Shared state of one recovery run.
pub struct Ctx {
    pub client: Client,
    /// The daemon's socket, for the pulls' own connections.
    pub socket: PathBuf,
    pub mypnn: u32,
    pub generation: u32,
    pub tun: TunableList,
    pub nodes: NodeList,
    pub budget: Arc<Budget>,
    pub opts: Options,
    /// Bytes of its budget share each database may merge at once.
    pub share: usize,
    next_srvid: AtomicU64,
}

impl Ctx {
    pub fn new(
        client: Client,
        socket: PathBuf,
        generation: u32,
        tun: TunableList,
        nodes: NodeList,
        opts: Options,
        ndbs: usize,
    ) -> Ctx {
        let budget = Arc::new(Budget::new(opts.memory_limit));
        Ctx {
            mypnn: client.pnn(),
            share: opts.memory_limit / ndbs.max(1),
            client,
            socket,
            generation,
            tun,
            nodes,
            budget,
            opts,
            next_srvid: AtomicU64::new(srvid::RECOVERY),
        }
    }

    /// A fresh srvid in CTDB's recovery range for one pull or push.
    pub fn srvid(&self) -> u64 {
        self.next_srvid.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The recovery timeout, bounding every wait.
    pub fn timeout(&self) -> Duration {
        self.client.timeout()
    }

    /// Sends a control to every node of `nodes` at once; fails naming the
    /// first node (in list order) whose control failed.
    pub async fn all(
        &self,
        nodes: &[u32],
        op: &'static str,
        req: ControlRequest,
    ) -> Result<Vec<ReplyControl>> {
        all(&self.client, nodes, op, req).await
    }
}

/// [`Ctx::all`] before a context exists.
pub async fn all(
    client: &Client,
    nodes: &[u32],
    op: &'static str,
    req: ControlRequest,
) -> Result<Vec<ReplyControl>> {
    let t = std::time::Instant::now();
    let results = client.control_many(nodes, req).await;
    crate::trace_event!(
        "control",
        "op={op} nodes={} us={}",
        nodes.len(),
        t.elapsed().as_micros()
    );
    let mut replies = Vec::with_capacity(results.len());
    for (pnn, r) in results {
        replies.push(r.map_err(Error::node_err(op, pnn))?);
    }
    Ok(replies)
}
