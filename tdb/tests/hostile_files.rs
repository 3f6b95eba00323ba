//! Damaged and deliberately crafted files: always an error value, never a
//! panic, a hang or an access outside the file.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use tdb::{Error, OpenOptions, StoreMode, Tdb};

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_ne_bytes(b[o..o + 4].try_into().unwrap())
}
fn put(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_ne_bytes());
}

/// Scratch space: memory-backed when available (these tests write many
/// files).
fn scratch() -> tempfile::TempDir {
    if Path::new("/dev/shm").is_dir()
        && let Ok(d) = tempfile::tempdir_in("/dev/shm")
    {
        return d;
    }
    tempfile::tempdir().unwrap()
}

/// A small valid database (hash size 7, a few records, free blocks).
fn sample_small(dir: &Path) -> Vec<u8> {
    let p = dir.join("small.tdb");
    {
        let db = OpenOptions::new()
            .create(true)
            .hash_size(7)
            .no_sync(true)
            .open(&p)
            .unwrap();
        for i in 0..20u32 {
            db.store(
                format!("key{i}").as_bytes(),
                &vec![i as u8; 30 + i as usize],
                StoreMode::Insert,
            )
            .unwrap();
        }
        db.delete(b"key3").unwrap();
        db.delete(b"key9").unwrap();
    }
    std::fs::read(&p).unwrap()
}

/// The same after a transaction: with a recovery area at the end.
fn sample(dir: &Path) -> Vec<u8> {
    let p = dir.join("sample.tdb");
    {
        let db = OpenOptions::new()
            .create(true)
            .hash_size(7)
            .no_sync(true)
            .open(&p)
            .unwrap();
        for i in 0..20u32 {
            db.store(
                format!("key{i}").as_bytes(),
                &vec![i as u8; 30 + i as usize],
                StoreMode::Insert,
            )
            .unwrap();
        }
        db.delete(b"key3").unwrap();
        let tx = db.transaction_start().unwrap();
        tx.store(b"tx", b"1", StoreMode::Insert).unwrap();
        tx.commit().unwrap();
    }
    std::fs::read(&p).unwrap()
}

fn write(dir: &Path, name: &str, b: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, b).unwrap();
    p
}

fn open(p: &Path) -> tdb::Result<Tdb> {
    OpenOptions::new().open(p)
}

fn walk(db: &Tdb) -> tdb::Result<usize> {
    db.traverse_read(|_, _| ControlFlow::Continue(()))
}

