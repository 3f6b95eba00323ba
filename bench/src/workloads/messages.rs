//! The message ring: two messages passed around the nodes in opposite
//! directions (CTDB's `message_ring`).

use anyhow::{Result, bail};

use super::{Ctx, Row, check_errors, finish_all, rate};
use crate::worker::Kind;

pub fn ring(ctx: &Ctx) -> Result<Vec<Row>> {
    let start = ctx.start_at();
    let workers = (0..ctx.cluster.len())
        .map(|k| ctx.spawn(Kind::Msgring, k, k as u32, start, &[]))
        .collect::<Result<Vec<_>>>()?;
    let reports = finish_all(ctx, workers)?;
    // Workers check each message's sequence number: a lost, repeated or
    // reordered message is an error.
    check_errors(&reports)?;
    if reports.iter().any(|r| r.ops_window == 0) {
        bail!("a node received no message during the measurement");
    }
    let total: u64 = reports.iter().map(|r| r.ops_total).sum();
    Ok(vec![Row::ok(
        "message ring (messages/s)",
        "messages/s",
        true,
        rate(ctx, &reports),
        format!("{total} messages, none lost"),
    )])
}
