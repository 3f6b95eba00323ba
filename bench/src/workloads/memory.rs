//! Daemon resident memory after loading records into a volatile database.

use std::collections::HashSet;

use anyhow::{Context, Result, bail};
use ctdb_client::{Client, DbKind};

use super::{Ctx, Row, block_on};
use crate::worker::Kind;

fn rss_kib(pid: i32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

pub fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let records: u64 = if ctx.quick { 20_000 } else { 1_000_000 };
    let db = ctx.db_name("memory");
    let loader = ctx.spawn(
        Kind::Load,
        0,
        0,
        0,
        &[
            "--db".into(),
            db.clone(),
            "--count".into(),
            records.to_string(),
            "--parallel".into(),
            "64".into(),
        ],
    )?;
    loader.finish(ctx.deadline() * 20)?;
    let mut rss = Vec::new();
    for k in 0..ctx.cluster.len() {
        let pid = ctx.cluster.pid(k).context("no daemon pid")?;
        rss.push(rss_kib(pid)?);
    }
    let seen = block_on(async {
        let c = Client::connect(ctx.cluster.socket(0)).await?;
        let d = c.attach(&db, DbKind::Volatile, 0).await?;
        let mut keys = HashSet::new();
        for rec in c
            .with_timeout(std::time::Duration::from_secs(120))
            .traverse(d.id(), false)
            .await?
            .collect()
            .await?
        {
            keys.insert(rec.key);
        }
        Ok::<_, anyhow::Error>(keys.len() as u64)
    })?;
    if seen != records {
        bail!("loaded {records} records but a traverse found {seen}");
    }
    let max = *rss.iter().max().unwrap_or(&0) as f64 / 1024.0;
    Ok(vec![Row::ok(
        "memory after 1M records (MiB)",
        "MiB",
        false,
        max,
        format!(
            "{records} records; per node {}",
            rss.iter()
                .map(|k| format!("{} MiB", k / 1024))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )])
}
