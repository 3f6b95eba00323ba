//! In-memory persistent databases (ctdb-rs extension): one client's
//! transactions on an in-memory database of ours, against the reference's
//! classic persistent database (it has no in-memory kind): what a user of
//! CTDB moving such state (tickles, say) to the new kind gains.

use anyhow::{Result, bail};
use ctdb_client::{Client, DbKind};
use ctdb_tests::Daemon;

use super::{Ctx, Row, block_on, check_errors, finish_all, rate};
use crate::worker::Kind;

pub const ROW: &str =
    "ptrans 1 client, in-memory (ours) vs classic persistent (reference) (commits/s)";

pub fn run(ctx: &Ctx) -> Result<Vec<Row>> {
    let inmemory = !matches!(ctx.cluster.daemon(), Daemon::Reference);
    let db = ctx.db_name("inmem");
    let start = ctx.start_at();
    let mut args = vec!["--db".to_string(), db.clone()];
    if inmemory {
        args.push("--inmemory".into());
    }
    let w = ctx.spawn(Kind::Trans, 0, 0, start, &args)?;
    let reports = finish_all(ctx, vec![w])?;
    check_errors(&reports)?;
    let total = reports[0].ops_total;
    let kind = if inmemory {
        DbKind::InMemory
    } else {
        DbKind::Persistent
    };
    block_on(async {
        for node in 0..ctx.cluster.len() {
            let c = Client::connect(ctx.cluster.socket(node)).await?;
            let d = c.attach(&db, kind, 0).await?;
            let v = d.fetch_local(b"key")?.map_or(0, |(_, v)| {
                v.get(..8)
                    .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
            });
            if v != total {
                bail!("node {node}: key is {v}, the client committed {total}");
            }
        }
        Ok(())
    })?;
    let r = &reports[0];
    Ok(vec![Row::ok(
        ROW,
        "commits/s",
        true,
        rate(ctx, &reports),
        format!(
            "p50 {:.2} ms, p99 {:.2} ms",
            r.p50_us / 1000.0,
            r.p99_us / 1000.0
        ),
    )])
}
