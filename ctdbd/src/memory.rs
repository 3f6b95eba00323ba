//! `ctdb dumpmemory` (`DUMP_MEMORY`): the daemon's memory by area, in a
//! form meant to be read.
//!
//! CTDB answers with talloc's full report, a tree of every allocation.
//! Rust has no such tree, so the report names the areas that grow with
//! use instead: the process's memory as the kernel counts it
//! (`/proc/self/statm`), the clients and their registrations, the bytes
//! waiting in outgoing queues, the statistics history, and each database
//! (its mapped file, work waiting for its handle or for record locks, the
//! keys counted for its hot keys). Every line is `area: values`, indented
//! under its parent, so `grep` finds a line and a human reads the whole.

use std::fmt::Write as _;

use crate::control::Core;
use crate::db::Databases;

/// One area of the report: a name, what it holds, and the areas inside it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemArea {
    pub name: String,
    pub detail: String,
    pub children: Vec<MemArea>,
}

impl MemArea {
    pub fn new(name: impl Into<String>, detail: impl Into<String>) -> MemArea {
        MemArea {
            name: name.into(),
            detail: detail.into(),
            children: Vec::new(),
        }
    }
}

/// Bytes in a unit a human reads at a glance.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// The process's memory from `/proc/self/statm`: (virtual, resident,
/// resident file-backed shared) in bytes; zeros where unavailable.
fn process_memory() -> (u64, u64, u64) {
    let text = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let mut f = text
        .split_whitespace()
        .map(|v| v.parse::<u64>().unwrap_or(0) * 4096);
    let size = f.next().unwrap_or(0);
    let resident = f.next().unwrap_or(0);
    let shared = f.next().unwrap_or(0);
    (size, resident, shared)
}

/// The whole report for `DUMP_MEMORY`: the core's areas, then the
/// database layer's (none for an embedder without it).
pub fn report(core: &Core, dbs: Option<&Databases>) -> String {
    let (size, resident, shared) = process_memory();
    let (client_q, node_q) = core.stats.queued();
    let history = core.stats.history_len();
    let stat_bytes = (history * ctdb_protocol::types::Statistics::WIRE_SIZE) as u64;
    let notify: usize = core.clients.values().map(|c| c.notify.len()).sum();
    let mut areas = vec![
        MemArea::new(
            "process",
            format!(
                "resident {}, private {} (heap, stacks, anonymous maps), virtual {}",
                human(resident),
                human(resident.saturating_sub(shared)),
                human(size)
            ),
        ),
        MemArea {
            name: "clients".into(),
            detail: format!("{} connected", core.clients.len()),
            children: vec![
                MemArea::new(
                    "registrations",
                    format!(
                        "{} srvids, {} tunnels, {notify} notify records",
                        core.srvids.len(),
                        core.tunnels.len()
                    ),
                ),
                MemArea::new("reply queues", format!("{} waiting", human(client_q))),
            ],
        },
        MemArea {
            name: "nodes".into(),
            detail: format!("{} in the node map", core.node.nodes.len()),
            children: vec![MemArea::new(
                "packet queues",
                format!("{} waiting", human(node_q)),
            )],
        },
        MemArea::new(
            "statistics",
            format!(
                "{history} history entries of {} ({})",
                crate::stats::MAX_STAT_HISTORY,
                human(stat_bytes)
            ),
        ),
    ];
    areas.extend(dbs.map(databases).unwrap_or_default());
    render(&areas)
}

/// The database layer's areas.
pub fn databases(d: &Databases) -> Vec<MemArea> {
    let mut dbs = MemArea::new(
        "databases",
        format!(
            "{} attached, {} calls waiting for other nodes, {} records pinned for local clients",
            d.dbs.len(),
            d.calls.pending(),
            d.calls.pins.len()
        ),
    );
    for id in &d.order {
        let Some(db) = d.dbs.get(id) else {
            continue;
        };
        let kind = if db.persistent() {
            "persistent"
        } else if db.replicated() {
            "replicated"
        } else {
            "volatile"
        };
        let file = match &db.tdb {
            Some(t) => format!("mapped {}", human(t.map_size())),
            None => "handle away (frozen or writing)".to_owned(),
        };
        let hot = db.stats.hot_keys.iter().filter(|k| k.count > 0).count();
        dbs.children.push(MemArea::new(
            db.name.clone(),
            format!(
                "{kind}, {file}, {} waiting for the handle, {} lock helpers, {} keys counted for {hot} hot keys",
                db.deferred.len(),
                db.locks.helpers(),
                db.migrations.len()
            ),
        ));
    }
    vec![dbs]
}

/// The recovery daemon's report (`ctdb rddumpmemory`), made in its own
/// process: that process's memory, its view of the nodes and what it
/// keeps for bans and takeover runs.
pub fn recoverd_report(nodes: usize, culprits: usize, takeover_requests: usize) -> String {
    let (size, resident, shared) = process_memory();
    let areas = [MemArea {
        name: "recovery daemon".into(),
        detail: format!(
            "process: resident {}, private {}, virtual {}",
            human(resident),
            human(resident.saturating_sub(shared)),
            human(size)
        ),
        children: vec![
            MemArea::new("node map", format!("{nodes} nodes")),
            MemArea::new("banning culprits", culprits.to_string()),
            MemArea::new(
                "takeover run requests waiting",
                takeover_requests.to_string(),
            ),
        ],
    }];
    render_as("recovery daemon memory by area", &areas)
}

/// Areas as indented `name: detail` lines under a header.
pub fn render(areas: &[MemArea]) -> String {
    render_as("ctdbd memory by area", areas)
}

fn render_as(title: &str, areas: &[MemArea]) -> String {
    let mut out = format!(
        "{title} (ctdb-rs {}, pid {})\n",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    );
    fn walk(out: &mut String, a: &MemArea, depth: usize) {
        let _ = writeln!(
            out,
            "{:indent$}{}: {}",
            "",
            a.name,
            a.detail,
            indent = 2 + depth * 4
        );
        for c in &a.children {
            walk(out, c, depth + 1);
        }
    }
    for a in areas {
        walk(&mut out, a, 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 20), "3.0 MiB");
    }

    #[test]
    fn areas_are_indented_under_their_parent() {
        let mut a = MemArea::new("clients", "2 connected");
        a.children.push(MemArea::new("reply queues", "0 B waiting"));
        let text = render(&[a, MemArea::new("nodes", "3")]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ctdbd memory by area"));
        assert_eq!(lines[1], "  clients: 2 connected");
        assert_eq!(lines[2], "      reply queues: 0 B waiting");
        assert_eq!(lines[3], "  nodes: 3");
    }
}
