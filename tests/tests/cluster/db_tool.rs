//! Databases through the reference `ctdb` tool: the same session against a
//! 3-node reference cluster and against ours, compared line by line
//! (attach of all three kinds, getdbmap, getdbstatus, a record written on
//! node 0 and read on node 2 with the dmaster and rsn catdb shows,
//! pstore/pfetch/pdelete, ptrans of 3000 records, catdb, cattdb,
//! getdbseqnum, wipedb, backupdb, restoredb of the reference backup,
//! detach);
//! then `ctdb recover` with volatile records written on all three nodes
//! and the 3000-record persistent database, through the reference
//! recovery helper; on our cluster, bad input too.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use ctdb_client::Client;
use ctdb_protocol::call::{ReqCall, call_id};
use ctdb_protocol::header::CTDB_CURRENT_NODE;
use ctdb_protocol::{ControlRequest, ReqControl};
use ctdb_tests::{Cluster, ClusterOptions, Daemon, poll_until, reference_dir, require_reference};

/// One tool run: what was asked, exit status, stdout and stderr.
#[derive(Debug)]
struct Run {
    what: String,
    ok: bool,
    out: String,
}

struct Session<'a> {
    c: &'a Cluster,
    runs: Vec<Run>,
}

impl Session<'_> {
    fn tool(&mut self, k: usize, args: &[&str]) -> String {
        self.tool_input(k, args, None)
    }

    fn tool_input(&mut self, k: usize, args: &[&str], input: Option<&str>) -> String {
        let mut cmd = Command::new("/usr/bin/ctdb");
        cmd.args(args)
            .env("CTDB_TEST_MODE", "yes")
            .env("CTDB_BASE", self.c.base(k))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        if let Some(i) = input {
            stdin.write_all(i.as_bytes()).unwrap();
        }
        drop(stdin);
        let o = child.wait_with_output().unwrap();
        let dir = self.c.dir().display().to_string();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
        .replace(&dir, "DIR");
        self.runs.push(Run {
            what: format!("node {k}: ctdb {}", args.join(" ")).replace(&dir, "DIR"),
            ok: o.status.success(),
            out: text.clone(),
        });
        text
    }

    fn tool_ok(&mut self, k: usize, args: &[&str]) -> String {
        let out = self.tool(k, args);
        assert!(
            self.runs.last().unwrap().ok,
            "ctdb {} on node {k} failed: {out}\n{}",
            args.join(" "),
            self.c.log_tails()
        );
        out
    }
}

/// catdb/cattdb output with its record blocks sorted (traverse order is
/// not part of the contract).
fn sorted_records(out: &str) -> String {
    let mut blocks: Vec<&str> = out.split("\n\n").collect();
    let trailer = blocks.pop().unwrap_or_default();
    blocks.sort_unstable();
    format!("{}\n\n{trailer}", blocks.join("\n\n"))
}

fn ptrans_input(n: usize) -> String {
    (0..n)
        .map(|i| format!("\"key{i:05}\" \"value-{i:05}-xxxxxxxxxxxxxxxxxxxxxxxx\"\n"))
        .collect()
}

