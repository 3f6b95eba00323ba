//! Helpers shared by the cluster tests: clusters of the reference daemon
//! running our helper, database contents read with `tdbdump`, records
//! written with the reference tool, and the helper's trace events.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ctdb_protocol::Marshal;
use ctdb_protocol::backup::{BACKUP_VERSION, BackupChunk, BackupHeader};
use ctdb_protocol::types::{LtdbHeader, RecBuffer};
use ctdb_tests::{Cluster, ClusterOptions, Daemon, require_reference};

/// Our helper binary, as cargo built it for this test.
pub fn helper() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ctdb_recovery_helper"))
}

/// The daemon a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    /// CTDB 4.17's `ctdbd`.
    Reference,
    /// This workspace's `ctdbd`.
    Ours,
}

impl On {
    pub fn daemon(self) -> Daemon {
        match self {
            On::Reference => Daemon::Reference,
            On::Ours => Daemon::ours(),
        }
    }
}

/// A cluster of `on`'s daemons running our helper, writing trace events
/// to `trace`, with extra environment. Checks that the daemons' leader
/// ran our helper for the first recovery.
pub fn cluster(on: On, n: usize, trace: &Path, env: &[(&str, &str)]) -> Cluster {
    // The reference tool drives every scenario, on both daemons.
    require_reference();
    let mut opts = ClusterOptions::new(on.daemon(), n);
    opts.recovery_helper = Some(helper());
    opts.env.push((
        "CTDB_RECOVERY_HELPER_TRACE".into(),
        trace.display().to_string(),
    ));
    for (k, v) in env {
        opts.env.push((k.to_string(), v.to_string()));
    }
    let c = Cluster::start(opts);
    assert_our_helper_ran(&c, on);
    c
}

/// Checks that the leader's log shows our helper at work: its own first
/// log line, and on our daemon, the daemon's line naming the helper it
/// started (the reference daemon does not log that).
pub fn assert_our_helper_ran(c: &Cluster, on: On) {
    let boss = leader(c, 0);
    let log = c.log_text(boss);
    let started = format!("Running recovery helper {} ", helper().display());
    assert!(
        log.contains("(ctdb-rs helper)") && (on == On::Reference || log.contains(&started)),
        "the leader (node {boss}) did not run our helper:\n{}",
        c.log_tails()
    );
}

/// Runs the reference tool on node `k`, panicking on failure.
pub fn tool(c: &Cluster, k: usize, args: &[&str]) -> String {
    c.tool_ok(k, args)
}

/// Sets a tunable on every node.
pub fn setvar_all(c: &Cluster, name: &str, value: u32) {
    for k in 0..c.len() {
        tool(c, k, &["setvar", name, &value.to_string()]);
    }
}

/// Writes `records` to a persistent or replicated database with
/// `ctdb ptrans` on node `k`.
pub fn ptrans(c: &Cluster, k: usize, db: &str, records: &[(String, String)]) {
    let file = c.dir().join(format!("ptrans-{db}-{k}.txt"));
    let mut text = String::new();
    for (key, v) in records {
        text.push_str(&format!("\"{key}\" \"{v}\"\n"));
    }
    std::fs::write(&file, text).unwrap();
    tool(c, k, &["ptrans", db, file.to_str().unwrap()]);
}

/// One record for a backup file: key, header, value.
pub type BackupRecord = (Vec<u8>, LtdbHeader, Vec<u8>);

/// Writes a `ctdb backupdb` file for database `name` with `flags`.
pub fn write_backup(
    path: &Path,
    name: &str,
    flags: u8,
    records: impl Iterator<Item = BackupRecord>,
) {
    let mut chunks = Vec::new();
    let mut rb = RecBuffer::new(0);
    let mut nrec = 0u64;
    for (k, h, v) in records {
        rb.add(0, Some(&h), &k, &v);
        nrec += 1;
        if rb.records_len() > 100_000 {
            chunks.push(BackupChunk(std::mem::replace(&mut rb, RecBuffer::new(0))));
        }
    }
    if rb.count() > 0 {
        chunks.push(BackupChunk(rb));
    }
    let hdr = BackupHeader {
        version: BACKUP_VERSION,
        timestamp: 0,
        flags: flags as u64,
        nbuf: chunks.len() as u64,
        nrec,
        name: name.into(),
    };
    let mut out = hdr.to_bytes();
    for ch in &chunks {
        out.extend_from_slice(&ch.to_bytes());
    }
    std::fs::write(path, out).unwrap();
}

