//! A repack while libtdb traverses the same file (mutex mode), as
//! `ctdb cattdb` does while ctdbd's vacuuming repacks.
//!
//! libtdb's read traverse keeps the record it is at locked (`fcntl`) while
//! it asks for the next chain. A commit that has made the all-record lock
//! exclusive (the all-record mutex held, chains closed to everyone) and then
//! waits for the record area could wait for that reader for ever, while the
//! reader waits for the all-record mutex. `Tdb::repack` gives such a commit
//! up and tries again, so both finish.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use tdb::StoreMode;

/// Whether process `pid` holds an `fcntl` lock past `off` on the file with
/// inode `ino` (a traverse's record lock).
fn holds_record_lock(pid: u32, ino: u64, off: u64) -> bool {
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    locks.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // "1: POSIX  ADVISORY  READ 1234 fe:00:5678 781312 781312"
        let f = if f.get(1) == Some(&"->") {
            &f[1..]
        } else {
            &f[..]
        };
        f.len() >= 7
            && f[4].parse::<u32>().ok() == Some(pid)
            && f[5].rsplit(':').next().and_then(|i| i.parse::<u64>().ok()) == Some(ino)
            && f[6].parse::<u64>().is_ok_and(|s| s >= off)
    })
}

#[test]
fn repack_finishes_while_libtdb_traverses() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.tdb");
    let f = MUTEX_FLAGS;
    let db = mutex_options().open(&path).unwrap();
    assert!(db.uses_mutexes());
    for i in 0..200u32 {
        db.store(format!("k{i}").as_bytes(), &[1u8; 64], StoreMode::Replace)
            .unwrap();
    }
    // Every other record deleted: a freelist worth repacking.
    for i in (0..200u32).step_by(2) {
        db.delete(format!("k{i}").as_bytes()).unwrap();
    }
    let before = db.freelist_size().unwrap();
    assert!(before > 10, "freelist {before}");

    let mut lib = LibTdb::open(&path, 131, f);
    // One handle in this process from here on (closing a second one
    // would drop this process's fcntl locks): the repack thread's.
    drop(db);
    let pid: u32 = lib.cmd("pid").parse().unwrap();
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
    // 100 records, 20 ms each: the traverse takes about 2 s.
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let r = lib.cmd("items_slow 20");
        tx.send(r).unwrap();
        lib
    });
    // A lock past the chain locks' offsets is a record lock.
    let records_from = 168 + 4 * 132;
    assert!(
        wait_until(Duration::from_secs(10), || holds_record_lock(
            pid,
            ino,
            records_from
        )),
        "libtdb's traverse never locked a record"
    );
    let (done_tx, done_rx) = mpsc::channel();
    let p2 = path.clone();
    std::thread::spawn(move || {
        let db = mutex_options().open(&p2).unwrap();
        let t0 = Instant::now();
        let r = db.repack();
        let took = t0.elapsed();
        let after = db.freelist_size().unwrap();
        db.check().unwrap();
        let kept: Vec<bool> = (0..200u32)
            .map(|i| db.fetch(format!("k{i}").as_bytes()).unwrap().is_some())
            .collect();
        done_tx.send((r, took, after, kept)).unwrap();
    });
    let (r, took, after, kept) = done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the repack did not finish beside libtdb's traverse (deadlock)");
    r.unwrap();
    let t = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("libtdb's traverse did not finish");
    let mut lib = reader.join().unwrap();
    println!("repack took {took:?} beside a 2 s libtdb traverse; freelist {before} -> {after}");
    assert_eq!(t, "count 100", "libtdb's traverse: {t}");
    assert!(after <= 2, "freelist after the repack: {after}");
    for (i, k) in kept.iter().enumerate() {
        assert_eq!(*k, i % 2 == 1, "k{i}");
    }
    assert_eq!(lib.cmd("check"), "ok");
}