/// The tool session compared between the daemons. Returns the transcript.
fn session(c: &Cluster) -> Vec<Run> {
    let mut s = Session {
        c,
        runs: Vec::new(),
    };
    s.tool_ok(0, &["attach", "vol.tdb"]);
    s.tool_ok(0, &["attach", "pers.tdb", "persistent"]);
    s.tool_ok(1, &["attach", "repl.tdb", "replicated"]);
    let map = s.tool_ok(2, &["getdbmap"]);
    assert!(map.starts_with("Number of databases:3"), "{map}");
    assert!(
        map.contains("name:pers.tdb") && map.contains("PERSISTENT"),
        "{map}"
    );
    assert!(
        map.contains("name:repl.tdb") && map.contains("REPLICATED"),
        "{map}"
    );
    assert!(
        map.contains("path:DIR/node.2/db/volatile/vol.tdb.2"),
        "{map}"
    );
    s.tool_ok(1, &["getdbstatus", "pers.tdb"]);
    s.tool_ok(0, &["getdbstatus", "vol.tdb"]);

    // A record written on node 0, read on node 2: it migrates.
    s.tool_ok(0, &["writekey", "vol.tdb", "k1", "hello"]);
    let before = s.tool_ok(0, &["catdb", "vol.tdb"]);
    assert!(before.contains("dmaster: 0"), "{before}");
    let r = s.tool_ok(2, &["readkey", "vol.tdb", "k1"]);
    assert_eq!(r.trim(), "Data: size:5 ptr:[hello]");
    let after = s.tool_ok(1, &["catdb", "vol.tdb"]);
    assert!(after.contains("dmaster: 2"), "{after}");
    s.tool_ok(0, &["cattdb", "vol.tdb"]);
    s.tool_ok(2, &["cattdb", "vol.tdb"]);

    // Persistent records.
    s.tool_ok(0, &["pstore", "pers.tdb", "a", "1"]);
    assert_eq!(s.tool_ok(1, &["pfetch", "pers.tdb", "a"]).trim(), "1");
    assert_eq!(s.tool_ok(2, &["getdbseqnum", "pers.tdb"]).trim(), "0x1");
    s.tool_ok(1, &["pdelete", "pers.tdb", "a"]);
    s.tool(2, &["pfetch", "pers.tdb", "a"]);
    s.tool_ok(0, &["catdb", "pers.tdb"]);
    let input = ptrans_input(3000);
    s.tool_input(1, &["ptrans", "pers.tdb"], Some(&input));
    assert!(s.runs.last().unwrap().ok, "ptrans failed");
    assert_eq!(s.tool_ok(0, &["getdbseqnum", "pers.tdb"]).trim(), "0x3");
    let all = s.tool_ok(2, &["catdb", "pers.tdb"]);
    assert!(
        all.contains("Dumped 3001 records"),
        "{}",
        &all[all.len() - 200..]
    );
    let t = s.tool_ok(0, &["cattdb", "pers.tdb"]);
    assert!(
        t.contains("Dumped 3002 record(s)"),
        "{}",
        &t[t.len() - 200..]
    );

    // Backup, wipe, restore.
    let bk = c.dir().join("pers.backup");
    let bk = bk.to_str().unwrap();
    s.tool_ok(0, &["backupdb", "pers.tdb", bk]);
    s.tool_ok(1, &["wipedb", "pers.tdb"]);
    assert!(
        s.tool_ok(2, &["catdb", "pers.tdb"])
            .contains("Dumped 0 records")
    );
    s.tool_ok(2, &["restoredb", bk]);
    assert!(
        s.tool_ok(1, &["catdb", "pers.tdb"])
            .contains("Dumped 3001 records")
    );
    assert_eq!(s.tool_ok(1, &["getdbseqnum", "pers.tdb"]).trim(), "0x3");
    let cap = reference_dir().join("backup/cap_pers.backup");
    s.tool_ok(0, &["restoredb", cap.to_str().unwrap()]);
    s.tool_ok(2, &["catdb", "cap_pers.tdb"]);
    s.tool_ok(2, &["getdbseqnum", "cap_pers.tdb"]);
    s.tool_ok(0, &["wipedb", "vol.tdb"]);
    assert!(
        s.tool_ok(1, &["catdb", "vol.tdb"])
            .contains("Dumped 0 records")
    );
    s.tool_ok(1, &["getdbmap"]);

    // Detach: refused while clients may attach, then done on every node.
    s.tool_ok(0, &["attach", "gone.tdb"]);
    s.tool(1, &["detach", "gone.tdb"]);
    assert!(!s.runs.last().unwrap().ok);
    for k in 0..3 {
        s.tool_ok(k, &["setvar", "AllowClientDBAttach", "0"]);
    }
    s.tool(1, &["detach", "pers.tdb"]);
    assert!(!s.runs.last().unwrap().ok);
    s.tool_ok(1, &["detach", "gone.tdb"]);
    for k in 0..3 {
        poll_until(Duration::from_secs(30), "the detach everywhere", || {
            let map = c.tool_ok(k, &["getdbmap"]);
            (!map.contains("gone.tdb")).then_some(())
        });
        s.tool_ok(k, &["setvar", "AllowClientDBAttach", "1"]);
    }
    s.tool_ok(2, &["getdbmap"]);
    s.runs
}

