//! Read-only delegations and sticky records, on the reference and on ours
//! (same code for both).
//!
//! Read-only: a volatile database marked read-only on every node; node 0
//! is the data master of a record; readers on nodes 1 and 2 fetch it
//! read-only (the reference tool's `readkey ... readonly`, our tool's,
//! and our client crate's `fetch_readonly`): both get copies and the
//! record does not move (node 0 stays data master, with
//! `RO_HAVE_DELEGATIONS`; the readers' copies carry `RO_HAVE_READONLY`,
//! as `ctdb cattdb`/`catdb` show). A write on node 0 revokes the copies
//! (they lose their read-only flag), and readers then see the new value.
//!
//! Sticky: with `HopcountMakeSticky` 0, a record chased between two
//! nodes becomes sticky; when it comes back to node 0 it is pinned down
//! there for `StickyPindown` ms, and a write from node 1 waits for the
//! end of the pin-down.

use std::time::{Duration, Instant};

use ctdb_client::{Client, DbKind};
use ctdb_protocol::types::record_flags;
use ctdb_tests::{Cluster, ClusterOptions, Daemon, our_bin, poll_until, require_reference};

/// One record as `ctdb cattdb`/`catdb` print it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    dmaster: u32,
    rsn: u64,
    /// The flags line after the hex value (names).
    flags: String,
    data: String,
}

/// The record `key` in a `cattdb`/`catdb` listing.
fn find(listing: &str, key: &str) -> Option<Rec> {
    let head = format!("key({}) = \"{key}\"", key.len());
    let mut lines = listing.lines().skip_while(|l| *l != head);
    lines.next()?;
    let mut rec = Rec {
        dmaster: u32::MAX,
        rsn: 0,
        flags: String::new(),
        data: String::new(),
    };
    for l in lines.by_ref().take(4) {
        if let Some(v) = l.strip_prefix("dmaster: ") {
            rec.dmaster = v.parse().ok()?;
        } else if let Some(v) = l.strip_prefix("rsn: ") {
            rec.rsn = v.parse().ok()?;
        } else if let Some(v) = l.strip_prefix("flags: ") {
            rec.flags = v.split_once(' ').map_or("", |(_, n)| n).to_owned();
        } else if let Some((_, v)) = l.split_once(" = ") {
            rec.data = v.trim_matches('"').to_owned();
        }
    }
    Some(rec)
}

fn local(c: &Cluster, k: usize, db: &str, key: &str) -> Option<Rec> {
    find(&c.tool_ok(k, &["cattdb", db]), key)
}

