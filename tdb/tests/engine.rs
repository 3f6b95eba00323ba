//! Behaviour of the engine on its own: store modes, deletes, traversals,
//! transactions, locks, growth under churn.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use tdb::{Error, OpenOptions, StoreMode, Tdb};

fn new_db(dir: &tempfile::TempDir, name: &str, hash: u32) -> Tdb {
    OpenOptions::new()
        .create(true)
        .hash_size(hash)
        .open(dir.path().join(name))
        .unwrap()
}

fn contents(db: &Tdb) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut m = BTreeMap::new();
    db.traverse_read(|k, v| {
        assert!(m.insert(k.to_vec(), v.to_vec()).is_none(), "key seen twice");
        ControlFlow::Continue(())
    })
    .unwrap();
    m
}

#[test]
fn store_modes_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(&dir, "a.tdb", 7);
    assert_eq!(db.fetch(b"k").unwrap(), None);
    assert!(matches!(
        db.store(b"k", b"v", StoreMode::Modify),
        Err(Error::NotFound)
    ));
    db.store(b"k", b"v1", StoreMode::Insert).unwrap();
    assert!(matches!(
        db.store(b"k", b"v2", StoreMode::Insert),
        Err(Error::Exists)
    ));
    db.store(b"k", b"v2", StoreMode::Modify).unwrap();
    assert_eq!(db.fetch(b"k").unwrap().unwrap(), b"v2");
    db.store(
        b"k",
        b"a much longer value that will not fit in place",
        StoreMode::Replace,
    )
    .unwrap();
    assert_eq!(
        db.fetch(b"k").unwrap().unwrap(),
        b"a much longer value that will not fit in place"
    );
    db.store(b"k", b"", StoreMode::Replace).unwrap();
    assert_eq!(db.fetch(b"k").unwrap().unwrap(), b"");
    assert!(db.exists(b"k").unwrap());
    db.store(b"", b"empty key", StoreMode::Insert).unwrap();
    assert_eq!(db.fetch(b"").unwrap().unwrap(), b"empty key");
    db.delete(b"k").unwrap();
    assert!(matches!(db.delete(b"k"), Err(Error::NotFound)));
    assert!(!db.exists(b"k").unwrap());
    assert_eq!(db.record_count().unwrap(), 1);
    db.append(b"ap", b"one").unwrap();
    db.append(b"ap", b"two").unwrap();
    assert_eq!(db.fetch(b"ap").unwrap().unwrap(), b"onetwo");
    db.storev(b"sv", &[b"a", b"", b"bc"], StoreMode::Replace)
        .unwrap();
    assert_eq!(db.fetch(b"sv").unwrap().unwrap(), b"abc");
    assert_eq!(db.parse(b"sv", |d| d.len()).unwrap(), Some(3));
    assert_eq!(db.parse(b"nope", |d| d.len()).unwrap(), None);
    db.check().unwrap();
}

#[test]
fn many_records_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.tdb");
    let mut model = BTreeMap::new();
    {
        let db = Tdb::create(&path, 131).unwrap();
        for i in 0..5000u32 {
            let k = format!("key-{i}").into_bytes();
            let v = vec![(i % 251) as u8; (i % 300) as usize];
            db.store(&k, &v, StoreMode::Insert).unwrap();
            model.insert(k, v);
        }
        for i in (0..5000u32).step_by(3) {
            let k = format!("key-{i}").into_bytes();
            db.delete(&k).unwrap();
            model.remove(&k);
        }
        assert_eq!(contents(&db), model);
        db.check().unwrap();
    }
    let db = Tdb::open_existing(&path).unwrap();
    assert_eq!(contents(&db), model);
    assert_eq!(db.record_count().unwrap(), model.len());
    let mut n = 0;
    for kv in db.iter() {
        let (k, v) = kv.unwrap();
        assert_eq!(model.get(&k), Some(&v));
        n += 1;
    }
    assert_eq!(n, model.len());
}

#[test]
fn second_handle_in_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.tdb");
    let db = Tdb::create(&path, 0).unwrap();
    db.store(b"a", b"b", StoreMode::Insert).unwrap();
    assert!(matches!(Tdb::open_existing(&path), Err(Error::AlreadyOpen)));
    // The refused open must not have dropped the first handle's locks or
    // broken it.
    let g = db.chainlock(b"a").unwrap();
    assert_eq!(g.fetch(b"a").unwrap().unwrap(), b"b");
    drop(g);
    drop(db);
    Tdb::open_existing(&path).unwrap();
}

