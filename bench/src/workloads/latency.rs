//! Control latency: `ping` with 1000 idle clients connected to each node.

use anyhow::Result;

use super::{Ctx, Row, check_errors};
use crate::worker::Kind;

pub fn ping(ctx: &Ctx) -> Result<Vec<Row>> {
    let idle = if ctx.quick { 200 } else { 1000 };
    let mut holders = Vec::new();
    for k in 0..ctx.cluster.len() {
        let mut w = ctx.spawn(
            Kind::Idle,
            k,
            k as u32,
            0,
            &["--count".into(), idle.to_string()],
        )?;
        w.wait_line("ready")?;
        holders.push(w);
    }
    let start = ctx.start_at();
    let pinger = ctx.spawn(
        Kind::Ping,
        0,
        0,
        start,
        &["--count".into(), idle.to_string()],
    )?;
    let report = pinger.finish(ctx.deadline())?;
    for mut h in holders {
        h.close_stdin();
        h.finish(ctx.deadline())?;
    }
    check_errors(std::slice::from_ref(&report))?;
    let note = format!("{} pings, {idle} idle clients per node", report.ops_window);
    Ok(vec![
        Row::ok(
            "ping p50, 1000 idle clients/node (µs)",
            "µs",
            false,
            report.p50_us,
            note.clone(),
        ),
        Row::ok(
            "ping p99, 1000 idle clients/node (µs)",
            "µs",
            false,
            report.p99_us,
            note,
        ),
    ])
}
