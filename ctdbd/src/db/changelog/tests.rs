use super::checksum::Murmur;
use super::*;
use crate::db::persistent::apply_update;
use ctdb_protocol::types::{KEYED_EPOCH_KEY, LtdbHeader};

fn murmur(data: &[u8]) -> u128 {
    let mut m = Murmur::default();
    m.write(data);
    m.finish()
}

#[test]
fn murmur_matches_the_reference_vectors_and_streams() {
    // MurmurHash3_x64_128, seed 0: h1 then h2 as little-endian words.
    assert_eq!(murmur(b""), 0);
    let h = murmur(b"hello");
    assert_eq!(h as u64, 0xcbd8_a7b3_41bd_9b02);
    assert_eq!((h >> 64) as u64, 0x5b1e_906a_48ae_1d19);
    let long = b"The quick brown fox jumps over the lazy dog";
    let mut m = Murmur::default();
    for c in long.chunks(5) {
        m.write(c);
    }
    assert_eq!(m.finish(), murmur(long));
}

fn rb(recs: &[(&[u8], u64, &[u8])]) -> RecBuffer {
    let mut b = RecBuffer::new(1);
    for (k, rsn, v) in recs {
        let h = LtdbHeader {
            rsn: *rsn,
            ..Default::default()
        };
        b.add(0, Some(&h), k, v);
    }
    b
}

/// One batch of commits (as group commit applies them), or one commit.
fn commit(l: &DbLog, t: &tdb::Tdb, rbs: &[RecBuffer]) {
    if let [one] = rbs {
        logged(Some(l), t, one, || apply_update(t, one, false)).unwrap();
        return;
    }
    let mut ups: Vec<(RecBuffer, Result<(), String>)> =
        rbs.iter().map(|rb| (rb.clone(), Ok(()))).collect();
    logged_batch(
        Some(l),
        t,
        &mut ups,
        |u| &u.0,
        |u| u.1.is_ok(),
        |ups| {
            // One transaction for the batch, as group commit does.
            let tx = t.transaction_start().unwrap();
            for (rb, _) in ups.iter() {
                for r in rb.iter() {
                    tx.store(r.key, r.data, tdb::StoreMode::Replace).unwrap();
                }
            }
            tx.commit().unwrap();
        },
    );
}

/// A log as attach leaves it once its worker computed the checksum.
fn opened(t: &tdb::Tdb, flags: u8) -> Arc<DbLog> {
    let l = DbLog::open(t, flags).unwrap();
    assert_eq!(
        l.info(1).flags & CHANGELOG_TRACKED,
        0,
        "tracked before compute"
    );
    l.compute(t);
    l
}

fn open(dir: &tempfile::TempDir, name: &str) -> tdb::Tdb {
    tdb::OpenOptions::new()
        .create(true)
        .open(dir.path().join(name))
        .unwrap()
}

/// Pushed records stored as they are (what the freeze session does).
fn store_as_is(t: &tdb::Tdb, rb: &RecBuffer) -> Result<(), String> {
    for r in rb.iter() {
        t.store(r.key, r.data, tdb::StoreMode::Replace).unwrap();
    }
    Ok(())
}

/// A recovery transaction on `t` (its log `l`) and the file's transaction
/// under it, open: wiped first when `wipe` says so, with that outcome (a
/// wipe reported failed removed nothing), then `push` stored.
fn recovery<'t>(
    l: &Arc<DbLog>,
    t: &'t tdb::Tdb,
    wipe: Option<bool>,
    push: &RecBuffer,
) -> (RecoveryTx, tdb::Transaction<'t>) {
    let mut tx = RecoveryTx::new(Some(l.clone()));
    tx.start();
    let f = t.transaction_start().unwrap();
    if let Some(ok) = wipe {
        if ok {
            t.wipe_all().unwrap();
        }
        tx.wiped(ok);
    }
    tx.store(t, push, store_as_is).unwrap();
    (tx, f)
}

/// A [`recovery`] committed.
fn recovered(l: &Arc<DbLog>, t: &tdb::Tdb, wipe: Option<bool>, push: &RecBuffer) {
    let (mut tx, f) = recovery(l, t, wipe, push);
    f.commit().unwrap();
    tx.committed(t);
}

