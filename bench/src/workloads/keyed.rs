//! Per-key transactions with group commit (ctdb-rs extension): 16 clients
//! spread over the nodes, each incrementing its own key; ours on a keyed
//! database (every commit on every node, concurrent commits of the
//! database grouped into shared tdb transactions), the reference on its
//! classic persistent database (it has no keyed kind: one transaction of
//! the database at a time, each synced on every node). What a user of
//! CTDB moving many independent records to the new kind gains. Running
//! ours with `CTDB_RS_GROUP_COMMIT_MAX=1` in the environment measures it
//! without group commit. A second row: one client alone (the latency of a
//! per-key commit against a classic one, nothing to group).

use anyhow::{Result, bail};
use ctdb_client::{Client, DbKind};
use ctdb_tests::Daemon;

use super::{Ctx, Row, block_on, check_errors, finish_all, rate};
use crate::worker::Kind;

pub const ROW: &str = "ptrans 16 clients disjoint keys, keyed + group commit (ours) vs classic (reference) (commits/s)";

pub const ROW_ONE: &str = "ptrans 1 client, keyed (ours) vs classic (reference) (commits/s)";

const CLIENTS: usize = 16;

pub fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let mut rows = clients(ctx, CLIENTS, ROW, "keyed")?;
    rows.extend(clients(ctx, 1, ROW_ONE, "keyed1")?);
    Ok(rows)
}

/// `n` clients spread over the nodes, each incrementing its own key.
fn clients(ctx: &Ctx, n: usize, row: &str, name: &str) -> Result<Vec<Row>> {
    let keyed = !matches!(ctx.cluster.daemon(), Daemon::Reference);
    let db = ctx.db_name(name);
    let start = ctx.start_at();
    let mut args = vec!["--db".to_string(), db.clone(), "--disjoint".into()];
    if keyed {
        args.push("--keyed".into());
    }
    let workers = (0..n)
        .map(|i| ctx.spawn(Kind::Trans, i % ctx.cluster.len(), i as u32, start, &args))
        .collect::<Result<Vec<_>>>()?;
    let reports = finish_all(ctx, workers)?;
    check_errors(&reports)?;
    let kind = if keyed {
        DbKind::Keyed
    } else {
        DbKind::Persistent
    };
    block_on(async {
        for node in 0..ctx.cluster.len() {
            let c = Client::connect(ctx.cluster.socket(node)).await?;
            let d = c.attach(&db, kind, 0).await?;
            for (i, r) in reports.iter().enumerate() {
                let v = d
                    .fetch_local(format!("key{i}").as_bytes())?
                    .map_or(0, |(_, v)| {
                        v.get(..8)
                            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
                    });
                if v != r.ops_total {
                    bail!(
                        "node {node}: key{i} is {v}, client {i} committed {}",
                        r.ops_total
                    );
                }
            }
        }
        Ok(())
    })?;
    let p50 = reports.iter().map(|r| r.p50_us).fold(0.0, f64::max);
    let p99 = reports.iter().map(|r| r.p99_us).fold(0.0, f64::max);
    Ok(vec![Row::ok(
        row,
        "commits/s",
        true,
        rate(ctx, &reports),
        format!("p50 {:.1} ms, p99 {:.1} ms", p50 / 1000.0, p99 / 1000.0),
    )])
}
