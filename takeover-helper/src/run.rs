//! One takeover run, talking to the local daemon: the steps, controls,
//! timeouts, log lines and ban credits of CTDB 4.17's helper.
//!
//! 1. `GET_ALL_TUNABLES` and `GET_NODEMAP` from the local node;
//! 2. `GET_PUBLIC_IPS` from every connected node (known addresses), then,
//!    with the available-only flag, from every active node that knows some;
//! 3. the allocation ([`crate::ipalloc`]), unless nothing can be hosted;
//! 4. `RELEASE_IP` for each address to every connected node that knows it
//!    and should not host it (telling it the new host), then `TAKEOVER_IP`
//!    to each address's new host, then `IPREALLOCATED` to every connected
//!    node. The three stages share one deadline of 3 x TakeoverTimeout.
//!
//! A node whose control fails gets a ban credit; when the run fails, the
//! node with the most credits is named to the leader (this node) with a
//! `CTDB_SRVID_BANNING` message, if EnableBans is set. Failures carry an
//! errno-style code (a control's negative status, `ETIMEDOUT`, ...), which
//! the helper writes to its status fd.
//!
//! As in CTDB's client library, when one control goes to several nodes and
//! several fail, only the first failure is counted and named.

use std::time::{Duration, Instant};

use ctdb_client::{Client, ClientError};
use ctdb_protocol::control::CTDB_PUBLIC_IP_FLAGS_ONLY_AVAILABLE;
use ctdb_protocol::message::srvid;
use ctdb_protocol::types::{PublicIp, TunableList, node_flags};
use ctdb_protocol::{ControlReply, ControlRequest, ReplyControl};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::ipalloc::{self, Algorithm, Inputs, Placement};

/// The timeout of the first control, before TakeoverTimeout is known
/// (CTDB's default for it).
const INITIAL_TIMEOUT: Duration = Duration::from_secs(9);

/// How a run is asked for.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Nodes LCP2 may move addresses to although they host some (the
    /// helper's optional third argument).
    pub force_rebalance: Option<Vec<u32>>,
    /// IP failover is disabled (`CTDB_DISABLE_IP_FAILOVER` is set): only
    /// `IPREALLOCATED` is sent.
    pub failover_disabled: bool,
}

/// A failed run: the code the helper reports (and exits with).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("takeover run failed, ret={0}")]
pub struct Failed(pub i32);

