//! The whole recovery, in CTDB's order: tunables, node maps, capabilities,
//! database maps, recovery mode ACTIVE, START_RECOVERY, the new vnn map,
//! every database at once, then NORMAL and END_RECOVERY. When a database
//! cannot be recovered, the node with the most ban credits (at least
//! [`NUM_RETRIES`]) is banned for RecoveryBanPeriod, if bans are enabled,
//! and the recovery fails.
//!
//! Whenever the recovery fails because of a node (the one with the most
//! ban credits, else the node the failing step names), that node is
//! reported to the leader, the node this helper runs for, with a
//! `CTDB_SRVID_BANNING` message carrying its pnn, as CTDB's takeover helper
//! reports its culprits. The leader's recovery daemon gives it banning
//! credits (as many as there are nodes; twice that bans it), so the node at
//! fault is banned, not the leader whose recovery it made fail.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ctdb_client::Client;
use ctdb_protocol::header::CTDB_UNKNOWN_PNN;
use ctdb_protocol::message::srvid;
use ctdb_protocol::types::{
    BanState, CTDB_RECOVERY_ACTIVE, CTDB_RECOVERY_NORMAL, NodeMap, VnnMap, node_flags,
};
use ctdb_protocol::{ControlReply, ControlRequest};

use crate::ctx::{self, Ctx, NodeList, Options};
use crate::dbs;
use crate::error::{Error, Result};
use crate::recover_db::{NUM_RETRIES, recover_db};
use crate::trace_event;

/// Recovery timeout until the tunables are known (CTDB's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a recovery to generation `generation` through `client`; a failure
/// caused by a node is reported to the leader (see the module's
/// documentation).
pub async fn run(client: Client, socket: PathBuf, generation: u32, opts: Options) -> Result<()> {
    let leader = client.clone();
    let culprit = std::sync::Mutex::new(None);
    let r = run_steps(client, socket, generation, opts, &culprit).await;
    if let Err(e) = &r {
        let pnn = culprit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .or_else(|| e.node());
        if let Some(pnn) = pnn {
            report_culprit(&leader, pnn).await;
        }
    }
    r
}

/// Tells the leader (our own node) that `pnn` made the recovery fail, and
/// waits until the daemon has taken the message in.
async fn report_culprit(client: &Client, pnn: u32) {
    let me = client.pnn();
    tracing::warn!("Assigning banning credits to node {pnn}");
    trace_event!("culprit", "node={pnn}");
    if let Err(e) = client.send_message(me, srvid::BANNING, &pnn.to_le_bytes()) {
        tracing::error!("failed to assign banning credits to node {pnn}: {e}");
        return;
    }
    // The daemon handles a connection's packets in order: once this reply
    // is back, the message has been passed on to the recovery daemon.
    let _ = client.control(me, ControlRequest::GetPnn).await;
}

async fn run_steps(
    client: Client,
    socket: PathBuf,
    generation: u32,
    opts: Options,
    culprit: &std::sync::Mutex<Option<u32>>,
) -> Result<()> {
    let t0 = Instant::now();
    let mypnn = client.pnn();
    let client = client.with_timeout(DEFAULT_TIMEOUT);
    trace_event!("recovery-start", "pnn={mypnn} generation={generation}");

    let tun = client
        .get_all_tunables(mypnn)
        .await
        .map_err(Error::node_err("GET_ALL_TUNABLES", mypnn))?;
    let client = client.with_timeout(Duration::from_secs(tun.recover_timeout.max(1) as u64));

    let nodes = active_nodes(&client, mypnn).await?;
    let caps = capabilities(&client, &nodes).await?;
    let nodes = NodeList::new(nodes, caps);

    let replies = ctx::all(&client, &nodes.pnns, "GET_DBMAP", ControlRequest::GetDbMap).await?;
    let mut maps = Vec::new();
    for (&pnn, r) in nodes.pnns.iter().zip(replies) {
        match r.data {
            Some(ControlReply::GetDbMap(m)) => maps.push((pnn, m)),
            _ => {
                return Err(Error::Bad {
                    pnn,
                    msg: "bad GET_DBMAP reply".into(),
                });
            }
        }
    }
    let dblist = dbs::collect(&maps).map_err(Error::Other)?;

    ctx::all(
        &client,
        &nodes.pnns,
        "SET_RECMODE",
        ControlRequest::SetRecmode(CTDB_RECOVERY_ACTIVE),
    )
    .await?;
    tracing::info!("Set recovery mode to ACTIVE");

    let mut map = nodes.lmasters();
    if map.is_empty() {
        tracing::warn!("No active lmasters found. Adding recmaster anyway");
        map.push(mypnn);
    }
    let vnnmap = VnnMap { generation, map };

    ctx::all(
        &client,
        &nodes.pnns,
        "START_RECOVERY",
        ControlRequest::StartRecovery,
    )
    .await?;
    tracing::info!("start_recovery event finished");
    ctx::all(
        &client,
        &nodes.pnns,
        "SETVNNMAP",
        ControlRequest::SetVnnMap(vnnmap),
    )
    .await?;
    tracing::info!("updated VNNMAP");

    let ctx = Arc::new(Ctx::new(
        client,
        socket,
        generation,
        *tun,
        nodes,
        opts,
        dblist.len(),
    ));
    let total = dblist.len();
    let tasks: Vec<_> = dblist
        .into_iter()
        .map(|db| tokio::spawn(recover_db(ctx.clone(), db)))
        .collect();
    let mut recovered = 0;
    let mut failed = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(())) => recovered += 1,
            Ok(Err(what)) => failed.push(what),
            Err(e) => failed.push(format!("task: {e}")),
        }
    }
    tracing::info!("{recovered} of {total} databases recovered");
    trace_event!(
        "databases",
        "recovered={recovered} total={total} budget_peak={}",
        ctx.budget.peak()
    );

    if recovered != total {
        *culprit.lock().unwrap_or_else(|p| p.into_inner()) = most_credits(&ctx);
        if let Err(e) = ban_node(&ctx).await {
            tracing::error!("failed to ban node: {e}");
        }
        return Err(Error::Other(format!(
            "{} of {total} databases could not be recovered: {}",
            total - recovered,
            failed.join(", ")
        )));
    }

    ctx.all(
        &ctx.nodes.pnns,
        "SET_RECMODE",
        ControlRequest::SetRecmode(CTDB_RECOVERY_NORMAL),
    )
    .await?;
    tracing::info!("Set recovery mode to NORMAL");
    ctx.all(&ctx.nodes.pnns, "END_RECOVERY", ControlRequest::EndRecovery)
        .await?;
    tracing::info!("recovered event finished");
    trace_event!("recovery-done", "ms={}", t0.elapsed().as_millis());
    Ok(())
}

