//! Everyone on one record: 4 clients per node fetch-lock one key and
//! increment it; then 4 clients per node run persistent transactions on
//! one key, taking the g_lock exactly as CTDB's own client library does
//! (Samba's smbd does not use our client's fair queue). Besides the
//! throughput, each line notes the smallest and largest share of the
//! operations one client got (a fair split is 1/12 = 8.3% each): a daemon
//! that lets a node's local clients keep a record starves the others.

use anyhow::{Result, bail};
use ctdb_client::{Client, DbKind};

use super::{Ctx, Row, block_on, check_errors, finish_all, rate};
use crate::worker::{Kind, Report};

const CLIENTS_PER_NODE: usize = 4;

fn value(d: &[u8]) -> u64 {
    d.get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
}

/// "min a% / max b% per client" of the window's operations.
fn shares(reports: &[Report]) -> String {
    let total: u64 = reports.iter().map(|r| r.ops_window).sum();
    if total == 0 {
        return "no operations".into();
    }
    let pct = |n: u64| 100.0 * n as f64 / total as f64;
    let min = reports.iter().map(|r| r.ops_window).min().unwrap_or(0);
    let max = reports.iter().map(|r| r.ops_window).max().unwrap_or(0);
    format!(
        "per-client share min {:.1}% / max {:.1}%",
        pct(min),
        pct(max)
    )
}

fn spawn_all(ctx: &Ctx, kind: Kind, args: &[String]) -> Result<Vec<Report>> {
    let start = ctx.start_at();
    let mut workers = Vec::new();
    for k in 0..ctx.cluster.len() {
        for j in 0..CLIENTS_PER_NODE {
            let id = (k * CLIENTS_PER_NODE + j) as u32;
            workers.push(ctx.spawn(kind, k, id, start, args)?);
        }
    }
    let reports = finish_all(ctx, workers)?;
    check_errors(&reports)?;
    Ok(reports)
}

pub fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    // fetch-lock of key0, the only key.
    let db = ctx.db_name("onerec");
    let reports = spawn_all(
        ctx,
        Kind::Contend,
        &["--db".into(), db.clone(), "--count".into(), "1".into()],
    )?;
    let total: u64 = reports.iter().map(|r| r.ops_total).sum();
    let got = block_on(async {
        let c = Client::connect(ctx.cluster.socket(0)).await?;
        let d = c.attach(&db, DbKind::Volatile, 0).await?;
        Ok::<_, anyhow::Error>(value(&d.fetch(b"key0").await?.data))
    })?;
    if got != total {
        bail!("the record is {got}, but the workers incremented it {total} times");
    }
    rows.push(Row::ok(
        "fetch-lock 1 key, 12 clients (ops/s)",
        "ops/s",
        true,
        rate(ctx, &reports),
        format!("{}; {total} increments checked", shares(&reports)),
    ));
    // Persistent transactions with CTDB's g_lock.
    let db = ctx.db_name("onetrans");
    let reports = spawn_all(
        ctx,
        Kind::Trans,
        &["--db".into(), db.clone(), "--ctdb-glock".into()],
    )?;
    let total: u64 = reports.iter().map(|r| r.ops_total).sum();
    block_on(async {
        for node in 0..ctx.cluster.len() {
            let c = Client::connect(ctx.cluster.socket(node)).await?;
            let d = c.attach(&db, DbKind::Persistent, 0).await?;
            let v = d.fetch_local(b"key")?.map_or(0, |(_, v)| value(&v));
            if v != total {
                bail!("node {node}: key is {v}, the clients committed {total} increments");
            }
        }
        Ok(())
    })?;
    rows.push(Row::ok(
        "CTDB-style g_lock ptrans 1 key, 12 clients (commits/s)",
        "commits/s",
        true,
        rate(ctx, &reports),
        format!("{}; {total} commits checked", shares(&reports)),
    ));
    Ok(rows)
}