/// A new file `name` holding `n` records (no log).
fn filled(dir: &tempfile::TempDir, name: &str, n: u32) -> tdb::Tdb {
    let t = open(dir, name);
    for i in 0..n {
        let v = LtdbHeader::default().prepend(b"v");
        t.store(&i.to_le_bytes(), &v, tdb::StoreMode::Replace)
            .unwrap();
    }
    t
}

/// A persistent file `a.tdb` in `dir` and its log, with one commit of x.
fn committed_once(dir: &tempfile::TempDir) -> (tdb::Tdb, Arc<DbLog>) {
    let a = open(dir, "a.tdb");
    let l = opened(&a, db_flags::PERSISTENT);
    commit(&l, &a, &[rb(&[(b"x", 1, b"1")])]);
    (a, l)
}

/// Starts a checksum worker and stops it before it finishes.
fn stopped_compute(l: &DbLog, t: &tdb::Tdb) {
    l.begin_compute();
    l.interrupt_compute();
    assert!(!l.compute(t), "stopped");
}

#[test]
fn commits_and_catch_up_keep_the_checksum_of_the_content() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir, "a.tdb");
    let b = open(&dir, "b.tdb");
    let la = opened(&a, db_flags::PERSISTENT);
    let lb = opened(&b, db_flags::PERSISTENT);
    let u1 = rb(&[(b"x", 1, b"1"), (b"y", 1, b"1")]);
    for (t, l) in [(&a, &la), (&b, &lb)] {
        commit(l, t, std::slice::from_ref(&u1));
    }
    let at_b = lb.info(1).checksum;
    assert_eq!(at_b, la.info(1).checksum);
    // Node b is away; a commits three times (x twice in one batch).
    commit(
        &la,
        &a,
        &[
            rb(&[(b"x", 2, b"2")]),
            rb(&[(b"x", 3, b"3"), (b"z", 1, b"1")]),
        ],
    );
    commit(&la, &a, &[rb(&[(b"w", 1, b"1")])]);
    assert_eq!(la.info(1).entries, 4);
    assert_eq!(la.info(1).checksum, content_checksum(&a).unwrap().0);
    let changes = la.changes_since(at_b).unwrap();
    let keys: Vec<&[u8]> = changes.iter().map(|(k, _)| k.as_slice()).collect();
    assert_eq!(keys, [b"x".as_slice(), b"z", b"w"]);
    assert!(la.changes_since(12345).is_none());
    // b catches up in a recovery transaction.
    let mut push = RecBuffer::new(1);
    for (k, v) in &changes {
        push.add(0, None, k, v);
    }
    let (mut tx, t) = recovery(&lb, &b, None, &push);
    assert_eq!(lb.info(1).flags, CHANGELOG_TRACKED | CHANGELOG_IN_RECOVERY);
    assert_eq!(lb.info(1).checksum, la.info(1).checksum);
    t.commit().unwrap();
    tx.committed(&b);
    assert_eq!(lb.info(1).checksum, content_checksum(&b).unwrap().0);
    assert_eq!(lb.info(1).checksum, la.info(1).checksum);
    // b's log has the catch-up as an entry, from its old state.
    assert_eq!(lb.changes_since(at_b).unwrap().len(), 3);
    // A wipe and a full push restart the log.
    recovered(&lb, &b, Some(true), &push);
    let i = lb.info(1);
    assert_eq!(i.entries, 0);
    assert_eq!(i.checksum, content_checksum(&b).unwrap().0);
}

#[test]
fn deleted_records_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir, "a.tdb");
    let l = opened(&a, db_flags::PERSISTENT);
    commit(&l, &a, &[rb(&[(b"k", 1, b"v")])]);
    assert_eq!(l.info(1).flags & CHANGELOG_HAS_EMPTY, 0);
    commit(&l, &a, &[rb(&[(b"k", 2, b"")])]);
    assert_ne!(l.info(1).flags & CHANGELOG_HAS_EMPTY, 0);
    assert_eq!(content_checksum(&a).unwrap(), (l.info(1).checksum, 1));
    commit(&l, &a, &[rb(&[(b"k", 3, b"w")])]);
    assert_eq!(l.info(1).flags & CHANGELOG_HAS_EMPTY, 0);
}