/// Creates database `name` (kind by `flags`) with `records` on every node
/// through `ctdb restoredb` on node 0.
pub fn restore(c: &Cluster, name: &str, flags: u8, records: impl Iterator<Item = BackupRecord>) {
    let file = c.dir().join(format!("{name}.backup"));
    write_backup(&file, name, flags, records);
    tool(c, 0, &["restoredb", file.to_str().unwrap()]);
    std::fs::remove_file(file).unwrap();
}

/// Decodes one `tdbdump` string body (between the quotes): printable bytes
/// as they are, others as `\XX`.
fn undump(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && let (Some(a), Some(b)) = (
                s.get(i + 1).and_then(|&c| hex(c)),
                s.get(i + 2).and_then(|&c| hex(c)),
            )
        {
            out.push((a * 16 + b) as u8);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// Every record of a tdb file, by `tdbdump`.
pub fn tdbdump(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let out = Command::new("tdbdump")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tdbdump {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut map = BTreeMap::new();
    let mut key: Option<Vec<u8>> = None;
    for line in out.stdout.split(|&b| b == b'\n') {
        let body = |prefix: &[u8]| -> Option<Vec<u8>> {
            let rest = line.strip_prefix(prefix)?;
            let open = rest.iter().position(|&b| b == b'"')?;
            let close = rest.iter().rposition(|&b| b == b'"')?;
            Some(undump(&rest[open + 1..close]))
        };
        if let Some(k) = body(b"key(") {
            key = Some(k);
        } else if let Some(d) = body(b"data(") {
            map.insert(key.take().expect("data before key"), d);
        }
    }
    map
}

/// Node `k`'s file of database `name`.
pub fn db_file(c: &Cluster, k: usize, name: &str) -> PathBuf {
    for dir in ["volatile", "persistent", "state"] {
        let p = c.base(k).join("db").join(dir).join(format!("{name}.{k}"));
        if p.exists() {
            return p;
        }
    }
    panic!("no file for database {name} on node {k}");
}

/// One record as a node holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub header: LtdbHeader,
    pub data: Vec<u8>,
}

/// Node `k`'s records of database `name`.
pub fn records(c: &Cluster, k: usize, name: &str) -> BTreeMap<Vec<u8>, Held> {
    tdbdump(&db_file(c, k, name))
        .into_iter()
        .map(|(key, v)| {
            let (header, data) = LtdbHeader::split(&v).expect("record header");
            (
                key,
                Held {
                    header,
                    data: data.to_vec(),
                },
            )
        })
        .collect()
}

/// Checks that `nodes` hold the same records of `name` and returns them (as
/// node `nodes[0]` holds them). For volatile databases the node that is a
/// record's dmaster stores it with its rsn one higher (CTDB's daemon bumps
/// it when it stores a record it is dmaster of), so rsn may differ by
/// exactly that.
pub fn assert_identical(
    c: &Cluster,
    nodes: &[usize],
    name: &str,
    volatile: bool,
) -> BTreeMap<Vec<u8>, Held> {
    let first = records(c, nodes[0], name);
    for &k in &nodes[1..] {
        let other = records(c, k, name);
        assert_eq!(
            first.keys().collect::<Vec<_>>(),
            other.keys().collect::<Vec<_>>(),
            "database {name}: nodes {} and {k} hold different keys",
            nodes[0]
        );
        for (key, a) in &first {
            let b = &other[key];
            let what = format!(
                "database {name}, key {:?}: node {} has {a:?}, node {k} has {b:?}",
                String::from_utf8_lossy(key),
                nodes[0]
            );
            assert_eq!(a.data, b.data, "{what}");
            assert_eq!(a.header.dmaster, b.header.dmaster, "{what}");
            assert_eq!(a.header.flags, b.header.flags, "{what}");
            if volatile {
                let dm = a.header.dmaster as usize;
                let base = |node: usize, h: &LtdbHeader| h.rsn - (node == dm) as u64;
                assert_eq!(base(nodes[0], &a.header), base(k, &b.header), "{what}");
            } else {
                assert_eq!(a.header, b.header, "{what}");
            }
        }
    }
    first
}

/// One trace event of the helper.
#[derive(Debug, Clone)]
pub struct Event {
    pub pid: u32,
    pub seq: u64,
    pub ev: String,
    pub fields: HashMap<String, String>,
}

impl Event {
    pub fn get(&self, k: &str) -> &str {
        self.fields
            .get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("event {self:?} has no {k}"))
    }

    pub fn num(&self, k: &str) -> u64 {
        self.get(k).parse().unwrap()
    }
}

/// Every event in the trace file, in file order.
pub fn events(trace: &Path) -> Vec<Event> {
    let text = std::fs::read_to_string(trace).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut fields: HashMap<String, String> = l
                .split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            Some(Event {
                pid: fields.remove("pid")?.parse().ok()?,
                seq: fields.remove("seq")?.parse().ok()?,
                ev: fields.remove("ev")?,
                fields,
            })
        })
        .collect()
}