#[test]
fn header_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = sample(dir.path());

    let p = write(dir.path(), "empty", b"");
    assert!(matches!(open(&p), Err(Error::BadMagic)));
    let p = write(dir.path(), "short", &good[..100]);
    assert!(matches!(open(&p), Err(Error::Corrupt { .. })));
    let mut b = good.clone();
    b[0] = b'X';
    assert!(matches!(
        open(&write(dir.path(), "magic", &b)),
        Err(Error::BadMagic)
    ));
    let mut b = good.clone();
    put(&mut b, 32, 0x1234_5678);
    assert!(matches!(
        open(&write(dir.path(), "version", &b)),
        Err(Error::UnsupportedVersion(0x1234_5678))
    ));
    let mut b = good.clone();
    put(&mut b, 32, u32_at(&good, 32).swap_bytes());
    assert!(matches!(
        open(&write(dir.path(), "swapped", &b)),
        Err(Error::UnsupportedFeature(_))
    ));
    let mut b = good.clone();
    put(&mut b, 40, 0x0bad_1a52);
    put(&mut b, 60, 0x10);
    assert!(matches!(
        open(&write(dir.path(), "feature", &b)),
        Err(Error::UnsupportedFeature(_))
    ));
    let mut b = good.clone();
    put(&mut b, 40, 77);
    assert!(matches!(
        open(&write(dir.path(), "rwlocks", &b)),
        Err(Error::UnsupportedFeature(_))
    ));
    let mut b = good.clone();
    put(&mut b, 36, 0);
    assert!(matches!(
        open(&write(dir.path(), "hash0", &b)),
        Err(Error::Corrupt { .. })
    ));
    let mut b = good.clone();
    put(&mut b, 36, 1_000_000);
    assert!(matches!(
        open(&write(dir.path(), "hashbig", &b)),
        Err(Error::Corrupt { .. })
    ));
    let mut b = good.clone();
    put(&mut b, 36, u32::MAX);
    assert!(matches!(
        open(&write(dir.path(), "hashmax", &b)),
        Err(Error::Corrupt { .. })
    ));
    let mut b = good.clone();
    put(&mut b, 52, 1);
    assert!(matches!(
        open(&write(dir.path(), "hashfn", &b)),
        Err(Error::UnsupportedFeature(_))
    ));
    let mut b = good.clone();
    put(&mut b, 40, 0x0bad_1a52);
    put(&mut b, 60, 1);
    put(&mut b, 64, 8192);
    assert!(matches!(
        open(&write(dir.path(), "mutexsize", &b)),
        Err(Error::UnsupportedFeature(_))
    ));
    // Right size, but there is no second header behind the "mutex area".
    put(&mut b, 64, 4096);
    assert!(matches!(
        open(&write(dir.path(), "mutexarea", &b)),
        Err(Error::Corrupt { .. } | Error::BadMagic)
    ));
    // A recovery pointer beyond the end: refused at open (as libtdb does).
    let mut b = good.clone();
    put(&mut b, 44, 0x7fff_0000);
    assert!(matches!(
        open(&write(dir.path(), "recptr", &b)),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn lying_offsets_and_loops() {
    let dir = tempfile::tempdir().unwrap();
    let good = sample(dir.path());
    let hash_size = u32_at(&good, 36) as usize;
    // Find a non-empty chain and its first record.
    let (slot, first) = (0..hash_size)
        .map(|h| (172 + 4 * h, u32_at(&good, 172 + 4 * h) as usize))
        .find(|&(_, r)| r != 0)
        .unwrap();

    // Chain head beyond the end of the file.
    let mut b = good.clone();
    put(&mut b, slot, 0x00ff_fff0);
    let db = open(&write(dir.path(), "head", &b)).unwrap();
    assert!(matches!(walk(&db), Err(Error::Corrupt { .. })));
    assert!(db.check().is_err());

    // Record pointing at itself, and a two-record cycle.
    let mut b = good.clone();
    put(&mut b, first, first as u32);
    let db = open(&write(dir.path(), "self", &b)).unwrap();
    assert!(matches!(walk(&db), Err(Error::Corrupt { .. })));
    assert!(matches!(
        db.fetch(b"absent key"),
        Err(Error::Corrupt { .. }) | Ok(None)
    ));

    let mut b = good.clone();
    let mut prev = first;
    let mut cur = u32_at(&b, first) as usize;
    while cur != 0 && u32_at(&b, cur) != 0 {
        prev = cur;
        cur = u32_at(&b, cur) as usize;
    }
    let target = if cur != 0 { cur } else { prev };
    put(&mut b, target, first as u32);
    let p = write(dir.path(), "cycle", &b);
    let db = open(&p).unwrap();
    let r = walk(&db);
    assert!(r.is_err() || first == target, "cycle not detected: {r:?}");
    // Looking up a key of that chain that is not there must terminate.
    for i in 100..200 {
        let _ = db.fetch(format!("nope{i}").as_bytes());
    }
    drop(db);

    // Record lengths that overflow or exceed the file.
    let mut b = good.clone();
    put(&mut b, first + 4, u32::MAX - 3);
    let db = open(&write(dir.path(), "reclen", &b)).unwrap();
    assert!(matches!(walk(&db), Err(Error::Corrupt { .. })));
    let mut b = good.clone();
    put(&mut b, first + 8, u32::MAX);
    let db = open(&write(dir.path(), "keylen", &b)).unwrap();
    assert!(matches!(walk(&db), Err(Error::Corrupt { .. })));

    // Freelist pointing into the header, and into itself.
    let mut b = good.clone();
    put(&mut b, 168, 8);
    let db = open(&write(dir.path(), "free", &b)).unwrap();
    assert!(
        db.store(b"needs space", &[0u8; 5000], StoreMode::Insert)
            .is_err()
    );
    let mut b = good.clone();
    let f = u32_at(&good, 168) as usize;
    if f != 0 {
        put(&mut b, f, f as u32);
        let db = open(&write(dir.path(), "freeloop", &b)).unwrap();
        assert!(
            db.store(b"needs space", &[0u8; 50_000], StoreMode::Insert)
                .is_err()
        );
        assert!(db.check().is_err());
    }

    // Truncated in the middle of the records.
    let db = open(&write(dir.path(), "trunc", &good[..good.len() / 2])).unwrap();
    let _ = walk(&db);
    assert!(db.check().is_err());

    // A valid-looking recovery record whose entries lie.
    let mut b = good.clone();
    let head = b.len();
    b.extend_from_slice(&[0u8; 64]);
    put(&mut b, 44, head as u32);
    put(&mut b, head + 4, 40); // rec_len
    put(&mut b, head + 12, 20); // data_len
    put(&mut b, head + 20, 0xf53b_c0e7);
    put(&mut b, head + 24, 0x7fff_ffff); // offset far beyond the file
    put(&mut b, head + 28, 8);
    assert!(matches!(
        open(&write(dir.path(), "rec", &b)),
        Err(Error::Corrupt { .. })
    ));
    put(&mut b, head + 28, 0x7fff_ffff); // length beyond the data
    assert!(matches!(
        open(&write(dir.path(), "rec2", &b)),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn exercise_survives_every_single_word_corruption() {
    let dir = scratch();
    let p = dir.path().join("w.tdb");
    let values = [
        0u32,
        1,
        0x7fff_ffff,
        u32::MAX,
        172,
        4096,
        0x2601_1999,
        0xfee1_dead,
    ];
    // Every word of a small database (header, hash table, records, free
    // space), each replaced by an awkward value.
    let small = sample_small(dir.path());
    for off in (0..small.len())
        .step_by(4)
        .filter(|o| *o < 4096 || o % 52 == 0)
    {
        let mut b = small.clone();
        put(&mut b, off, values[(off / 4) % values.len()]);
        std::fs::write(&p, &b).unwrap();
        tdb::testing::exercise(&p);
    }
    // The header and the recovery record of one that had a transaction.
    let big = sample(dir.path());
    let head = u32_at(&big, 44) as usize;
    let words = (0..168).chain(head..head + 64).step_by(4);
    for (i, off) in words.enumerate() {
        for v in [values[i % values.len()], 0xf53b_c0e7] {
            let mut b = big.clone();
            put(&mut b, off, v);
            std::fs::write(&p, &b).unwrap();
            tdb::testing::exercise(&p);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn exercise_survives_random_damage(
        edits in proptest::collection::vec((any::<u16>(), any::<u32>()), 1..8),
        cut in any::<u16>(),
    ) {
        let dir = scratch();
        let mut b = if cut % 3 == 0 { sample(dir.path()) } else { sample_small(dir.path()) };
        for (at, v) in edits {
            let at = (at as usize % (b.len() - 4)) & !3;
            put(&mut b, at, v);
        }
        if cut % 4 == 0 {
            b.truncate((cut as usize) % b.len());
        }
        let p = dir.path().join("r.tdb");
        std::fs::write(&p, &b).unwrap();
        tdb::testing::exercise(&p);
    }

    #[test]
    fn exercise_survives_garbage(b in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let dir = scratch();
        let mut b = b;
        if b.len() >= 10 {
            b[..10].copy_from_slice(b"TDB file\n\0");
        }
        let p = dir.path().join("g.tdb");
        std::fs::write(&p, &b).unwrap();
        tdb::testing::exercise(&p);
    }
}