#[test]
fn the_log_keeps_to_its_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir, "a.tdb");
    let l = DbLog::with(
        true,
        0,
        0,
        Limits {
            max_bytes: 200,
            max_age: Duration::from_secs(3600),
        },
    );
    let start = l.info(1).checksum;
    for i in 0..10u64 {
        commit(&l, &a, &[rb(&[(b"k", i + 1, &[7u8; 50])])]);
    }
    let i = l.info(1);
    assert!(i.bytes <= 200 && i.entries >= 1, "{i:?}");
    assert_eq!(i.last, 10);
    assert!(l.changes_since(start).is_none());
    assert_eq!(i.checksum, content_checksum(&a).unwrap().0);
}

#[test]
fn the_copy_epoch_follows_recovery_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir, "k.tdb");
    let epoch = |e: u64| {
        let mut b = RecBuffer::new(1);
        b.add(
            0,
            Some(&LtdbHeader {
                rsn: e,
                ..Default::default()
            }),
            KEYED_EPOCH_KEY,
            &e.to_le_bytes(),
        );
        b
    };
    a.store(
        KEYED_EPOCH_KEY,
        &LtdbHeader::default().prepend(&3u64.to_le_bytes()),
        tdb::StoreMode::Insert,
    )
    .unwrap();
    let l = opened(&a, db_flags::KEYED);
    assert_eq!(l.info(1).epoch, 3);
    // A catch-up pushes the next epoch without a wipe: seen inside the
    // transaction, kept at its commit.
    let (mut tx, t) = recovery(&l, &a, None, &epoch(4));
    assert_eq!(l.info(1).epoch, 4);
    t.commit().unwrap();
    tx.committed(&a);
    assert_eq!(l.info(1).epoch, 4);
    // A cancelled one leaves it; a wipe without an epoch record clears it.
    let mut tx = RecoveryTx::new(Some(l.clone()));
    tx.start();
    tx.store(&a, &epoch(9), store_as_is).unwrap();
    tx.cancel();
    assert_eq!(l.info(1).epoch, 4);
    let mut tx = RecoveryTx::new(Some(l.clone()));
    tx.start();
    let t = a.transaction_start().unwrap();
    a.wipe_all().unwrap();
    tx.wiped(true);
    assert_eq!(l.info(1).epoch, 0);
    t.commit().unwrap();
    tx.committed(&a);
    assert_eq!(l.info(1).epoch, 0);
}

/// A freeze that finds the checksum worker holding the database's handle
/// stops it (the freeze waits for the handle without a deadline; the
/// worker reads the whole file): the log stays untracked and says the
/// checksum is unfinished, and the next worker computes it.
#[test]
fn a_stopped_checksum_is_computed_by_the_next_worker() {
    let dir = tempfile::tempdir().unwrap();
    let t = filled(&dir, "s.tdb", 100);
    let l = DbLog::open(&t, db_flags::PERSISTENT).unwrap();
    // An interruption meant for an earlier worker does not stop this one.
    l.interrupt_compute();
    l.begin_compute();
    l.interrupt_compute();
    assert!(!l.compute(&t), "stopped");
    assert!(l.unfinished());
    assert_eq!(l.info(1).flags & CHANGELOG_TRACKED, 0);
    assert!(content_checksum_until(&t, &AtomicBool::new(true)).is_none());
    l.begin_compute();
    assert!(l.compute(&t));
    assert!(!l.unfinished());
    let info = l.info(1);
    assert_ne!(info.flags & CHANGELOG_TRACKED, 0);
    assert_eq!(info.checksum, content_checksum(&t).unwrap().0);
}

