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
    let mut tx = RecoveryTx::new(Some(lb.clone()));
    tx.start();
    let mut push = RecBuffer::new(1);
    for (k, v) in &changes {
        push.add(0, None, k, v);
    }
    let t = b.transaction_start().unwrap();
    tx.store(&b, &push, |t, rb| {
        for r in rb.iter() {
            t.store(r.key, r.data, tdb::StoreMode::Replace).unwrap();
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(lb.info(1).flags, CHANGELOG_TRACKED | CHANGELOG_IN_RECOVERY);
    assert_eq!(lb.info(1).checksum, la.info(1).checksum);
    t.commit().unwrap();
    tx.committed(&b);
    assert_eq!(lb.info(1).checksum, content_checksum(&b).unwrap().0);
    assert_eq!(lb.info(1).checksum, la.info(1).checksum);
    // b's log has the catch-up as an entry, from its old state.
    assert_eq!(lb.changes_since(at_b).unwrap().len(), 3);
    // A wipe and a full push restart the log.
    let mut tx = RecoveryTx::new(Some(lb.clone()));
    tx.start();
    let t = b.transaction_start().unwrap();
    b.wipe_all().unwrap();
    tx.wiped();
    tx.store(&b, &push, |t, rb| {
        for r in rb.iter() {
            t.store(r.key, r.data, tdb::StoreMode::Replace).unwrap();
        }
        Ok(())
    })
    .unwrap();
    t.commit().unwrap();
    tx.committed(&b);
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
    let store = |t: &tdb::Tdb, rb: &RecBuffer| {
        for r in rb.iter() {
            t.store(r.key, r.data, tdb::StoreMode::Replace).unwrap();
        }
        Ok(())
    };
    // A catch-up pushes the next epoch without a wipe: seen inside the
    // transaction, kept at its commit.
    let mut tx = RecoveryTx::new(Some(l.clone()));
    tx.start();
    let t = a.transaction_start().unwrap();
    tx.store(&a, &epoch(4), store).unwrap();
    assert_eq!(l.info(1).epoch, 4);
    t.commit().unwrap();
    tx.committed(&a);
    assert_eq!(l.info(1).epoch, 4);
    // A cancelled one leaves it; a wipe without an epoch record clears it.
    let mut tx = RecoveryTx::new(Some(l.clone()));
    tx.start();
    tx.store(&a, &epoch(9), store).unwrap();
    tx.cancel();
    assert_eq!(l.info(1).epoch, 4);
    let mut tx = RecoveryTx::new(Some(l.clone()));
    tx.start();
    let t = a.transaction_start().unwrap();
    a.wipe_all().unwrap();
    tx.wiped();
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
    let t = open(&dir, "s.tdb");
    for i in 0..100u32 {
        let v = LtdbHeader::default().prepend(b"v");
        t.store(&i.to_le_bytes(), &v, tdb::StoreMode::Replace)
            .unwrap();
    }
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
