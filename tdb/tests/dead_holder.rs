//! A process that dies holding a lock must not wedge the others: robust
//! mutexes hand the lock to the next locker (EOWNERDEAD), fcntl locks are
//! dropped by the kernel.

mod common;

use common::*;
use tdb::{Error, OpenOptions, StoreMode, flags};

const CHILD_ENV: &str = "TDB_HOLDER_CHILD";

fn opts(mutex: bool) -> OpenOptions {
    let mut o = OpenOptions::new();
    o.create(true).hash_size(131);
    if mutex {
        o.mutex_locking(true);
    }
    o
}

/// Child: take a lock, report, and wait to be killed.
#[test]
fn holder_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (path, what) = spec.split_once('|').unwrap();
    let mutex = what.ends_with("-mutex");
    let db = opts(mutex).open(path).unwrap();
    let _chain;
    let _all;
    if what.starts_with("chain") {
        _chain = db.chainlock(b"contended").unwrap();
        _chain
            .store(b"contended", b"half-done", StoreMode::Replace)
            .unwrap();
    } else {
        _all = db.lockall().unwrap();
    }
    println!("@@locked");
    loop {
        std::thread::park();
    }
}

fn dies_holding(what: &str, mutex: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.tdb");
    let db = opts(mutex).open(&path).unwrap();
    assert_eq!(db.uses_mutexes(), mutex);
    db.store(b"other", b"x", StoreMode::Replace).unwrap();
    let kind = format!("{what}-{}", if mutex { "mutex" } else { "fcntl" });
    let mut child = spawn_child(
        "holder_child",
        &[(CHILD_ENV, format!("{}|{kind}", path.display()))],
    );
    let mut lines = ChildLines::new(&mut child);
    assert_eq!(lines.next_line().as_deref(), Some("locked"));

    assert!(matches!(
        db.chainlock_nonblock(b"contended"),
        Err(Error::WouldBlock)
    ));
    sigkill(&child);
    child.wait().unwrap();

    // The next locker gets it, without blocking.
    let g = db
        .chainlock_nonblock(b"contended")
        .expect("lock of a dead holder is free");
    g.store(b"contended", b"recovered", StoreMode::Replace)
        .unwrap();
    drop(g);
    assert_eq!(db.fetch(b"contended").unwrap().unwrap(), b"recovered");
    drop(db.lockall_nonblock().expect("all-record lock free too"));
    db.check().unwrap();

    // libtdb is not wedged either.
    let f = if mutex {
        flags::MUTEX_LOCKING | flags::INCOMPATIBLE_HASH
    } else {
        0
    };
    let mut lib = LibTdb::open(&path, 0, f);
    assert_eq!(
        lib.cmd(&format!("chainlock_nonblock {}", hex(b"contended"))),
        "ok"
    );
    assert_eq!(lib.cmd(&format!("chainunlock {}", hex(b"contended"))), "ok");
    assert_eq!(lib.fetch(b"contended").unwrap(), b"recovered");
    lib.close();
}

#[test]
fn dead_chain_mutex_holder() {
    dies_holding("chain", true);
}

#[test]
fn dead_allrecord_mutex_holder() {
    dies_holding("all", true);
}

#[test]
fn dead_chain_fcntl_holder() {
    dies_holding("chain", false);
}

#[test]
fn dead_allrecord_fcntl_holder() {
    dies_holding("all", false);
}

#[test]
fn dead_libtdb_holder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deadlib.tdb");
    let db = opts(true).open(&path).unwrap();
    let mut lib = LibTdb::open(&path, 0, flags::MUTEX_LOCKING | flags::INCOMPATIBLE_HASH);
    assert_eq!(lib.cmd(&format!("chainlock {}", hex(b"k"))), "ok");
    let pid: i32 = lib.cmd("pid").parse().unwrap();
    assert!(matches!(
        db.chainlock_nonblock(b"k"),
        Err(Error::WouldBlock)
    ));
    kill_pid(pid);
    drop(lib);
    let g = db
        .chainlock_nonblock(b"k")
        .expect("dead libtdb holder's mutex is ours");
    g.store(b"k", b"v", StoreMode::Insert).unwrap();
}