/// A recovery transaction that ends without its commit (dropped with its
/// session, or cancelled) is no longer reported: checksum, epoch and
/// flags are those from before it started. A transaction that never
/// opened does not clear another's.
#[test]
fn a_recovery_transaction_ended_without_commit_is_not_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (a, l) = committed_once(&dir);
    let before = l.info(1);
    assert_eq!(before.flags, CHANGELOG_TRACKED);
    for wipe in [false, true] {
        let (tx, t) = recovery(&l, &a, wipe.then_some(true), &rb(&[(b"y", 1, b"2")]));
        let during = l.info(1);
        assert_eq!(during.flags, CHANGELOG_TRACKED | CHANGELOG_IN_RECOVERY);
        assert_ne!(during.checksum, before.checksum);
        let unrelated = RecoveryTx::new(Some(l.clone()));
        drop(unrelated);
        assert_eq!(
            l.info(1).flags & CHANGELOG_IN_RECOVERY,
            CHANGELOG_IN_RECOVERY
        );
        // The session ends (a thaw): its transaction goes with it.
        drop(t);
        drop(tx);
        let after = l.info(1);
        assert_eq!(after.flags, CHANGELOG_TRACKED, "wipe {wipe}");
        assert_eq!(after.checksum, before.checksum);
        assert_eq!(after.checksum, content_checksum(&a).unwrap().0);
        assert_eq!(
            (after.entries, after.seqnum),
            (before.entries, before.seqnum)
        );
    }
}

/// A failed commit may have reached the file or not: the log is
/// untracked, no longer in recovery, and its checksum left to the next
/// worker, which computes the file's.
#[test]
fn a_failed_recovery_commit_leaves_the_checksum_to_compute() {
    let dir = tempfile::tempdir().unwrap();
    let (a, l) = committed_once(&dir);
    let before = l.info(1).checksum;
    let (mut tx, t) = recovery(&l, &a, None, &rb(&[(b"y", 1, b"2")]));
    // The pages reached the file, the commit reported a failure after.
    t.commit().unwrap();
    tx.commit_failed();
    assert_eq!(l.info(1).flags, 0);
    assert!(l.unfinished());
    assert!(l.changes_since(before).is_none());
    drop(tx);
    l.begin_compute();
    assert!(l.compute(&a));
    let i = l.info(1);
    assert_eq!(i.flags, CHANGELOG_TRACKED);
    assert_ne!(i.checksum, before);
    assert_eq!(i.checksum, content_checksum(&a).unwrap().0);
}

/// A rewrite (wipe and full push) of a copy whose log was untracked
/// tracks it again from the rewritten content; the log starts there, so
/// no state from before the rewrite is served, and commits after it are.
#[test]
fn a_full_rewrite_tracks_the_log_again_from_the_rewritten_content() {
    let dir = tempfile::tempdir().unwrap();
    let (a, l) = committed_once(&dir);
    let old_base = l.info(1).checksum;
    commit(&l, &a, &[rb(&[(b"x", 2, b"2")])]);
    let old_entry = l.info(1).checksum;
    assert!(l.changes_since(old_base).is_some());
    // A commit that stored other values than it said: untracked.
    let said = rb(&[(b"y", 1, b"said")]);
    logged(Some(&l), &a, &said, || {
        apply_update(&a, &rb(&[(b"y", 1, b"stored")]), false)
    })
    .unwrap();
    assert_eq!(l.info(1).flags & CHANGELOG_TRACKED, 0);
    assert!(l.changes_since(old_entry).is_none());
    // Recovery: wipe and push the cluster's content, commit.
    let content = rb(&[(b"x", 2, b"2"), (b"z", 1, b"1")]);
    recovered(&l, &a, Some(true), &content);
    let i = l.info(1);
    assert_eq!(i.flags, CHANGELOG_TRACKED);
    assert_eq!(i.checksum, content_checksum(&a).unwrap().0);
    assert_eq!(i.entries, 0);
    let rewritten = i.checksum;
    // Nothing from before the rewrite reaches across it, not even the
    // states it had while tracked.
    for old in [old_base, old_entry] {
        assert_ne!(old, rewritten);
        assert!(l.changes_since(old).is_none(), "{old:032x}");
    }
    assert_eq!(l.changes_since(rewritten).unwrap(), vec![]);
    // A commit after it is served to a copy at the rewritten state.
    commit(&l, &a, &[rb(&[(b"w", 1, b"1")])]);
    let since: Vec<Vec<u8>> = l
        .changes_since(rewritten)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(since, [b"w".to_vec()]);
    assert_eq!(l.info(1).checksum, content_checksum(&a).unwrap().0);
}

