//! Group commit: a batch gives every update the outcome it would have had
//! alone, in one transaction; through the layer, updates queued behind an
//! apply form the next batch, each answered after it, and other work
//! queued between them keeps its place.

use std::time::Duration;

use ctdb_protocol::ControlRequest;
use ctdb_protocol::types::{CTDB_RECOVERY_ACTIVE, DbSeqnumRequest, db_flags};

use super::*;
use crate::db::Effect;
use crate::db::persistent::apply_update;
use crate::db::test_layer::Layer;

fn header(rsn: u64) -> LtdbHeader {
    LtdbHeader {
        rsn,
        dmaster: 0,
        ..Default::default()
    }
}

fn rb(recs: &[(&[u8], u64, &[u8])]) -> RecBuffer {
    let mut b = RecBuffer::new(7);
    for (k, rsn, v) in recs {
        b.add(0, Some(&header(*rsn)), k, v);
    }
    b
}

fn update(b: RecBuffer) -> Update {
    Update {
        tag: 0,
        rb: b,
        result: Ok(()),
    }
}

fn open(dir: &std::path::Path, name: &str) -> tdb::Tdb {
    tdb::OpenOptions::new()
        .create(true)
        .open(dir.join(name))
        .unwrap()
}

/// Every record of a file, sorted.
fn contents(t: &tdb::Tdb) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut v = Vec::new();
    t.traverse(|k, d| {
        v.push((k.to_vec(), d.to_vec()));
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    v.sort();
    v
}

#[test]
fn a_failing_update_does_not_fail_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let t = open(dir.path(), "p.tdb");
    apply_update(&t, &rb(&[(b"a", 5, b"old")]), false).unwrap();
    let before = t.sync_count();
    let mut batch = vec![
        update(rb(&[(b"b", 1, b"b1")])),
        // Goes back in rsn on `a` with other data: refused, and its `c`
        // is not stored either.
        update(rb(&[(b"c", 1, b"c1"), (b"a", 4, b"stale")])),
        update(rb(&[(b"a", 6, b"new")])),
        // Checked against the batch's own earlier update: `a` is at 6 now.
        update(rb(&[(b"a", 6, b"other")])),
        // The same data at the same rsn is accepted (a resent update).
        update(rb(&[(b"a", 6, b"new"), (b"d", 1, b"d1")])),
    ];
    assert_eq!(apply_batch(&t, &mut batch, false), 1);
    let ok: Vec<bool> = batch.iter().map(|u| u.result.is_ok()).collect();
    assert_eq!(ok, [true, false, true, false, true]);
    assert!(
        batch[1]
            .result
            .as_ref()
            .unwrap_err()
            .contains("larger RSN 5 than new RSN 4"),
        "{:?}",
        batch[1].result
    );
    assert_eq!(t.sync_count() - before, 4, "one synced transaction");
    let get = |k: &[u8]| {
        t.fetch(k)
            .unwrap()
            .map(|v| ltdb::split(&v).map(|(h, d)| (h.rsn, d.to_vec())).unwrap())
    };
    assert_eq!(get(b"a"), Some((6, b"new".to_vec())));
    assert_eq!(get(b"b"), Some((1, b"b1".to_vec())));
    assert_eq!(get(b"c"), None);
    assert_eq!(get(b"d"), Some((1, b"d1".to_vec())));
}

#[test]
fn a_batch_refused_entirely_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let t = open(dir.path(), "p.tdb");
    apply_update(&t, &rb(&[(b"a", 5, b"x")]), false).unwrap();
    let before = t.sync_count();
    let mut batch = vec![
        update(rb(&[(b"a", 1, b"y")])),
        update(rb(&[(b"a", 2, b"z")])),
    ];
    assert_eq!(apply_batch(&t, &mut batch, false), 1);
    assert!(batch.iter().all(|u| u.result.is_err()));
    assert_eq!(t.sync_count(), before);
}

/// A small deterministic generator (no dependency for one test).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

#[test]
fn batches_end_where_updates_one_by_one_end() {
    // Random updates over a few keys (repeated keys inside an update,
    // stale rsns, resent data), applied one by one on one file and in
    // batches of random sizes on another: the same outcome for each
    // update and the same records. Also with replace-only.
    for replace_only in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let alone = open(dir.path(), "alone.tdb");
        let grouped = open(dir.path(), "grouped.tdb");
        let seed: Vec<RecBuffer> = (0..3u8).map(|k| rb(&[(&[b'k', k], 1, b"seed")])).collect();
        for b in &seed {
            apply_update(&alone, b, false).unwrap();
            apply_update(&grouped, b, false).unwrap();
        }
        let mut g = Lcg(u64::from(replace_only) + 42);
        let updates: Vec<RecBuffer> = (0..400)
            .map(|_| {
                let n = 1 + g.next(3);
                let recs: Vec<(Vec<u8>, u64, Vec<u8>)> = (0..n)
                    .map(|_| {
                        (
                            vec![b'k', g.next(5) as u8],
                            g.next(40),
                            vec![b'v', g.next(3) as u8],
                        )
                    })
                    .collect();
                let refs: Vec<(&[u8], u64, &[u8])> = recs
                    .iter()
                    .map(|(k, r, v)| (k.as_slice(), *r, v.as_slice()))
                    .collect();
                rb(&refs)
            })
            .collect();
        let one_by_one: Vec<bool> = updates
            .iter()
            .map(|b| apply_update(&alone, b, replace_only).is_ok())
            .collect();
        let mut batched = Vec::new();
        let mut rest = &updates[..];
        while !rest.is_empty() {
            let n = (1 + g.next(12) as usize).min(rest.len());
            let mut batch: Vec<Update> = rest[..n].iter().cloned().map(update).collect();
            apply_batch(&grouped, &mut batch, replace_only);
            batched.extend(batch.iter().map(|u| u.result.is_ok()));
            rest = &rest[n..];
        }
        assert_eq!(batched, one_by_one, "replace_only {replace_only}");
        assert!(one_by_one.iter().any(|ok| *ok) && one_by_one.iter().any(|ok| !*ok));
        assert_eq!(contents(&grouped), contents(&alone));
    }
}

