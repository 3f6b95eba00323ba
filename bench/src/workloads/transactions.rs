//! Persistent transactions: one client, then sixteen spread over the
//! nodes, on one key and on a key each.

use anyhow::{Result, bail};
use ctdb_client::{Client, DbKind};

use super::{Ctx, Row, block_on, check_errors, finish_all, rate};
use crate::worker::{Kind, Report};

fn value(d: &[u8]) -> u64 {
    d.get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
}

pub fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (label, clients, disjoint) in [
        ("ptrans 1 client (commits/s)", 1usize, false),
        ("ptrans 16 clients same key (commits/s)", 16, false),
        ("ptrans 16 clients disjoint keys (commits/s)", 16, true),
    ] {
        let db = ctx.db_name("trans");
        let start = ctx.start_at();
        let mut args = vec!["--db".to_string(), db.clone()];
        if disjoint {
            args.push("--disjoint".into());
        }
        let workers = (0..clients)
            .map(|i| ctx.spawn(Kind::Trans, i % ctx.cluster.len(), i as u32, start, &args))
            .collect::<Result<Vec<_>>>()?;
        let reports = finish_all(ctx, workers)?;
        check_errors(&reports)?;
        verify(ctx, &db, &reports, disjoint)?;
        let p50 = reports.iter().map(|r| r.p50_us).fold(0.0, f64::max);
        let p99 = reports.iter().map(|r| r.p99_us).fold(0.0, f64::max);
        rows.push(Row::ok(
            label,
            "commits/s",
            true,
            rate(ctx, &reports),
            format!("p50 {:.1} ms, p99 {:.1} ms", p50 / 1000.0, p99 / 1000.0),
        ));
    }
    Ok(rows)
}

/// Every commit is in the database, on every node.
fn verify(ctx: &Ctx, db: &str, reports: &[Report], disjoint: bool) -> Result<()> {
    block_on(async {
        for node in 0..ctx.cluster.len() {
            let c = Client::connect(ctx.cluster.socket(node)).await?;
            let d = c.attach(db, DbKind::Persistent, 0).await?;
            let get = |k: &str| -> Result<u64> {
                Ok(d.fetch_local(k.as_bytes())?.map_or(0, |(_, v)| value(&v)))
            };
            if disjoint {
                for (i, r) in reports.iter().enumerate() {
                    let v = get(&format!("key{i}"))?;
                    if v != r.ops_total {
                        bail!(
                            "node {node}: key{i} is {v}, client {i} committed {}",
                            r.ops_total
                        );
                    }
                }
            } else {
                let total: u64 = reports.iter().map(|r| r.ops_total).sum();
                let v = get("key")?;
                if v != total {
                    bail!("node {node}: key is {v}, the clients committed {total} increments");
                }
            }
        }
        Ok(())
    })
}
