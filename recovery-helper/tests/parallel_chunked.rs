//! Parallelism and chunking are real: with ten databases the pulls of
//! different databases overlap (by the helper's own trace events), and a
//! 200k-record database with a small RecBufferSizeLimit moves in many
//! chunks both ways while the helper's peak memory stays well below the
//! database's size.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use ctdb_protocol::types::LtdbHeader;

const LIMIT: Duration = Duration::from_secs(180);
const CHUNK_LIMIT: u32 = 32 * 1024;
const BIG_RECORDS: usize = 200_000;
const BIG_VALUE: usize = 300;

fn header(rsn: u64) -> LtdbHeader {
    LtdbHeader {
        rsn,
        dmaster: 0,
        reserved1: 0,
        flags: 0,
    }
}

/// The largest number of distinct databases with a pull under way at the
/// same moment, from one helper run's events.
fn max_parallel_pulls(evs: &[Event]) -> usize {
    let mut open: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut best = 0;
    for e in evs {
        let key = || (e.get("db").to_owned(), e.get("node").to_owned());
        match e.ev.as_str() {
            "pull-start" => {
                open.insert(key(), e.seq);
            }
            "pull-done" => {
                open.remove(&key());
            }
            _ => continue,
        }
        let dbs: BTreeSet<&String> = open.keys().map(|(db, _)| db).collect();
        best = best.max(dbs.len());
    }
    best
}

#[test]
fn parallel_chunked_reference_daemon() {
    parallel_chunked(On::Reference);
}

#[test]
fn parallel_chunked_our_daemon() {
    parallel_chunked(On::Ours);
}

/// The scenario, on a cluster of `on`'s daemons running our helper.
fn parallel_chunked(on: On) {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let c = cluster(on, 3, &trace, &[("CTDB_RECOVERY_HELPER_MEMORY", "4M")]);
    setvar_all(&c, "RecBufferSizeLimit", CHUNK_LIMIT);

    // Ten volatile databases with records on every node.
    for d in 0..10 {
        let name = format!("par{d}.tdb");
        restore(
            &c,
            &name,
            0,
            (0..3000).map(|i| {
                (
                    format!("k{i}").into_bytes(),
                    header(1),
                    format!("{name}-{i}-{}", "v".repeat(80)).into_bytes(),
                )
            }),
        );
    }
    // One large volatile database, on every node.
    let big_value = |i: usize| {
        let mut v = format!("{i:08}").into_bytes();
        v.resize(BIG_VALUE, b'x');
        v
    };
    restore(
        &c,
        "big.tdb",
        0,
        (0..BIG_RECORDS).map(|i| (format!("big{i:07}").into_bytes(), header(2), big_value(i))),
    );
    // Its size on one node: marshalled records (16 bytes of lengths, key,
    // record header, value).
    let big_bytes: usize = (0..BIG_RECORDS)
        .map(|i| 16 + format!("big{i:07}").len() + LtdbHeader::WIRE_SIZE + BIG_VALUE)
        .sum();

    let before = runs(&events(&trace)).len();
    tool(&c, 0, &["recover"]);
    c.wait_healthy(LIMIT);
    let r = wait_runs(&trace, before, LIMIT);
    let all = events(&trace);
    // The run that recovered the big database.
    let pid = all
        .iter()
        .rev()
        .find(|e| e.ev == "db-done" && e.get("name") == "big.tdb")
        .expect("no run recovered big.tdb")
        .pid;
    assert!(r.contains(&(pid, 0)), "run {pid} did not succeed: {r:?}");
    let evs = events_of(&all, pid);
    if let Ok(keep) = std::env::var("RECHELPER_KEEP_TRACE") {
        std::fs::copy(&trace, keep).unwrap();
    }

    // Parallelism: pulls of different databases overlap.
    let par = max_parallel_pulls(&evs);
    println!("at most {par} databases were being pulled at once");
    assert!(par >= 4, "at most {par} databases pulled at once");

    // Chunking: the big database came in many chunks from every node and
    // went out in many, none larger than the limit (a pulled chunk may end
    // with one record past it, as CTDB's daemon cuts them).
    let big_id = evs
        .iter()
        .find(|e| e.ev == "db-done" && e.get("name") == "big.tdb")
        .unwrap()
        .get("db")
        .to_owned();
    let rec_max = 16 + 10 + LtdbHeader::WIRE_SIZE + BIG_VALUE;
    let pulled: Vec<&Event> = evs
        .iter()
        .filter(|e| e.ev == "pull-chunk" && e.get("db") == big_id)
        .collect();
    let pushed: Vec<&Event> = evs
        .iter()
        .filter(|e| e.ev == "push-chunk" && e.get("db") == big_id)
        .collect();
    let min_chunks = big_bytes / (CHUNK_LIMIT as usize + rec_max);
    for node in ["0", "1", "2"] {
        let n = pulled.iter().filter(|e| e.get("node") == node).count();
        assert!(n >= min_chunks, "only {n} chunks pulled from node {node}");
    }
    assert!(
        pushed.len() >= min_chunks,
        "only {} chunks pushed",
        pushed.len()
    );
    for e in &pulled {
        assert!(
            e.num("bytes") as usize <= CHUNK_LIMIT as usize + rec_max,
            "{e:?}"
        );
    }
    for e in &pushed {
        assert!(e.num("bytes") <= CHUNK_LIMIT as u64, "{e:?}");
    }
    let recs: u64 = pushed.iter().map(|e| e.num("records")).sum();
    assert_eq!(recs, BIG_RECORDS as u64);

    // Memory: the big database was merged on disk, and the helper's peak
    // resident memory stayed well below the database's size.
    assert!(
        evs.iter()
            .any(|e| e.ev == "spilled" && e.get("db") == big_id),
        "big.tdb was not spilled"
    );
    let rss = evs
        .iter()
        .find(|e| e.ev == "exit")
        .unwrap()
        .num("peak_rss_kib") as usize
        * 1024;
    println!(
        "helper peak RSS {} KiB for a database of {} KiB",
        rss / 1024,
        big_bytes / 1024
    );
    assert!(
        rss * 10 < big_bytes * 4,
        "peak RSS {rss} bytes is not well below the database size {big_bytes}"
    );

    // And the result is right everywhere.
    let big = assert_identical(&c, &[0, 1, 2], "big.tdb", true);
    assert_eq!(big.len(), BIG_RECORDS);
    for i in (0..BIG_RECORDS).step_by(997) {
        assert_eq!(big[format!("big{i:07}").as_bytes()].data, big_value(i));
    }
    for d in 0..10 {
        let db = assert_identical(&c, &[0, 1, 2], &format!("par{d}.tdb"), true);
        assert_eq!(db.len(), 3000);
    }
    assert!(recovery_failures(&c).is_empty());
}