#[test]
fn traverse_may_delete_current_record() {
    let dir = tempfile::tempdir().unwrap();
    for max_dead in [0, 5] {
        let db = OpenOptions::new()
            .create(true)
            .hash_size(3)
            .max_dead(max_dead)
            .open(dir.path().join(format!("t{max_dead}.tdb")))
            .unwrap();
        for i in 0..300u32 {
            db.store(
                format!("{i}").as_bytes(),
                &i.to_le_bytes(),
                StoreMode::Insert,
            )
            .unwrap();
        }
        let mut seen = 0;
        let n = db
            .traverse(|k, v| {
                seen += 1;
                let i = u32::from_le_bytes(v.try_into().unwrap());
                assert_eq!(k, format!("{i}").as_bytes());
                if i % 2 == 0 {
                    db.delete(k).unwrap();
                } else {
                    // Grow the record: it moves (old copy dies, new one at
                    // the chain head, not revisited).
                    db.store(k, &[v, &[0u8; 40][..]].concat(), StoreMode::Replace)
                        .unwrap();
                }
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(n, 300);
        assert_eq!(seen, 300);
        let c = contents(&db);
        assert_eq!(c.len(), 150);
        for (k, v) in &c {
            let i: u32 = std::str::from_utf8(k).unwrap().parse().unwrap();
            assert_eq!(i % 2, 1);
            assert_eq!(v.len(), 44);
        }
        db.check().unwrap();
        // Read traversals cannot write.
        db.traverse_read(|k, _| {
            assert!(matches!(db.delete(k), Err(Error::ReadOnly)));
            ControlFlow::Break(())
        })
        .unwrap();
    }
}

#[test]
fn iterator_tolerates_changes() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(&dir, "it.tdb", 5);
    for i in 0..100u32 {
        db.store(&i.to_be_bytes(), b"x", StoreMode::Insert).unwrap();
    }
    let mut n = 0;
    for kv in db.iter() {
        let (k, _) = kv.unwrap();
        db.delete(&k).unwrap();
        n += 1;
    }
    assert_eq!(n, 100);
    assert_eq!(db.record_count().unwrap(), 0);
    db.check().unwrap();
}

#[test]
fn transactions_commit_cancel_nest() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(&dir, "tx.tdb", 31);
    db.store(b"base", b"0", StoreMode::Insert).unwrap();

    let tx = db.transaction_start().unwrap();
    tx.store(b"a", b"1", StoreMode::Insert).unwrap();
    tx.delete(b"base").unwrap();
    assert_eq!(tx.fetch(b"a").unwrap().unwrap(), b"1");
    assert!(!tx.exists(b"base").unwrap());
    tx.cancel().unwrap();
    assert_eq!(db.fetch(b"a").unwrap(), None);
    assert_eq!(db.fetch(b"base").unwrap().unwrap(), b"0");

    {
        let _tx = db.transaction_start().unwrap();
        db.store(b"dropped", b"1", StoreMode::Insert).unwrap();
    }
    assert_eq!(db.fetch(b"dropped").unwrap(), None);

    let mut tx = db.transaction_start().unwrap();
    for i in 0..2000u32 {
        tx.store(&i.to_le_bytes(), &[7u8; 100], StoreMode::Insert)
            .unwrap();
    }
    tx.prepare_commit().unwrap();
    tx.commit().unwrap();
    assert_eq!(db.record_count().unwrap(), 2001);
    db.check().unwrap();

    // As in libtdb, writing after prepare fails and dooms the transaction.
    let mut tx = db.transaction_start().unwrap();
    tx.store(b"p", b"1", StoreMode::Insert).unwrap();
    tx.prepare_commit().unwrap();
    assert!(tx.store(b"late", b"x", StoreMode::Insert).is_err());
    assert!(matches!(tx.commit(), Err(Error::TransactionFailed)));
    assert_eq!(db.fetch(b"p").unwrap(), None);
    db.check().unwrap();

    // Nested: the inner commit only counts when the outer one commits.
    let outer = db.transaction_start().unwrap();
    let inner = db.transaction_start().unwrap();
    db.store(b"nested", b"yes", StoreMode::Insert).unwrap();
    inner.commit().unwrap();
    assert!(db.transaction_active());
    outer.commit().unwrap();
    assert_eq!(db.fetch(b"nested").unwrap().unwrap(), b"yes");

    // A cancelled inner transaction dooms the outer one.
    let outer = db.transaction_start().unwrap();
    let inner = db.transaction_start().unwrap();
    db.store(b"doomed", b"1", StoreMode::Insert).unwrap();
    inner.cancel().unwrap();
    assert!(matches!(outer.commit(), Err(Error::TransactionFailed)));
    assert_eq!(db.fetch(b"doomed").unwrap(), None);

    // Nesting can be disabled, as CTDB does.
    drop(db);
    let db = OpenOptions::new()
        .allow_nesting(false)
        .open(dir.path().join("tx.tdb"))
        .unwrap();
    let _tx = db.transaction_start().unwrap();
    assert!(matches!(db.transaction_start(), Err(Error::Nesting)));
}