/// The errno-style code CTDB's client gives a failed control.
pub fn error_code(e: &ClientError) -> i32 {
    match e {
        ClientError::Timeout { .. } => libc::ETIMEDOUT,
        ClientError::ControlFailed { status, .. } => *status,
        ClientError::UnexpectedReply(_) | ClientError::Protocol(_) => libc::EPROTO,
        ClientError::Connect { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        _ => libc::EIO,
    }
}

/// Replies to one control sent to several nodes, and the first failure.
struct Multi {
    replies: Vec<(u32, ReplyControl)>,
    first_err: Option<(u32, i32)>,
}

async fn multi(client: &Client, nodes: &[u32], req: ControlRequest, flags: u32) -> Multi {
    let mut pending: FuturesUnordered<_> = nodes
        .iter()
        .map(|&pnn| {
            let req = req.clone();
            async move { (pnn, client.control_flags(pnn, req, flags).await) }
        })
        .collect();
    let mut m = Multi {
        replies: Vec::with_capacity(nodes.len()),
        first_err: None,
    };
    while let Some((pnn, r)) = pending.next().await {
        match r {
            Ok(reply) => m.replies.push((pnn, reply)),
            Err(e) => {
                tracing::debug!("control to node {pnn} failed: {e}");
                if m.first_err.is_none() {
                    m.first_err = Some((pnn, error_code(&e)));
                }
            }
        }
    }
    m
}

/// Connected or active nodes: PNNs of the node map without any of `mask`.
fn nodes_without(map: &ctdb_protocol::types::NodeMap, mask: u32) -> Vec<u32> {
    map.nodes
        .iter()
        .filter(|n| n.flags & mask == 0)
        .map(|n| n.pnn)
        .collect()
}

/// The state of a run once tunables and node map are known.
struct Run {
    client: Client,
    mypnn: u32,
    tun: TunableList,
    takeover_timeout: Duration,
    num_nodes: usize,
    connected: Vec<u32>,
    active: Vec<u32>,
    credits: Vec<u32>,
}

/// Runs one takeover run through `client` (connected to the leader's
/// daemon).
pub async fn run(client: Client, opts: &Options) -> Result<(), Failed> {
    let mypnn = client.pnn();
    let tun = match client
        .with_timeout(INITIAL_TIMEOUT)
        .get_all_tunables(mypnn)
        .await
    {
        Ok(t) => *t,
        Err(e) => {
            let ret = error_code(&e);
            tracing::error!("control GET_ALL_TUNABLES failed, ret={ret}");
            return Err(Failed(ret));
        }
    };
    let takeover_timeout = Duration::from_secs(u64::from(tun.takeover_timeout));
    let map = match client
        .with_timeout(takeover_timeout)
        .get_nodemap(mypnn)
        .await
    {
        Ok(m) => m,
        Err(e) => {
            let ret = error_code(&e);
            if matches!(e, ClientError::ControlFailed { .. }) {
                tracing::error!("control GET_NODEMAP failed, ret={ret}");
            } else {
                tracing::error!("control GET_NODEMAP failed to node {mypnn}, ret={ret}");
            }
            return Err(Failed(ret));
        }
    };
    let connected = nodes_without(&map, node_flags::DISCONNECTED);
    let active = nodes_without(&map, node_flags::INACTIVE);
    if connected.is_empty() || active.is_empty() {
        // CTDB's helper reports this as an allocation failure.
        return Err(Failed(libc::ENOMEM));
    }
    let mut r = Run {
        client,
        mypnn,
        tun,
        takeover_timeout,
        num_nodes: map.nodes.len(),
        connected,
        active,
        credits: vec![0; map.nodes.len()],
    };
    // Until the allocation is done, the early jump to IPREALLOCATED has
    // this deadline.
    let deadline = Instant::now() + 3 * takeover_timeout;
    if opts.failover_disabled {
        return r.ipreallocated(deadline).await;
    }
    r.allocate_and_move(opts, deadline).await
}

impl Run {
    fn credit(&mut self, pnn: u32) {
        if let Some(c) = self.credits.get_mut(pnn as usize) {
            *c += 1;
        }
    }

    async fn allocate_and_move(&mut self, opts: &Options, deadline: Instant) -> Result<(), Failed> {
        let connected = self.connected.clone();
        let known = match self.public_ips(&connected, false).await {
            Ok(k) => k,
            Err(ret) => {
                tracing::error!("Failed to fetch known public IPs");
                return self.failed(ret).await;
            }
        };
        let asked: Vec<u32> = self
            .active
            .iter()
            .copied()
            .filter(|&p| known.get(p as usize).is_some_and(|k| !k.is_empty()))
            .collect();
        let available = match self.public_ips(&asked, true).await {
            Ok(a) => a,
            Err(ret) => {
                tracing::error!("Failed to fetch available public IPs");
                return self.failed(ret).await;
            }
        };
        if !ipalloc::can_host_ips(self.num_nodes, &known, &available) {
            tracing::info!("No nodes available to host public IPs yet");
            return self.ipreallocated(deadline).await;
        }
        let placements = ipalloc::allocate(&Inputs {
            num_nodes: self.num_nodes,
            known: &known,
            available: &available,
            algorithm: Algorithm::from_tunable(self.tun.ip_alloc_algorithm),
            no_ip_takeover: self.tun.no_ip_takeover != 0,
            no_ip_failback: self.tun.no_ip_failback != 0,
            force_rebalance: opts.force_rebalance.as_deref(),
        });
        // The moves get their own deadline, not counting the allocation.
        let deadline = Instant::now() + 3 * self.takeover_timeout;
        if let Err(ret) = self.release(&placements, deadline).await {
            return self.failed(ret).await;
        }
        if let Err(ret) = self.take(&placements, deadline).await {
            return self.failed(ret).await;
        }
        self.ipreallocated(deadline).await
    }

    /// Every node's public addresses (known, or available only), indexed by
    /// PNN; nodes not asked have none.
    async fn public_ips(
        &mut self,
        nodes: &[u32],
        available: bool,
    ) -> Result<Vec<Vec<PublicIp>>, i32> {
        let mut out = vec![Vec::new(); self.num_nodes];
        if nodes.is_empty() {
            return Ok(out);
        }
        let flags = if available {
            CTDB_PUBLIC_IP_FLAGS_ONLY_AVAILABLE
        } else {
            0
        };
        let client = self.client.with_timeout(self.takeover_timeout);
        let m = multi(&client, nodes, ControlRequest::GetPublicIps, flags).await;
        if let Some((pnn, ret)) = m.first_err {
            tracing::error!("control GET_PUBLIC_IPS failed on node {pnn}, ret={ret}");
            self.credit(pnn);
            return Err(ret);
        }
        let mut bad = false;
        for (pnn, reply) in m.replies {
            match (reply.data, out.get_mut(pnn as usize)) {
                (Some(ControlReply::GetPublicIps(list)), Some(slot)) => {
                    tracing::debug!("Fetched public IPs from node {pnn}");
                    *slot = list.ips;
                }
                _ => {
                    tracing::error!("control GET_PUBLIC_IPS failed on node {pnn}");
                    self.credit(pnn);
                    bad = true;
                }
            }
        }
        if bad { Err(libc::EIO) } else { Ok(out) }
    }

    /// Tells every connected node that knows an address and should not host
    /// it who will.
    async fn release(&mut self, ips: &[Placement], deadline: Instant) -> Result<(), i32> {
        let client = self
            .client
            .with_timeout(deadline.saturating_duration_since(Instant::now()));
        let mut sends = Vec::new();
        for ip in ips {
            let nodes: Vec<u32> = self
                .connected
                .iter()
                .copied()
                .filter(|&p| ip.known_on.get(p as usize).copied().unwrap_or(false))
                .filter(|&p| ip.pnn != Some(p))
                .collect();
            if nodes.is_empty() {
                continue;
            }
            let req = ControlRequest::ReleaseIp(PublicIp {
                pnn: ipalloc::wire_pnn(ip.pnn),
                addr: ip.addr,
            });
            let client = &client;
            sends.push(async move {
                let m = multi(client, &nodes, req, 0).await;
                (ip, nodes.len(), m.first_err)
            });
        }
        let results = futures::future::join_all(sends).await;
        let mut err = None;
        for (ip, count, first_err) in results {
            match first_err {
                None => tracing::debug!("RELEASE_IP {} succeeded on {count} nodes", ip.addr),
                Some((pnn, ret)) => {
                    tracing::error!("RELEASE_IP {} failed on node {pnn}, ret={ret}", ip.addr);
                    self.credit(pnn);
                    err = Some(ret);
                }
            }
        }
        err.map_or(Ok(()), Err)
    }

    /// Tells each address's new host to host it.
    async fn take(&mut self, ips: &[Placement], deadline: Instant) -> Result<(), i32> {
        let client = self
            .client
            .with_timeout(deadline.saturating_duration_since(Instant::now()));
        let sends = ips.iter().filter_map(|ip| {
            let pnn = ip.pnn?;
            let req = ControlRequest::TakeoverIp(PublicIp { pnn, addr: ip.addr });
            let client = &client;
            Some(async move { (ip, pnn, client.control(pnn, req).await) })
        });
        let results = futures::future::join_all(sends).await;
        let mut err = None;
        for (ip, pnn, r) in results {
            match r {
                Ok(_) => tracing::debug!("TAKEOVER_IP {} succeeded on node {pnn}", ip.addr),
                Err(e) => {
                    let ret = error_code(&e);
                    let on = if matches!(e, ClientError::ControlFailed { .. }) {
                        "on"
                    } else {
                        "to"
                    };
                    tracing::error!("TAKEOVER_IP {} failed {on} node {pnn}, ret={ret}", ip.addr);
                    self.credit(pnn);
                    err = Some(ret);
                }
            }
        }
        err.map_or(Ok(()), Err)
    }

    /// `IPREALLOCATED` to every connected node: the run is over.
    async fn ipreallocated(&mut self, deadline: Instant) -> Result<(), Failed> {
        let client = self
            .client
            .with_timeout(deadline.saturating_duration_since(Instant::now()));
        let nodes = self.connected.clone();
        let m = multi(&client, &nodes, ControlRequest::Ipreallocated, 0).await;
        match m.first_err {
            None => {
                tracing::debug!("IPREALLOCATED succeeded on {} nodes", nodes.len());
                Ok(())
            }
            Some((pnn, ret)) => {
                tracing::error!("IPREALLOCATED failed on node {pnn}, ret={ret}");
                self.credit(pnn);
                self.failed(ret).await
            }
        }
    }

    /// Ends a failed run: names the node with the most ban credits to the
    /// leader (if bans are enabled).
    async fn failed(&mut self, ret: i32) -> Result<(), Failed> {
        if self.tun.enable_bans == 0 {
            return Err(Failed(ret));
        }
        let mut worst: Option<(u32, u32)> = None;
        for (pnn, &c) in self.credits.iter().enumerate() {
            if c > worst.map_or(0, |(_, m)| m) {
                worst = Some((pnn as u32, c));
            }
        }
        if let Some((pnn, _)) = worst {
            tracing::warn!("Assigning banning credits to node {pnn}");
            let me = self.mypnn;
            match self
                .client
                .send_message(me, srvid::BANNING, &pnn.to_le_bytes())
            {
                // The daemon handles a connection's packets in order: once
                // this reply is back, the message has been delivered.
                Ok(()) => {
                    let _ = self
                        .client
                        .with_timeout(self.takeover_timeout)
                        .control(me, ControlRequest::GetPnn)
                        .await;
                }
                Err(e) => {
                    tracing::error!("failed to assign banning credits, ret={}", error_code(&e))
                }
            }
        }
        Err(Failed(ret))
    }
}
