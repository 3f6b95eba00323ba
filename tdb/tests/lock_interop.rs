//! Lock interoperability with libtdb processes on the same file, in fcntl
//! mode and in mutex mode.

mod common;

use std::path::Path;

use common::*;
use tdb::{Error, OpenOptions, Tdb};

/// Two keys that live in different chains of `db`.
fn two_chains(db: &Tdb) -> (Vec<u8>, Vec<u8>) {
    let hs = db.hash_size();
    let a = b"key-a".to_vec();
    let ba = db.key_hash(&a) % hs;
    for i in 0.. {
        let b = format!("key-b{i}").into_bytes();
        if db.key_hash(&b) % hs != ba {
            return (a, b);
        }
    }
    unreachable!()
}

fn chain_locks_exclude_each_other(path: &Path, ours: &OpenOptions, lflags: u32) {
    let db = ours.open(path).unwrap();
    let mut lib = LibTdb::open(path, 0, lflags);
    let (a, b) = two_chains(&db);

    // libtdb holds chain A: we cannot get A, we can get B.
    assert_eq!(lib.cmd(&format!("chainlock {}", hex(&a))), "ok");
    assert!(matches!(db.chainlock_nonblock(&a), Err(Error::WouldBlock)));
    assert!(matches!(
        db.chainlock_read_nonblock(&a),
        Err(Error::WouldBlock)
    ));
    let gb = db.chainlock_nonblock(&b).expect("other chain is free");
    drop(gb);
    // Nor can we take everything.
    assert!(matches!(db.lockall_nonblock(), Err(Error::WouldBlock)));
    assert_eq!(lib.cmd(&format!("chainunlock {}", hex(&a))), "ok");
    let ga = db.chainlock_nonblock(&a).expect("released by libtdb");

    // And the other way round: we hold A.
    assert_eq!(lib.cmd(&format!("chainlock_nonblock {}", hex(&a))), "fail");
    assert_eq!(lib.cmd(&format!("chainlock_nonblock {}", hex(&b))), "ok");
    assert_eq!(lib.cmd(&format!("chainunlock {}", hex(&b))), "ok");
    assert_eq!(lib.cmd("lockall_nonblock"), "fail");
    drop(ga);
    assert_eq!(lib.cmd(&format!("chainlock_nonblock {}", hex(&a))), "ok");
    assert_eq!(lib.cmd(&format!("chainunlock {}", hex(&a))), "ok");

    // All-record lock held by libtdb blocks every chain for us.
    assert_eq!(lib.cmd("lockall"), "ok");
    assert!(matches!(db.chainlock_nonblock(&a), Err(Error::WouldBlock)));
    assert!(matches!(db.chainlock_nonblock(&b), Err(Error::WouldBlock)));
    assert_eq!(lib.cmd("unlockall"), "ok");
    drop(db.chainlock_nonblock(&b).unwrap());

    // Our all-record lock blocks libtdb.
    let all = db.lockall_nonblock().unwrap();
    assert_eq!(lib.cmd(&format!("chainlock_nonblock {}", hex(&b))), "fail");
    drop(all);
    assert_eq!(lib.cmd(&format!("chainlock_nonblock {}", hex(&b))), "ok");
    assert_eq!(lib.cmd(&format!("chainunlock {}", hex(&b))), "ok");

    // The freelist lock, both ways.
    assert_eq!(lib.cmd("freelist_lock_nonblock"), "ok");
    assert!(matches!(
        db.testing_freelist_lock_nonblock(),
        Err(Error::WouldBlock)
    ));
    drop(
        db.chainlock_nonblock(&a)
            .expect("chains are independent of the freelist"),
    );
    assert_eq!(lib.cmd("freelist_unlock"), "ok");
    db.testing_freelist_lock_nonblock().unwrap();
    assert_eq!(lib.cmd("freelist_lock_nonblock"), "fail");
    assert_eq!(lib.cmd(&format!("chainlock_nonblock {}", hex(&a))), "ok");
    assert_eq!(lib.cmd(&format!("chainunlock {}", hex(&a))), "ok");
    db.testing_freelist_unlock().unwrap();
    assert_eq!(lib.cmd("freelist_lock_nonblock"), "ok");
    assert_eq!(lib.cmd("freelist_unlock"), "ok");

    // Transactions exclude each other.
    assert_eq!(lib.cmd("transaction_start"), "ok");
    assert!(matches!(
        db.transaction_start_nonblock(),
        Err(Error::WouldBlock)
    ));
    assert_eq!(lib.cmd("transaction_cancel"), "ok");
    let tx = db.transaction_start_nonblock().unwrap();
    assert_eq!(lib.cmd("transaction_start_nonblock"), "fail");
    tx.cancel().unwrap();
    lib.close();
}

#[test]
fn fcntl_chain_locks_interoperate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.tdb");
    Tdb::create(&path, 131).unwrap();
    chain_locks_exclude_each_other(&path, &OpenOptions::new(), 0);
}

#[test]
fn mutex_chain_locks_interoperate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.tdb");
    let o = mutex_options();
    {
        let db = o.open(&path).unwrap();
        assert!(db.uses_mutexes());
    }
    chain_locks_exclude_each_other(&path, &o, MUTEX_FLAGS);
}

#[test]
fn mutex_file_created_by_libtdb() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lm.tdb");
    let f = MUTEX_FLAGS;
    let mut lib = LibTdb::open(&path, 53, f);
    // We join while libtdb has it open: no wipe, its mutexes are used.
    lib.store(b"from libtdb", b"1");
    let db = OpenOptions::new().tdb_flags(f).open(&path).unwrap();
    assert!(db.uses_mutexes());
    assert_eq!(db.fetch(b"from libtdb").unwrap().unwrap(), b"1");
    assert_eq!(lib.cmd(&format!("chainlock {}", hex(b"from libtdb"))), "ok");
    assert!(matches!(
        db.chainlock_nonblock(b"from libtdb"),
        Err(Error::WouldBlock)
    ));
    assert_eq!(
        lib.cmd(&format!("chainunlock {}", hex(b"from libtdb"))),
        "ok"
    );
    let g = db.chainlock_nonblock(b"from libtdb").unwrap();
    g.store(b"from libtdb", b"2", tdb::StoreMode::Replace)
        .unwrap();
    drop(g);
    assert_eq!(lib.fetch(b"from libtdb").unwrap(), b"2");
    lib.close();
}