/// `ctdb recover` with volatile records written on every node and the
/// 3000-record persistent database: the volatile records keep their
/// newest values, every node's persistent copy is the same.
fn recover(c: &Cluster) {
    let mut s = Session {
        c,
        runs: Vec::new(),
    };
    for k in 0..3 {
        s.tool_ok(
            k,
            &[
                "writekey",
                "vol.tdb",
                &format!("key{k}"),
                &format!("val{k}"),
            ],
        );
        s.tool_ok(k, &["writekey", "vol.tdb", "shared", &format!("from{k}")]);
    }
    s.tool_ok(1, &["writekey", "vol.tdb", "key0", "newer"]);
    s.tool_ok(0, &["recover"]);
    let st = s.tool_ok(0, &["status"]);
    assert!(st.contains("Recovery mode:NORMAL"), "{st}");
    for k in 0..3 {
        let v = s.tool_ok(k, &["readkey", "vol.tdb", "shared"]);
        assert_eq!(v.trim(), "Data: size:5 ptr:[from2]", "node {k}");
        let v = s.tool_ok(k, &["readkey", "vol.tdb", "key0"]);
        assert_eq!(v.trim(), "Data: size:5 ptr:[newer]", "node {k}");
        let v = s.tool_ok(k, &["readkey", "vol.tdb", "key2"]);
        assert_eq!(v.trim(), "Data: size:4 ptr:[val2]", "node {k}");
    }
    let cat = s.tool_ok(1, &["catdb", "vol.tdb"]);
    assert!(cat.contains("Dumped 4 records"), "{cat}");
    let copies: Vec<String> = (0..3)
        .map(|k| sorted_records(&s.tool_ok(k, &["cattdb", "pers.tdb"])))
        .collect();
    // 3000 records, the sequence number, perhaps the deleted record.
    let n: usize = copies[0]
        .rsplit("Dumped ")
        .next()
        .and_then(|t| t.split(' ').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    assert!(
        (3001..=3002).contains(&n),
        "{}",
        &copies[0][copies[0].len() - 100..]
    );
    assert_eq!(copies[0], copies[1]);
    assert_eq!(copies[0], copies[2]);
    for k in 0..3 {
        assert_eq!(s.tool_ok(k, &["getdbseqnum", "pers.tdb"]).trim(), "0x3");
    }
}

/// Bad input to our daemon: an error reply, nothing changed, serving on.
fn bad_input(c: &Cluster) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cl = Client::connect(c.socket(0))
            .await
            .unwrap()
            .with_timeout(Duration::from_secs(10));
        let before = cl.get_dbmap(CTDB_CURRENT_NODE).await.unwrap();
        // A call for a database nobody attached.
        let r = cl
            .call(
                CTDB_CURRENT_NODE,
                ReqCall {
                    db_id: 0xdead_beef,
                    callid: call_id::NULL_FUNC,
                    key: b"k".to_vec(),
                    ..Default::default()
                },
            )
            .await;
        assert!(
            matches!(&r, Err(ctdb_client::ClientError::CallFailed { .. })),
            "{r:?}"
        );
        // Attach with an empty and an over-long name.
        for name in [String::new(), "x".repeat(300)] {
            let r = cl
                .control_raw(
                    CTDB_CURRENT_NODE,
                    ReqControl::new(ControlRequest::DbAttach(name.clone())),
                )
                .await
                .unwrap();
            assert_ne!(r.status, 0, "attach of {} chars", name.len());
        }
        assert_eq!(cl.get_dbmap(CTDB_CURRENT_NODE).await.unwrap(), before);
    });
    // A truncated TRANS3_COMMIT buffer: a control reply with an error.
    let pers = ctdb_tests::db_id("pers.tdb");
    let mut data = Vec::new();
    data.extend_from_slice(&pers.to_le_bytes());
    data.extend_from_slice(&5u32.to_le_bytes()); // five records...
    data.extend_from_slice(&[0x40, 0, 0, 0, 0, 0, 0]); // ...that are not there
    let reply = ctdb_tests::raw_control(&c.socket(0), 119, &data);
    assert_ne!(reply.status, 0, "truncated TRANS3_COMMIT accepted");
    // Nothing changed, and the daemon serves on.
    assert_eq!(c.tool_ok(0, &["getdbseqnum", "pers.tdb"]).trim(), "0x3");
    assert!(c.tool_ok(0, &["ping"]).starts_with("response from 0"));
}

#[test]
fn db_tool_session_matches_reference() {
    require_reference();
    let reference = {
        let c = Cluster::start(ClusterOptions::new(Daemon::Reference, 3));
        let runs = session(&c);
        recover(&c);
        runs
    };
    let c = Cluster::start(ClusterOptions::new(Daemon::ours(), 3));
    let ours = session(&c);
    assert_eq!(reference.len(), ours.len());
    for (r, o) in reference.iter().zip(&ours) {
        assert_eq!(r.what, o.what);
        assert_eq!(r.ok, o.ok, "{}: exit status differs: {}", r.what, o.out);
        let (mut ro, mut oo) = (r.out.clone(), o.out.clone());
        if r.what.contains(" catdb ") || r.what.contains(" cattdb ") {
            ro = sorted_records(&ro);
            oo = sorted_records(&oo);
        }
        if r.what.contains("restoredb") && r.what.contains("DIR/pers.backup") {
            // Our own backup's time stamp differs between the runs.
            ro = ro.lines().skip(1).collect();
            oo = oo.lines().skip(1).collect();
        }
        assert_eq!(ro, oo, "{}: output differs", r.what);
    }
    recover(&c);
    bad_input(&c);
}
