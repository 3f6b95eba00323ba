//! The message ring: two messages passed around the nodes in opposite
//! directions (CTDB's `message_ring`).

use anyhow::{Result, bail};

use super::{Ctx, Row, check_errors, cpu_row, daemon_cpu_us, finish_all, rate};
use crate::worker::Kind;

pub fn ring(ctx: &Ctx) -> Result<Vec<Row>> {
    rings(
        ctx,
        1,
        "message ring (messages/s)",
        Some("daemon CPU per message, ring (µs)"),
    )
}

/// Three such rings at once: three client processes per node, six
/// messages in flight.
pub fn rings_3(ctx: &Ctx) -> Result<Vec<Row>> {
    rings(ctx, 3, "message ring, 3 clients/node (messages/s)", None)
}

fn rings(ctx: &Ctx, n: u32, row: &str, cpu: Option<&str>) -> Result<Vec<Row>> {
    let cpu_before = daemon_cpu_us(ctx);
    let start = ctx.start_at();
    let mut workers = Vec::new();
    for ring in 0..n {
        for k in 0..ctx.cluster.len() {
            workers.push(ctx.spawn(
                Kind::Msgring,
                k,
                k as u32,
                start,
                &["--ring".into(), ring.to_string()],
            )?);
        }
    }
    let reports = finish_all(ctx, workers)?;
    let cpu_after = daemon_cpu_us(ctx);
    // Workers check each message's sequence number: a lost, repeated or
    // reordered message is an error.
    check_errors(&reports)?;
    if reports.iter().any(|r| r.ops_window == 0) {
        bail!("a node received no message during the measurement");
    }
    let total: u64 = reports.iter().map(|r| r.ops_total).sum();
    let mut rows = vec![Row::ok(
        row,
        "messages/s",
        true,
        rate(ctx, &reports),
        format!("{total} messages, none lost"),
    )];
    if let Some(name) = cpu {
        rows.push(cpu_row(name, cpu_before, cpu_after, total));
    }
    Ok(rows)
}