fn db_stat(c: &Cluster, k: usize, db: &str, field: &str) -> u32 {
    let out = c.tool_ok(k, &["dbstatistics", db]);
    out.lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(field)).then(|| w.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {field} in dbstatistics:\n{out}"))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn readonly_delegations(daemon: Daemon) {
    require_reference();
    let c = Cluster::start(ClusterOptions::new(daemon, 3));
    let d = c.daemon().clone();
    let db = "rodeleg.tdb";
    let key = "hot-record";
    c.tool_ok(0, &["attach", db]);
    for k in 0..3 {
        c.tool_ok(k, &["setdbreadonly", db]);
        let map = c.tool_ok(k, &["getdbmap"]);
        assert!(
            map.lines()
                .any(|l| l.contains(&format!("name:{db}")) && l.ends_with("READONLY")),
            "{d:?}: node {k} does not list {db} as READONLY:\n{map}"
        );
    }
    // The tracking database beside the database's file.
    assert!(
        c.base(0).join(format!("db/volatile/{db}.0.RO")).is_file(),
        "{d:?}: no tracking database"
    );
    c.tool_ok(0, &["writekey", db, key, "first"]);
    let before = local(&c, 0, db, key).expect("record on node 0");
    assert_eq!((before.dmaster, before.flags.as_str()), (0, ""), "{d:?}");

    // Readers on nodes 1 (reference tool) and 2 (our client crate).
    let out = c.tool_ok(1, &["readkey", db, key, "readonly"]);
    assert_eq!(out, "Data: size:5 ptr:[first]\n", "{d:?}");
    let copy = rt().block_on(async {
        let cl = Client::connect(c.socket(2)).await.unwrap();
        let h = cl.attach(db, DbKind::Volatile, 0).await.unwrap();
        h.fetch_readonly(key.as_bytes()).await.unwrap()
    });
    assert_eq!(copy.data, b"first", "{d:?}");
    assert_eq!(copy.header.dmaster, 0, "{d:?}");
    assert_ne!(
        copy.header.flags & record_flags::RO_HAVE_READONLY,
        0,
        "{d:?}"
    );

    // The record stayed on node 0, which now has delegations; the readers
    // hold read-only copies (CTDB's rsn arithmetic: the data master moved
    // its rsn on by 3, the copies carry 2 less).
    let master = local(&c, 0, db, key).unwrap();
    assert_eq!(
        (master.dmaster, master.flags.as_str(), master.data.as_str()),
        (0, "RO_HAVE_DELEGATIONS", "first"),
        "{d:?}"
    );
    assert_eq!(master.rsn, before.rsn + 3, "{d:?}");
    for k in [1, 2] {
        let r = local(&c, k, db, key).unwrap();
        assert_eq!(
            r,
            Rec {
                dmaster: 0,
                rsn: master.rsn - 2,
                flags: "RO_HAVE_READONLY".into(),
                data: "first".into(),
            },
            "{d:?}: node {k}'s copy"
        );
    }
    let cat = c.tool_ok(1, &["catdb", db]);
    assert_eq!(find(&cat, key), Some(master.clone()), "{d:?}:\n{cat}");
    assert!(cat.contains("Dumped 1 records"), "{d:?}:\n{cat}");
    assert_eq!(db_stat(&c, 0, db, "db_ro_delegations"), 2, "{d:?}");
    assert_eq!(db_stat(&c, 0, db, "db_ro_revokes"), 0, "{d:?}");

    // A reader with a copy reads it where it is (no new delegation).
    let ours = our_bin("ctdb");
    let out = c.tool_with(&ours, 1, &["readkey", db, key, "readonly"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Data: size:5 ptr:[first]\n"
    );
    assert_eq!(db_stat(&c, 0, db, "db_ro_delegations"), 2, "{d:?}");
    assert_eq!(local(&c, 0, db, key).unwrap(), master, "{d:?}");

    // A write on node 0 revokes the copies first.
    c.tool_ok(0, &["writekey", db, key, "second"]);
    let after = local(&c, 0, db, key).unwrap();
    assert_eq!(
        (after.dmaster, after.flags.as_str(), after.data.as_str()),
        (0, "", "second"),
        "{d:?}"
    );
    for k in [1, 2] {
        let r = local(&c, k, db, key).unwrap();
        assert_eq!(
            (r.dmaster, r.flags.as_str(), r.data.as_str()),
            (0, "MIGRATED_WITH_DATA", "first"),
            "{d:?}: node {k}'s revoked copy"
        );
        assert_eq!(r.rsn, master.rsn - 1, "{d:?}");
    }
    assert_eq!(db_stat(&c, 0, db, "db_ro_revokes"), 1, "{d:?}");

    // Readers then see the new value, through fresh delegations.
    let out = c.tool_with(&ours, 1, &["readkey", db, key, "readonly"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Data: size:6 ptr:[second]\n",
        "{d:?}"
    );
    let out = c.tool_ok(2, &["readkey", db, key, "readonly"]);
    assert_eq!(out, "Data: size:6 ptr:[second]\n", "{d:?}");
    for k in [1, 2] {
        let r = local(&c, k, db, key).unwrap();
        assert_eq!(
            (r.dmaster, r.flags.as_str(), r.data.as_str()),
            (0, "RO_HAVE_READONLY", "second"),
            "{d:?}: node {k}"
        );
    }
    assert_eq!(
        local(&c, 0, db, key).unwrap().flags,
        "RO_HAVE_DELEGATIONS",
        "{d:?}"
    );
    assert_eq!(db_stat(&c, 0, db, "db_ro_delegations"), 4, "{d:?}");

    // A migration (a plain read from node 2) revokes too, then moves it.
    let out = c.tool_ok(2, &["readkey", db, key]);
    assert_eq!(out, "Data: size:6 ptr:[second]\n", "{d:?}");
    let moved = local(&c, 2, db, key).unwrap();
    assert_eq!(
        (moved.dmaster, moved.flags.as_str()),
        (2, "MIGRATED_WITH_DATA"),
        "{d:?}"
    );
    let r1 = local(&c, 1, db, key).unwrap();
    assert_eq!(
        r1.flags, "MIGRATED_WITH_DATA",
        "{d:?}: node 1's copy revoked"
    );
    assert_eq!(db_stat(&c, 0, db, "db_ro_revokes"), 2, "{d:?}");
    // The daemon's totals count the same.
    let stats = c.tool_ok(0, &["statistics"]);
    let total = |name: &str| -> u32 {
        stats
            .lines()
            .find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some(name)).then(|| w.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("no {name} in statistics:\n{stats}"))
    };
    assert_eq!(
        (total("total_ro_delegations"), total("total_ro_revokes")),
        (4, 2),
        "{d:?}"
    );
}

#[test]
fn readonly_delegations_reference() {
    readonly_delegations(Daemon::Reference);
}

#[test]
fn readonly_delegations_ours() {
    readonly_delegations(Daemon::ours());
}

const PINDOWN_MS: u32 = 4000;

fn sticky_records(daemon: Daemon) {
    require_reference();
    let c = Cluster::start(
        ClusterOptions::new(daemon, 3)
            .tunable("HopcountMakeSticky", 0)
            .tunable("StickyPindown", PINDOWN_MS),
    );
    let d = c.daemon().clone();
    let db = "sticky.tdb";
    let key = "chased";
    c.tool_ok(0, &["attach", db]);
    for k in 0..3 {
        c.tool_ok(k, &["setdbsticky", db]);
        let map = c.tool_ok(k, &["getdbmap"]);
        assert!(
            map.lines()
                .any(|l| l.contains(&format!("name:{db}")) && l.ends_with("STICKY")),
            "{d:?}: node {k}:\n{map}"
        );
    }
    // Node 0, node 1, node 0: the record is hot; node 0 got it back and
    // pins it down.
    c.tool_ok(0, &["writekey", db, key, "a"]);
    c.tool_ok(1, &["writekey", db, key, "b"]);
    c.tool_ok(0, &["writekey", db, key, "c"]);
    let pinned = Instant::now();
    assert_eq!(local(&c, 0, db, key).unwrap().dmaster, 0, "{d:?}");
    poll_until(Duration::from_secs(10), "the pin-down logged", || {
        c.log_text(0)
            .contains(&format!("Pinning down record in {db} for {PINDOWN_MS} ms"))
            .then_some(())
    });
    // Node 1's write waits for the end of the pin-down.
    c.tool_ok(1, &["writekey", db, key, "d"]);
    let waited = pinned.elapsed();
    let log = c.log_text(0);
    assert!(
        log.contains(&format!("Defer request for pinned down record in {db}")),
        "{d:?}: no deferred request logged"
    );
    assert!(log.contains("Make record sticky for"), "{d:?}");
    println!("{d:?}: node 1's write completed {waited:?} after the pin-down began");
    // A lower bound only: the write cannot have finished before the
    // pin-down ended (less the time to start the tool).
    assert!(
        waited >= Duration::from_millis(u64::from(PINDOWN_MS) / 2),
        "{d:?}: node 1's write took only {waited:?}"
    );
    let r = local(&c, 1, db, key).unwrap();
    assert_eq!((r.dmaster, r.data.as_str()), (1, "d"), "{d:?}");
}

#[test]
fn sticky_records_reference() {
    sticky_records(Daemon::Reference);
}

#[test]
fn sticky_records_ours() {
    sticky_records(Daemon::ours());
}