/// A rewrite commits what was pushed after a wipe only if the wipe
/// succeeded; a failed one leaves the content unknown: the commit reads
/// the file. A freeze that stopped the checksum worker leaves nothing to
/// compute after a rewrite.
#[test]
fn a_failed_wipe_or_a_stopped_checksum_and_a_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    let a = filled(&dir, "a.tdb", 20);
    let l = DbLog::open(&a, db_flags::PERSISTENT).unwrap();
    stopped_compute(&l, &a);
    assert!(l.unfinished());
    // The wipe "failed" (reported so) after removing nothing: the pushed
    // record joins the twenty, which only a read of the file sees.
    recovered(&l, &a, Some(false), &rb(&[(b"p", 1, b"1")]));
    let i = l.info(1);
    assert_eq!(i.flags, CHANGELOG_TRACKED);
    assert_eq!(i.checksum, content_checksum(&a).unwrap().0);
    assert!(!l.unfinished());
    // Stopped again, then a real rewrite: tracked, nothing left to do.
    stopped_compute(&l, &a);
    recovered(&l, &a, Some(true), &rb(&[(b"q", 1, b"1")]));
    let i = l.info(1);
    assert_eq!(i.flags, CHANGELOG_TRACKED);
    assert_eq!(i.checksum, content_checksum(&a).unwrap().0);
    assert!(!l.unfinished());
}

// ---- through the layer: the freeze session's transaction ----------------

mod through_the_layer {
    use ctdb_protocol::ControlRequest;
    use ctdb_protocol::types::{PullDbExt, TransDb};

    use super::*;
    use crate::db::test_layer::{Layer, Recovery};

    /// The layer with a persistent database holding two records, its
    /// checksum computed, and the recovery driving it.
    struct Fixture {
        f: Layer,
        r: Recovery,
    }

    const TID: u32 = 7;
    const SRVID: u64 = 0x5052_0000_0000_0001;

    impl Fixture {
        fn new() -> Fixture {
            let mut f = Layer::new("v.tdb", false);
            f.id = f.open("p.tdb", db_flags::PERSISTENT);
            let h = LtdbHeader {
                rsn: 1,
                ..Default::default()
            };
            f.put(b"a", &h, b"1");
            f.put(b"b", &h, b"1");
            f.dbs.changelog_compute_now(f.id);
            Fixture {
                f,
                r: Recovery::new(),
            }
        }

        fn log(&self) -> Arc<DbLog> {
            self.f.dbs.dbs[&self.f.id].changelog.clone().unwrap()
        }

        /// `DB_CHANGELOG_INFO` as the control answers it.
        fn info(&mut self) -> ChangelogInfo {
            let id = self.f.id;
            match self.f.dbs.changelog_info(id).data {
                Some(ControlReply::DbChangelogInfo(i)) => *i,
                r => panic!("DB_CHANGELOG_INFO: {r:?}"),
            }
        }

        /// Sends a control from node 0 and waits for its answer, which
        /// must be a success.
        fn control(&mut self, data: ControlRequest) {
            self.r.control(&mut self.f, data);
        }

        fn trans(&self) -> TransDb {
            TransDb {
                db_id: self.f.id,
                tid: TID,
            }
        }

        /// Freezes the database and starts the recovery transaction.
        fn start(&mut self) {
            self.r.start(&mut self.f, TID);
        }

        /// Pushes `recs` as the recovery helper does (start, the records
        /// as a message to the push's srvid, confirm).
        fn push(&mut self, recs: &[(&[u8], u64, &[u8])]) {
            self.r.push(&mut self.f, SRVID, rb(recs));
        }

        /// Thaws the database and waits for its handle to come home.
        fn thaw(&mut self) {
            self.r.thaw(&mut self.f);
        }

        fn file_checksum(&self) -> u128 {
            let tdb = self.f.dbs.dbs[&self.f.id].tdb.as_ref().unwrap();
            content_checksum(tdb).unwrap().0
        }
    }