// ---- through the layer ---------------------------------------------------

/// The layer with the persistent database `p.tdb` beside the volatile
/// one; [`Layer::id`] is `p.tdb`'s.
fn fixture() -> Layer {
    let mut f = Layer::new("v.tdb", false);
    f.id = f.open("p.tdb", db_flags::PERSISTENT);
    f
}

impl Layer {
    fn update(&mut self, reqid: u32, recs: &[(&[u8], u64, &[u8])]) {
        let mut b = rb(recs);
        b.db_id = self.id;
        self.control(reqid, ControlRequest::UpdateRecord(b));
    }

    /// The control replies so far: (request id, status).
    fn replies(&mut self) -> Vec<(u32, i32)> {
        self.dbs
            .take_effects()
            .into_iter()
            .filter_map(|e| match e {
                Effect::Reply(ReplyTo::Node { reqid, .. }, r) => Some((reqid, r.status)),
                _ => None,
            })
            .collect()
    }

    /// The next applied batch (its update count and transactions), handed
    /// to the layer.
    async fn next_batch(&mut self) -> (usize, u32, u64) {
        let ev = tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
            .await
            .expect("a batch within 10 s")
            .unwrap();
        let DbEvent::Applied(a) = &ev else {
            panic!("not a batch: {ev:?}");
        };
        let seen = (a.updates.len(), a.transactions, a.syncs);
        self.with(|d, env| d.event(env, ev));
        seen
    }
}

#[test]
fn updates_queued_behind_an_apply_form_the_next_batch() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut f = fixture();
        // The first update finds the handle at home: applied alone, now.
        f.update(1, &[(b"a", 1, b"x")]);
        assert!(f.dbs.dbs[&f.id].tdb.is_none(), "the apply has the handle");
        // These queue behind it; a sequence-number read sits between 4
        // and 5.
        f.update(2, &[(b"b", 1, b"y")]);
        f.update(3, &[(b"a", 1, b"stale")]);
        f.update(4, &[(b"c", 1, b"z")]);
        f.control(
            9,
            ControlRequest::GetDbSeqnum(DbSeqnumRequest { db_id: f.id }),
        );
        f.update(5, &[(b"d", 1, b"w")]);
        assert_eq!(f.replies(), [], "nothing answered before it is durable");

        assert_eq!(f.next_batch().await, (1, 1, 4));
        // 1 is answered; 2, 3 and 4 left together, up to the read.
        assert_eq!(f.replies(), [(1, 0)]);
        assert_eq!(f.next_batch().await, (3, 1, 4));
        // Each with its own outcome; then the read, then 5 alone.
        assert_eq!(f.replies(), [(2, 0), (3, -1), (4, 0), (9, 0)]);
        assert_eq!(f.next_batch().await, (1, 1, 4));
        assert_eq!(f.replies(), [(5, 0)]);
        let t = f.dbs.dbs[&f.id].tdb.as_ref().unwrap();
        for (k, v) in [
            (&b"a"[..], &b"x"[..]),
            (b"b", b"y"),
            (b"c", b"z"),
            (b"d", b"w"),
        ] {
            let got = t.fetch(k).unwrap().unwrap();
            assert_eq!(ltdb::split(&got).unwrap().1, v);
        }
    });
}

#[test]
fn queued_updates_go_through_the_checks_when_they_join() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut f = fixture();
        f.update(1, &[(b"a", 1, b"x")]);
        f.update(2, &[(b"b", 1, b"y")]);
        f.update(3, &[(b"c", 1, b"z")]);
        // A recovery starts while they wait: when the handle is back they
        // are refused, as they were before group commit, and nothing
        // takes the handle.
        f.node.recovery_mode = CTDB_RECOVERY_ACTIVE;
        assert_eq!(f.next_batch().await, (1, 1, 4));
        assert_eq!(f.replies(), [(1, 0), (2, -1), (3, -1)]);
        assert!(f.dbs.dbs[&f.id].tdb.is_some());
        let t = f.dbs.dbs[&f.id].tdb.as_ref().unwrap();
        assert!(t.fetch(b"b").unwrap().is_none());
    });
}
