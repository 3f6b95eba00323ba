//! `Tdb::sync_count`: the data syncs a handle did, which the daemon's
//! group commit reports (four per committed transaction of a synced file,
//! none with `TDB_NOSYNC`).

use tdb::{OpenOptions, StoreMode};

fn commit_one(db: &tdb::Tdb, key: &[u8]) {
    let tx = db.transaction_start().unwrap();
    tx.store(key, b"value", StoreMode::Replace).unwrap();
    tx.commit().unwrap();
}

#[test]
fn synced_transactions_count_four_syncs_each() {
    let dir = tempfile::tempdir().unwrap();
    let db = OpenOptions::new()
        .create(true)
        .open(dir.path().join("s.tdb"))
        .unwrap();
    let before = db.sync_count();
    commit_one(&db, b"a");
    assert_eq!(db.sync_count() - before, 4);
    // Two stores in one transaction still sync four times.
    let tx = db.transaction_start().unwrap();
    tx.store(b"b", b"1", StoreMode::Replace).unwrap();
    tx.store(b"c", b"2", StoreMode::Replace).unwrap();
    tx.commit().unwrap();
    assert_eq!(db.sync_count() - before, 8);
    // A cancelled transaction wrote nothing and synced nothing.
    let tx = db.transaction_start().unwrap();
    tx.store(b"d", b"3", StoreMode::Replace).unwrap();
    tx.cancel().unwrap();
    assert_eq!(db.sync_count() - before, 8);
}

#[test]
fn nosync_handles_never_sync() {
    let dir = tempfile::tempdir().unwrap();
    let db = OpenOptions::new()
        .create(true)
        .no_sync(true)
        .open(dir.path().join("n.tdb"))
        .unwrap();
    commit_one(&db, b"a");
    assert_eq!(db.sync_count(), 0);
}