#[test]
fn transaction_refused_with_locks_held() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(&dir, "l.tdb", 31);
    let g = db.chainlock(b"x").unwrap();
    assert!(matches!(db.transaction_start(), Err(Error::Lock(_))));
    drop(g);
    let all = db.lockall().unwrap();
    assert!(db.chainlock(b"x").is_ok());
    assert!(matches!(db.transaction_start(), Err(Error::Lock(_))));
    drop(all);
    db.transaction_start().unwrap().commit().unwrap();
}

#[test]
fn chain_lock_guard_fast_path() {
    let dir = tempfile::tempdir().unwrap();
    for mutex in [false, true] {
        let db = OpenOptions::new()
            .create(true)
            .hash_size(101)
            .mutex_locking(mutex)
            .clear_if_first(mutex)
            .open(dir.path().join(format!("g{mutex}.tdb")))
            .unwrap();
        assert_eq!(db.uses_mutexes(), mutex);
        let g = db.chainlock_nonblock(b"rec").unwrap();
        assert_eq!(g.fetch(b"rec").unwrap(), None);
        g.store(b"rec", b"v1", StoreMode::Replace).unwrap();
        // Nested locks of the same chain in one handle just count.
        let g2 = db.chainlock_nonblock(b"rec").unwrap();
        drop(g2);
        assert_eq!(g.fetch(b"rec").unwrap().unwrap(), b"v1");
        // A key of another chain works through the guard too.
        g.store(b"other key", b"v", StoreMode::Replace).unwrap();
        g.delete(b"rec").unwrap();
        g.unlock().unwrap();
        assert_eq!(db.fetch(b"other key").unwrap().unwrap(), b"v");
        let r = db.chainlock_read(b"other key").unwrap();
        assert_eq!(r.fetch(b"other key").unwrap().unwrap(), b"v");
        // As in libtdb, writing under a read lock upgrades it.
        r.store(b"other key", b"w", StoreMode::Replace).unwrap();
        drop(r);
        db.check().unwrap();
    }
}

#[test]
fn churn_does_not_grow_without_bound() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(&dir, "churn.tdb", 97);
    let mut seed = 12345u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut sizes = Vec::new();
    for round in 0..40 {
        for _ in 0..500 {
            let k = (rnd() % 200).to_le_bytes();
            let len = (rnd() % 2000) as usize;
            if rnd() % 3 == 0 {
                let _ = db.delete(&k);
            } else {
                db.store(&k, &vec![round as u8; len], StoreMode::Replace)
                    .unwrap();
            }
        }
        sizes.push(db.map_size());
    }
    db.check().unwrap();
    // 200 live keys of at most ~2.5 kB: the file must settle well below what
    // 20000 stores would take without reuse.
    let last = *sizes.last().unwrap();
    assert!(last < 4 * 1024 * 1024, "file grew to {last}: {sizes:?}");
    assert_eq!(sizes[20], last, "still growing after warm-up: {sizes:?}");
    // Repack leaves one free block.
    db.repack().unwrap();
    db.check().unwrap();
    assert!(db.freelist_size().unwrap() <= 2);
}

#[test]
fn wipe_seqnum_lockall() {
    let dir = tempfile::tempdir().unwrap();
    let db = OpenOptions::new()
        .create(true)
        .seqnum(true)
        .open(dir.path().join("s.tdb"))
        .unwrap();
    let s0 = db.seqnum().unwrap();
    db.store(b"a", b"1", StoreMode::Insert).unwrap();
    db.delete(b"a").unwrap();
    assert_eq!(db.seqnum().unwrap(), s0 + 2);
    for i in 0..100u8 {
        db.store(&[i], &[i], StoreMode::Insert).unwrap();
    }
    let all = db.lockall().unwrap();
    db.store(b"under lockall", b"ok", StoreMode::Insert)
        .unwrap();
    all.unlock().unwrap();
    db.wipe_all().unwrap();
    assert_eq!(db.record_count().unwrap(), 0);
    db.check().unwrap();
    let r = db.lockall_read().unwrap();
    assert!(db.store(b"x", b"y", StoreMode::Insert).is_err());
    drop(r);
}

