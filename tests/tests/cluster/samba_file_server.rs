//! Samba's `smbd` in clustered mode on a 3-node cluster of each daemon,
//! driven by SMB2 clients through two nodes: byte-range locks, oplock and
//! lease breaks, and durable handles with leases behave as a file server
//! must, which they only do when the cluster keeps smbd's databases'
//! sequence numbers as CTDB does (`ENABLE_SEQNUM`, `DB_OPEN_FLAGS`,
//! `UPDATE_SEQNUM`). Then the database controls smbd relies on answer the
//! same on both daemons.

use std::collections::BTreeMap;
use std::time::Duration;

use ctdb_protocol::{ControlReply, ReplyControl};
use ctdb_tests::samba::Samba;
use ctdb_tests::{Cluster, ClusterOptions, Daemon, db_id, raw_control, require_reference};

/// The volatile databases whose sequence numbers smbd's caches rely on.
const SEQNUM_DBS: [&str; 3] = ["brlock.tdb", "locking.tdb", "leases.tdb"];

/// Every database the comparison looks at, as smbd 4.17 attaches them.
const SMBD_DBS: [&str; 13] = [
    "brlock.tdb",
    "locking.tdb",
    "leases.tdb",
    "g_lock.tdb",
    "smbXsrv_open_global.tdb",
    "smbXsrv_session_global.tdb",
    "smbXsrv_tcon_global.tdb",
    "smbXsrv_client_global.tdb",
    "smbXsrv_version_global.tdb",
    "secrets.tdb",
    "registry.tdb",
    "share_info.tdb",
    "group_mapping.tdb",
];

fn start(daemon: Daemon) -> Cluster {
    require_reference();
    Cluster::start(ClusterOptions::new(daemon, 3))
}

/// The tdb header's sequence number of node `k`'s copy of volatile `name`.
/// With robust mutexes (feature flag 1) the database proper, header
/// included, starts after the mutex area (`mutex_size`, at offset 64 of
/// the copy of the header that opens the file).
fn header_seqnum(c: &Cluster, k: usize, name: &str) -> u32 {
    let p = c.base(k).join(format!("db/volatile/{name}.{k}"));
    let b = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let word = |off: usize| u32::from_le_bytes(b[off..off + 4].try_into().unwrap());
    let base = if word(60) & 1 != 0 {
        word(64) as usize
    } else {
        0
    };
    word(base + 48)
}

/// The four file-server scenarios, with the first client on node 0 and the
/// second on node 1, then the byte-range one the other way round.
fn file_server(daemon: Daemon) {
    let c = start(daemon);
    let smb = Samba::start(&c);
    for s in ["brlock", "oplock", "lease", "durable"] {
        let out = smb.scenario_ok(&c, s, 0, 1);
        println!("--- {s} on {:?}\n{out}", c.daemon());
    }
    smb.scenario_ok(&c, "brlock", 1, 0);

    // The sequence numbers moved on every node, node 2 included (no client
    // used it: only UPDATE_SEQNUM from the other nodes moves it).
    for name in SEQNUM_DBS {
        for k in 0..3 {
            ctdb_tests::poll_until(
                Duration::from_secs(10),
                &format!("{name} sequence number moving on node {k}"),
                || (header_seqnum(&c, k, name) > 0).then_some(()),
            );
        }
    }
}

#[test]
fn file_server_on_reference() {
    file_server(Daemon::Reference);
}

#[test]
fn file_server_on_ours() {
    file_server(Daemon::ours());
}

/// What one node answers about smbd's databases: for each, its dbmap
/// flags, `DB_OPEN_FLAGS` and `GET_DB_SEQNUM`.
fn db_controls(c: &Cluster, k: usize) -> BTreeMap<&'static str, (u8, i32, u64)> {
    let sock = c.socket(k);
    let map = match raw_control(&sock, 9, &[]) {
        ReplyControl {
            status: 0,
            data: Some(ControlReply::GetDbMap(m)),
            ..
        } => m,
        r => panic!("GET_DBMAP on node {k}: {r:?}"),
    };
    let mut out = BTreeMap::new();
    for name in SMBD_DBS {
        let id = db_id(name);
        let Some(d) = map.dbs.iter().find(|d| d.db_id == id) else {
            panic!("{name} not attached on node {k} of {:?}", c.daemon());
        };
        let flags = match raw_control(&sock, 149, &id.to_le_bytes()) {
            ReplyControl {
                status: 0,
                data: Some(ControlReply::DbOpenFlags(f)),
                ..
            } => f,
            r => panic!("DB_OPEN_FLAGS {name} on node {k}: {r:?}"),
        };
        let mut req = id.to_le_bytes().to_vec();
        req.extend_from_slice(&[0; 4]);
        let seq = match raw_control(&sock, 120, &req) {
            ReplyControl {
                status: 0,
                data: Some(ControlReply::GetDbSeqnum(n)),
                ..
            } => n,
            r => panic!("GET_DB_SEQNUM {name} on node {k}: {r:?}"),
        };
        out.insert(name, (d.flags, flags, seq));
    }
    out
}

#[test]
fn database_controls_match_reference() {
    let reference = start(Daemon::Reference);
    let ours = start(Daemon::ours());
    let smb_ref = Samba::start(&reference);
    let smb_ours = Samba::start(&ours);
    for (c, smb) in [(&reference, &smb_ref), (&ours, &smb_ours)] {
        smb.scenario_ok(c, "brlock", 0, 1);
        smb.scenario_ok(c, "lease", 1, 0);
    }
    for k in 0..3 {
        let want = db_controls(&reference, k);
        let got = db_controls(&ours, k);
        for name in SMBD_DBS {
            let (w, g) = (want[name], got[name]);
            println!(
                "node {k} {name}: reference flags 0x{:x} open 0x{:x} seqnum {}; ours 0x{:x} 0x{:x} {}",
                w.0, w.1, w.2, g.0, g.1, g.2
            );
            assert_eq!(
                (g.0, g.1),
                (w.0, w.1),
                "node {k} {name}: (dbmap flags, DB_OPEN_FLAGS) differ from the reference"
            );
            // A persistent database's number counts the transactions that
            // changed it; how many smbd start-ups found the registry keys
            // already created by another node is a race, on both daemons.
            if w.0 & 1 == 0 {
                assert_eq!(g.2, w.2, "node {k} {name}: GET_DB_SEQNUM differs");
            }
        }
        for name in SEQNUM_DBS {
            assert_eq!(
                got[name].1 & 0x80,
                0x80,
                "node {k} {name}: TDB_SEQNUM missing from DB_OPEN_FLAGS"
            );
        }
    }
}