/// The nodes to recover: connected in the local node map, and not inactive
/// (banned, stopped, deleted, disconnected) in their own node map.
async fn active_nodes(client: &Client, mypnn: u32) -> Result<Vec<u32>> {
    let map = client
        .get_nodemap(mypnn)
        .await
        .map_err(Error::node_err("GET_NODEMAP", mypnn))?;
    let connected: Vec<u32> = map
        .nodes
        .iter()
        .filter(|n| n.flags & node_flags::DISCONNECTED == 0)
        .map(|n| n.pnn)
        .collect();
    let replies = ctx::all(
        client,
        &connected,
        "GET_NODEMAP",
        ControlRequest::GetNodemap,
    )
    .await?;
    let mut active = Vec::new();
    for (&pnn, r) in connected.iter().zip(replies) {
        let Some(ControlReply::GetNodemap(m)) = r.data else {
            return Err(Error::Bad {
                pnn,
                msg: "bad GET_NODEMAP reply".into(),
            });
        };
        if own_flags(&m, pnn) & node_flags::INACTIVE == 0 {
            active.push(pnn);
        }
    }
    Ok(active)
}

/// A node's flags in a node map (disconnected when absent).
fn own_flags(m: &NodeMap, pnn: u32) -> u32 {
    m.nodes
        .iter()
        .find(|n| n.pnn == pnn)
        .map(|n| n.flags)
        .unwrap_or(node_flags::DISCONNECTED)
}

async fn capabilities(client: &Client, nodes: &[u32]) -> Result<Vec<u32>> {
    let replies = ctx::all(
        client,
        nodes,
        "GET_CAPABILITIES",
        ControlRequest::GetCapabilities,
    )
    .await?;
    let mut caps = Vec::new();
    for (&pnn, r) in nodes.iter().zip(replies) {
        match r.data {
            Some(ControlReply::GetCapabilities(c)) => caps.push(c),
            _ => {
                return Err(Error::Bad {
                    pnn,
                    msg: "bad GET_CAPABILITIES reply".into(),
                });
            }
        }
    }
    Ok(caps)
}

/// The node with the most ban credits, if any has some.
fn most_credits(ctx: &Ctx) -> Option<u32> {
    let credits = ctx.nodes.credits();
    let mut max = (CTDB_UNKNOWN_PNN, 0);
    for (&pnn, &c) in ctx.nodes.pnns.iter().zip(&credits) {
        if c > max.1 {
            max = (pnn, c);
        }
    }
    (max.1 > 0).then_some(max.0)
}

/// Bans the node with the most ban credits, if it has at least
/// [`NUM_RETRIES`] and is still active, as CTDB's helper does.
async fn ban_node(ctx: &Ctx) -> Result<()> {
    if ctx.tun.enable_bans == 0 {
        tracing::error!("Bans are not enabled");
        return Ok(());
    }
    loop {
        let credits = ctx.nodes.credits();
        let mut max = (CTDB_UNKNOWN_PNN, 0);
        for (&pnn, &c) in ctx.nodes.pnns.iter().zip(&credits) {
            if c > max.1 {
                max = (pnn, c);
            }
        }
        let (pnn, c) = max;
        if c < NUM_RETRIES {
            return Ok(());
        }
        let map = ctx
            .client
            .get_nodemap(pnn)
            .await
            .map_err(Error::node_err("GET_NODEMAP", pnn))?;
        if own_flags(&map, pnn) & node_flags::INACTIVE != 0 {
            // It went away by itself: look at the next one.
            ctx.nodes.clear_credits(pnn);
            continue;
        }
        let ban = BanState {
            pnn,
            time: ctx.tun.recovery_ban_period,
        };
        tracing::error!("Banning node {pnn} for {} seconds", ban.time);
        trace_event!("ban", "node={pnn} seconds={}", ban.time);
        return ctx
            .client
            .set_ban_state(pnn, ban)
            .await
            .map_err(Error::node_err("SET_BAN_STATE", pnn));
    }
}