    /// A recovery that froze the database, started its transaction and
    /// pushed records (with or without a wipe) but ended by a thaw, not a
    /// commit (an abandoned recovery): `DB_CHANGELOG_INFO` reports the
    /// copy's own checksum and no recovery afterwards, as before it.
    #[test]
    fn a_thaw_without_commit_leaves_no_recovery_reported() {
        let mut x = Fixture::new();
        let before = x.info();
        assert_eq!(before.flags, CHANGELOG_TRACKED);
        assert_eq!(before.checksum, x.file_checksum());
        for wipe in [false, true] {
            x.start();
            if wipe {
                let t = x.trans();
                x.control(ControlRequest::WipeDatabase(t));
            }
            x.push(&[(b"c", 1, b"1")]);
            let during = x.info();
            assert_eq!(
                during.flags,
                CHANGELOG_TRACKED | CHANGELOG_IN_RECOVERY,
                "wipe {wipe}"
            );
            assert_ne!(during.checksum, before.checksum);
            x.thaw();
            let after = x.info();
            assert_eq!(after.flags, CHANGELOG_TRACKED, "wipe {wipe}");
            assert_eq!(after.checksum, before.checksum);
            assert_eq!(after.checksum, x.file_checksum());
            assert_eq!(after.epoch, before.epoch);
        }
        // A cancel ends it too, while still frozen.
        x.start();
        x.push(&[(b"c", 1, b"1")]);
        let id = x.f.id;
        x.control(ControlRequest::DbTransactionCancel(id));
        // The session serves its requests in order: once a pull after the
        // cancel is answered, the cancel was done.
        x.control(ControlRequest::DbPull(PullDbExt {
            db_id: id,
            lmaster: 0,
            srvid: SRVID + 1,
        }));
        assert_eq!(x.info().flags, CHANGELOG_TRACKED);
        assert_eq!(x.info().checksum, before.checksum);
        x.thaw();
        assert_eq!(x.info().checksum, before.checksum);
    }

    /// The full path's wipe and push, committed, on a copy whose log was
    /// untracked: tracked again at the rewritten content, with an empty
    /// log (nothing from before the rewrite is served).
    #[test]
    fn a_committed_rewrite_tracks_an_untracked_log_again() {
        let mut x = Fixture::new();
        let old = x.info().checksum;
        x.log().lock().tracked = false;
        x.start();
        let t = x.trans();
        x.control(ControlRequest::WipeDatabase(t));
        x.push(&[(b"a", 2, b"2"), (b"c", 1, b"1")]);
        x.control(ControlRequest::DbTransactionCommit(t));
        x.thaw();
        let i = x.info();
        assert_eq!(i.flags, CHANGELOG_TRACKED);
        assert_eq!(i.checksum, x.file_checksum());
        assert_ne!(i.checksum, old);
        assert_eq!(i.entries, 0);
        assert!(x.log().changes_since(old).is_none());
        assert_eq!(x.log().changes_since(i.checksum).unwrap(), vec![]);
    }
}

/// The checksum walks the file under one shared all-record lock when the
/// handle can take it, and chain by chain when it cannot (a read-only
/// handle, or an exclusive all-record lock already held): the same sum
/// either way, and no lock left behind.
#[test]
fn the_checksum_is_the_same_with_or_without_the_all_record_lock() {
    let dir = tempfile::tempdir().unwrap();
    let t = filled(&dir, "w.tdb", 500);
    let mut expected = (0u128, 0i64);
    t.traverse_read(|k, v| {
        let p = checksum::part(k, v);
        expected = (expected.0.wrapping_add(p.0), expected.1 + p.1);
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(content_checksum(&t).unwrap(), expected);
    // Nothing held after it: the exclusive lock is granted at once.
    let held = t.lockall_nonblock().unwrap();
    assert_eq!(content_checksum(&t).unwrap(), expected);
    drop(held);
    std::fs::copy(dir.path().join("w.tdb"), dir.path().join("ro.tdb")).unwrap();
    let ro = tdb::OpenOptions::new()
        .read_only(true)
        .open(dir.path().join("ro.tdb"))
        .unwrap();
    assert_eq!(content_checksum(&ro).unwrap(), expected);
}
