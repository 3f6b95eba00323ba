//! Record locks: the migration ring and contended fetch-locks.

use std::collections::HashMap;

use anyhow::{Result, bail};
use ctdb_client::{Client, DbKind};

use super::{Ctx, Row, block_on, check_errors, cpu_row, daemon_cpu_us, finish_all, rate};
use crate::worker::Kind;

fn value(d: &[u8]) -> u64 {
    d.get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
}

/// One record passed around the nodes: each node's client fetch-locks it,
/// increments it and messages the next node (CTDB's `fetch_ring`).
pub fn migration_ring(ctx: &Ctx) -> Result<Vec<Row>> {
    rings(
        ctx,
        1,
        "migration ring (migrations/s)",
        Some("daemon CPU per migration, ring (µs)"),
    )
}

/// Three such rings at once, on three records: three client processes
/// per node, three migrations in flight.
pub fn migration_rings_3(ctx: &Ctx) -> Result<Vec<Row>> {
    rings(
        ctx,
        3,
        "migration ring, 3 clients/node (migrations/s)",
        None,
    )
}

fn rings(ctx: &Ctx, n: u32, row: &str, cpu: Option<&str>) -> Result<Vec<Row>> {
    let db = ctx.db_name("ring");
    let cpu_before = daemon_cpu_us(ctx);
    let start = ctx.start_at();
    let mut workers = Vec::new();
    for ring in 0..n {
        for k in 0..ctx.cluster.len() {
            workers.push(ctx.spawn(
                Kind::Ring,
                k,
                k as u32,
                start,
                &["--db".into(), db.clone(), "--ring".into(), ring.to_string()],
            )?);
        }
    }
    let reports = finish_all(ctx, workers)?;
    let cpu_after = daemon_cpu_us(ctx);
    check_errors(&reports)?;
    let per_node = ctx.cluster.len();
    for ring in 0..n {
        let mine = &reports[ring as usize * per_node..(ring as usize + 1) * per_node];
        let total: u64 = mine.iter().map(|r| r.ops_total).sum();
        let key = crate::worker::ring_key(ring);
        let got = block_on(async {
            let c = Client::connect(ctx.cluster.socket(0)).await?;
            let d = c.attach(&db, DbKind::Volatile, 0).await?;
            Ok::<_, anyhow::Error>(value(&d.fetch(&key).await?.data))
        })?;
        if got != total {
            bail!(
                "ring {ring}: the counter is {got}, but the workers incremented it {total} times"
            );
        }
        if total < 3 {
            bail!("ring {ring}: the record never went round the ring");
        }
    }
    let total: u64 = reports.iter().map(|r| r.ops_total).sum();
    let r = rate(ctx, &reports);
    let mut rows = vec![Row::ok(
        row,
        "migrations/s",
        true,
        r,
        format!("{total} increments checked"),
    )];
    if let Some(name) = cpu {
        rows.push(cpu_row(name, cpu_before, cpu_after, total));
    }
    Ok(rows)
}

/// Four clients per node fetch-lock random keys out of 100, then 10,000,
/// and increment them.
pub fn contended(ctx: &Ctx) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for keys in [100u64, 10_000] {
        let db = ctx.db_name(&format!("contend{keys}"));
        let start = ctx.start_at();
        let mut workers = Vec::new();
        for k in 0..ctx.cluster.len() {
            for j in 0..4 {
                workers.push(ctx.spawn(
                    Kind::Contend,
                    k,
                    (k * 4 + j) as u32,
                    start,
                    &[
                        "--db".into(),
                        db.clone(),
                        "--count".into(),
                        keys.to_string(),
                    ],
                )?);
            }
        }
        let reports = finish_all(ctx, workers)?;
        check_errors(&reports)?;
        let total: u64 = reports.iter().map(|r| r.ops_total).sum();
        let sum = block_on(async {
            let c = Client::connect(ctx.cluster.socket(0)).await?;
            let d = c.attach(&db, DbKind::Volatile, 0).await?;
            // Every node's copy comes back; the one with the highest rsn is
            // the record's latest value (each migration increments it).
            // A traverse that runs out of time (a loaded machine: the
            // reference's traverse children once did in CI) is tried again;
            // the check is the counters, not the traverse's speed.
            let mut recs = None;
            for attempt in 1..=3 {
                match c.traverse(d.id(), false).await?.collect().await {
                    Ok(r) => {
                        recs = Some(r);
                        break;
                    }
                    Err(e) if attempt < 3 => eprintln!("  traverse failed ({e}), again"),
                    Err(e) => return Err(e.into()),
                }
            }
            let mut best: HashMap<Vec<u8>, (u64, u64)> = HashMap::new();
            for rec in recs.unwrap_or_default() {
                let e = best.entry(rec.key).or_insert((0, 0));
                if rec.header.rsn >= e.0 {
                    *e = (rec.header.rsn, value(&rec.data));
                }
            }
            Ok::<_, anyhow::Error>(best.values().map(|(_, v)| v).sum::<u64>())
        })?;
        if sum != total {
            bail!(
                "{keys} keys: the counters sum to {sum}, but the workers incremented {total} times"
            );
        }
        let ops: u64 = reports.iter().map(|r| r.ops_window).sum();
        let mig: u64 = reports.iter().map(|r| r.migrations).sum();
        let share = if ops > 0 {
            100.0 * mig as f64 / ops as f64
        } else {
            0.0
        };
        rows.push(Row::ok(
            &format!("fetch-lock {keys} keys (ops/s)"),
            "ops/s",
            true,
            rate(ctx, &reports),
            format!("{share:.0}% needed a migration; {total} increments checked"),
        ));
    }
    Ok(rows)
}