/// The events of helper process `pid`.
pub fn events_of(all: &[Event], pid: u32) -> Vec<Event> {
    all.iter().filter(|e| e.pid == pid).cloned().collect()
}

/// The pids of the helper runs that ended, with their exit status, in
/// order.
pub fn runs(all: &[Event]) -> Vec<(u32, u64)> {
    all.iter()
        .filter(|e| e.ev == "exit")
        .map(|e| (e.pid, e.num("status")))
        .collect()
}

/// Waits until a helper run beyond the first `after` runs has ended; returns
/// all runs.
pub fn wait_runs(trace: &Path, after: usize, limit: Duration) -> Vec<(u32, u64)> {
    ctdb_tests::poll_until(limit, "a recovery helper run to end", || {
        let r = runs(&events(trace));
        (r.len() > after).then_some(r)
    })
}

/// Lines of every node's log that mention a failed recovery.
pub fn recovery_failures(c: &Cluster) -> Vec<String> {
    let mut bad = Vec::new();
    for k in 0..c.len() {
        let log = std::fs::read_to_string(c.log(k)).unwrap_or_default();
        for l in log.lines() {
            if l.contains("database recovery failed")
                || l.contains("databases could not be recovered")
                || (l.contains("ctdb-recovery[") && l.contains("failed"))
            {
                bad.push(l.to_owned());
            }
        }
    }
    bad
}

/// The leader's node number, from `ctdb status` on node `k`.
pub fn leader(c: &Cluster, k: usize) -> usize {
    let s = tool(c, k, &["status"]);
    s.lines()
        .find_map(|l| l.strip_prefix("Leader:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("leader in status")
}

/// Restarts node `k` and waits until its daemon answers. A daemon killed
/// with SIGKILL can leave its event daemon alive for a moment, and a new
/// daemon started meanwhile gives up; then it is started again.
pub fn restart(c: &Cluster, k: usize) {
    let shutdowns = || {
        std::fs::read_to_string(c.log(k))
            .unwrap_or_default()
            .matches("CTDB daemon shutting down")
            .count()
    };
    for _ in 0..5 {
        let before = shutdowns();
        c.restart(k);
        let up = ctdb_tests::poll_until(Duration::from_secs(30), "the restarted daemon", || {
            if c.tool(k, &["ping"]).status.success() {
                return Some(true);
            }
            (shutdowns() > before).then_some(false)
        });
        if up {
            return;
        }
        // Let the old event daemon notice its parent is gone.
        ctdb_tests::poll_until(
            Duration::from_secs(10),
            "the old event daemon to exit",
            || {
                let sock = c.base(k).join("run/eventd.socket");
                (!sock.exists() || std::os::unix::net::UnixStream::connect(&sock).is_err())
                    .then_some(())
            },
        );
    }
    panic!("node {k} did not restart:\n{}", c.log_tails());
}
