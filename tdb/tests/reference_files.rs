//! Files written by the reference libtdb / CTDB 4.17 read back identically.

mod common;

use common::*;
use tdb::{HashKind, OpenOptions, StoreMode};

const FILES: &[&str] = &[
    "plain-100.tdb",
    "cap_pers.tdb.0",
    "cap_vol.tdb.0",
    "cap_vol.tdb.2",
    "g_lock.tdb.0",
];

#[test]
fn reference_files_dump_identically() {
    let refdir = reference_dir();
    let tmp = tempfile::tempdir().unwrap();
    for name in FILES {
        let gz = refdir.join(format!("{name}.gz"));
        let expected = std::fs::read_to_string(refdir.join(format!("{name}.tdbdump")))
            .unwrap_or_else(|e| panic!("{name}.tdbdump: {e}"));
        let path = gunzip(&gz, tmp.path());
        // Read-only, like tdbdump.
        let db = OpenOptions::new().read_only(true).open(&path).unwrap();
        assert_eq!(dump(&db), expected, "{name}: read-only dump differs");
        db.check().unwrap_or_else(|e| panic!("{name}: check: {e}"));
        drop(db);
        // Read-write with locking (mutexes for the volatile ones).
        let db = OpenOptions::new().open(&path).unwrap();
        assert_eq!(dump(&db), expected, "{name}: dump differs");
        db.check().unwrap();
        assert_eq!(
            db.record_count().unwrap(),
            expected.matches("\n}\n").count()
        );
    }
}

#[test]
fn reference_file_properties() {
    let refdir = reference_dir();
    let tmp = tempfile::tempdir().unwrap();
    let p = gunzip(&refdir.join("plain-100.tdb.gz"), tmp.path());
    let db = OpenOptions::new().open(&p).unwrap();
    assert_eq!(db.hash_kind(), HashKind::Default);
    assert_eq!(db.hash_size(), 131);
    assert!(!db.uses_mutexes());
    for i in 0..100 {
        let k = format!("k{i:03}");
        let v = db.fetch(k.as_bytes()).unwrap().unwrap();
        assert_eq!(v, format!("v{i:03}").as_bytes());
    }
    drop(db);

    let p = gunzip(&refdir.join("cap_vol.tdb.0.gz"), tmp.path());
    let db = OpenOptions::new().open(&p).unwrap();
    assert_eq!(db.hash_kind(), HashKind::Jenkins);
    assert_eq!(db.hash_size(), 100_001);
    assert!(db.uses_mutexes());
    let v = db.fetch(b"key0").unwrap().unwrap();
    assert!(v.ends_with(b"val0-moved"));
    // Writable, and libtdb reads our change.
    db.store(b"key9", b"from rust", StoreMode::Insert).unwrap();
    drop(db);
    let out = tdbdump(&p);
    assert!(
        out.contains("key(4) = \"key9\"\ndata(9) = \"from rust\""),
        "{out}"
    );
}