#[test]
fn read_only_handle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro.tdb");
    Tdb::create(&path, 0)
        .unwrap()
        .store(b"k", b"v", StoreMode::Insert)
        .unwrap();
    let db = OpenOptions::new().read_only(true).open(&path).unwrap();
    assert_eq!(db.fetch(b"k").unwrap().unwrap(), b"v");
    assert!(matches!(
        db.store(b"k", b"w", StoreMode::Replace),
        Err(Error::ReadOnly)
    ));
    assert!(matches!(db.delete(b"k"), Err(Error::ReadOnly)));
    assert!(db.transaction_start().is_err());
    assert!(matches!(
        OpenOptions::new()
            .read_only(true)
            .open(dir.path().join("missing.tdb")),
        Err(Error::Io(_))
    ));
}

#[test]
fn no_mmap_and_no_lock_modes() {
    let dir = tempfile::tempdir().unwrap();
    for (nommap, nolock) in [(true, false), (false, true), (true, true)] {
        let path = dir.path().join(format!("m{nommap}{nolock}.tdb"));
        let db = OpenOptions::new()
            .create(true)
            .no_mmap(nommap)
            .no_lock(nolock)
            .open(&path)
            .unwrap();
        for i in 0..500u32 {
            db.store(&i.to_le_bytes(), &i.to_be_bytes(), StoreMode::Insert)
                .unwrap();
        }
        let tx = db.transaction_start().unwrap();
        tx.delete(&7u32.to_le_bytes()).unwrap();
        tx.commit().unwrap();
        assert_eq!(db.record_count().unwrap(), 499);
        db.check().unwrap();
    }
}

#[test]
fn clear_if_first_wipes_only_when_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cif.tdb");
    {
        let db = Tdb::create(&path, 0).unwrap();
        db.store(b"k", b"v", StoreMode::Insert).unwrap();
    }
    let db = OpenOptions::new().clear_if_first(true).open(&path).unwrap();
    assert_eq!(db.record_count().unwrap(), 0);
    db.store(b"k", b"v", StoreMode::Insert).unwrap();
}

#[test]
fn record_lock_api() {
    let dir = tempfile::tempdir().unwrap();
    for mutex in [false, true] {
        let db = OpenOptions::new()
            .create(true)
            .hash_size(13)
            .mutex_locking(mutex)
            .open(dir.path().join(format!("r{mutex}.tdb")))
            .unwrap();
        let r = db.lock_record_nonblock(b"rec").unwrap();
        assert_eq!(r.key(), b"rec");
        assert_eq!(r.fetch().unwrap(), None);
        assert!(!r.exists().unwrap());
        assert!(matches!(
            r.store(b"x", StoreMode::Modify),
            Err(Error::NotFound)
        ));
        r.storev(&[b"head", b"body"], StoreMode::Insert).unwrap();
        let mut buf = Vec::new();
        assert!(r.fetch_into(&mut buf).unwrap());
        assert_eq!(buf, b"headbody");
        assert_eq!(r.parse(|d| d.len()).unwrap(), Some(8));
        r.store(b"a longer value than before", StoreMode::Replace)
            .unwrap();
        assert_eq!(r.fetch().unwrap().unwrap(), b"a longer value than before");
        r.chain()
            .store(b"neighbour", b"n", StoreMode::Replace)
            .unwrap();
        r.delete().unwrap();
        assert!(matches!(r.delete(), Err(Error::NotFound)));
        r.unlock().unwrap();
        assert_eq!(db.fetch(b"neighbour").unwrap().unwrap(), b"n");
        db.check().unwrap();
    }
}

/// A commit that died right after pointing the header at a newly added
/// recovery area leaves that area as pad bytes: not an error, just unused.
#[test]
fn recovery_pointer_to_unwritten_area() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pad.tdb");
    {
        let db = new_db(&dir, "pad.tdb", 7);
        db.store(b"k", b"v", StoreMode::Insert).unwrap();
    }
    let mut b = std::fs::read(&path).unwrap();
    let head = b.len() as u32;
    b.extend_from_slice(&[0x42u8; 8192]);
    b[44..48].copy_from_slice(&head.to_ne_bytes());
    std::fs::write(&path, &b).unwrap();
    let db = Tdb::open_existing(&path).unwrap();
    db.check().unwrap();
    let tx = db.transaction_start().unwrap();
    tx.store(b"k2", b"v2", StoreMode::Insert).unwrap();
    tx.commit().unwrap();
    db.check().unwrap();
    db.wipe_all().unwrap();
    db.check().unwrap();
    db.store(b"k3", b"v3", StoreMode::Insert).unwrap();
    db.repack().unwrap();
    db.check().unwrap();
    assert_eq!(db.fetch(b"k3").unwrap().unwrap(), b"v3");
}
