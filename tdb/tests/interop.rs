//! Data interoperability with the reference libtdb: tdbdump, python's tdb
//! module, and libtdb itself (through a python driver) working on the same
//! file as this engine.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use tdb::{OpenOptions, StoreMode, Tdb, flags};

/// A deterministic pseudo-random generator (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max as u64 + 1) as usize;
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Write a varied database with our engine.
fn write_ours(path: &Path, o: &OpenOptions, seed: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut r = Rng(seed);
    let db = o.open(path).unwrap();
    let mut model = BTreeMap::new();
    for i in 0..600 {
        let key = if i % 7 == 0 {
            format!("text key {i} \"quoted\" \\ backslash").into_bytes()
        } else {
            let mut k = r.bytes(40);
            k.push(i as u8);
            k
        };
        let val = r.bytes(if i % 50 == 0 { 20_000 } else { 300 });
        db.store(&key, &val, StoreMode::Replace).unwrap();
        model.insert(key, val);
    }
    let keys: Vec<_> = model.keys().cloned().collect();
    for (i, k) in keys.iter().enumerate() {
        match i % 4 {
            0 => {
                db.delete(k).unwrap();
                model.remove(k);
            }
            1 => {
                let v = r.bytes(500);
                db.store(k, &v, StoreMode::Modify).unwrap();
                model.insert(k.clone(), v);
            }
            _ => {}
        }
    }
    let tx = db.transaction_start().unwrap();
    for i in 0..100u32 {
        let k = format!("tx-{i}").into_bytes();
        tx.store(&k, &i.to_le_bytes(), StoreMode::Insert).unwrap();
        model.insert(k, i.to_le_bytes().to_vec());
    }
    tx.commit().unwrap();
    db.check().unwrap();
    model
}

fn check_with_libtdb(path: &Path, model: &BTreeMap<Vec<u8>, Vec<u8>>, libtdb_flags: u32) {
    // tdbdump prints exactly what our traversal prints, in the same order.
    let db = OpenOptions::new().read_only(true).open(path).unwrap();
    let ours = dump(&db);
    drop(db);
    assert_eq!(tdbdump(path), ours, "tdbdump differs from our dump");

    // libtdb sees the same records and passes its own consistency check.
    let mut lib = LibTdb::open(path, 0, libtdb_flags);
    let items: BTreeMap<_, _> = lib.items().into_iter().collect();
    assert_eq!(&items, model);
    assert_eq!(lib.cmd("check"), "ok", "libtdb's tdb_check failed");
    lib.close();
}

#[test]
fn files_we_write_read_back_in_libtdb() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, OpenOptions, u32)> = vec![
        ("default.tdb", OpenOptions::new().create(true).clone(), 0),
        (
            "jenkins.tdb",
            OpenOptions::new()
                .create(true)
                .hash_size(10007)
                .incompatible_hash(true)
                .clone(),
            flags::INCOMPATIBLE_HASH,
        ),
        (
            "mutex.tdb",
            OpenOptions::new()
                .create(true)
                .hash_size(1009)
                .tdb_flags(flags::CLEAR_IF_FIRST | flags::MUTEX_LOCKING | flags::NOSYNC)
                .clone(),
            flags::MUTEX_LOCKING | flags::INCOMPATIBLE_HASH,
        ),
        (
            "tiny-hash.tdb",
            OpenOptions::new().create(true).hash_size(1).clone(),
            0,
        ),
    ];
    for (i, (name, o, lflags)) in cases.into_iter().enumerate() {
        let path = dir.path().join(name);
        let model = write_ours(&path, &o, 1000 + i as u64);
        check_with_libtdb(&path, &model, lflags);
    }
}

#[test]
fn python_tdb_module_reads_our_file() {
    require_python_tdb();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("py.tdb");
    let o = OpenOptions::new().create(true).clone();
    let model = write_ours(&path, &o, 77);
    let script = format!(
        "import tdb,sys\n\
         t=tdb.Tdb('{}')\n\
         for k in sorted(t.keys()):\n    sys.stdout.write(k.hex()+':'+t[k].hex()+'\\n')\n",
        path.display()
    );
    let out = std::process::Command::new(PYTHON)
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: BTreeMap<Vec<u8>, Vec<u8>> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (unhex(k), unhex(v))
        })
        .collect();
    assert_eq!(got, model);
}

#[test]
fn files_libtdb_writes_read_identically_here() {
    let dir = tempfile::tempdir().unwrap();
    for (name, lflags) in [
        ("lib-default.tdb", 0),
        ("lib-jenkins.tdb", flags::INCOMPATIBLE_HASH),
        (
            "lib-mutex.tdb",
            flags::MUTEX_LOCKING | flags::CLEAR_IF_FIRST | flags::INCOMPATIBLE_HASH,
        ),
    ] {
        let path = dir.path().join(name);
        let mut lib = LibTdb::open(&path, 257, lflags);
        let mut r = Rng(9);
        let mut model = BTreeMap::new();
        for i in 0..400 {
            let k = [r.bytes(30), vec![i as u8, (i >> 8) as u8]].concat();
            let v = r.bytes(if i % 40 == 0 { 10_000 } else { 200 });
            lib.store(&k, &v);
            model.insert(k, v);
        }
        let keys: Vec<_> = model.keys().cloned().collect();
        for k in keys.iter().step_by(3) {
            assert!(lib.delete(k));
            model.remove(k);
        }
        assert_eq!(lib.cmd("transaction_start"), "ok");
        lib.store(b"in a transaction", b"yes");
        model.insert(b"in a transaction".to_vec(), b"yes".to_vec());
        assert_eq!(lib.cmd("transaction_commit"), "ok");
        lib.close();

        let expected = tdbdump(&path);
        let db = OpenOptions::new().read_only(true).open(&path).unwrap();
        assert_eq!(dump(&db), expected, "{name}");
        drop(db);
        let db = Tdb::open_existing(&path).unwrap();
        db.check().unwrap();
        let mut got = BTreeMap::new();
        for kv in db.iter() {
            let (k, v) = kv.unwrap();
            got.insert(k, v);
        }
        assert_eq!(got, model, "{name}");
        for (k, v) in &model {
            assert_eq!(db.fetch(k).unwrap().as_ref(), Some(v));
        }
    }
}

/// Both engines open the same file at the same time and take turns: a
/// thousand random operations each, checked against a model throughout.
fn alternate(path: &Path, ours: &OpenOptions, lflags: u32, seed: u64) {
    let db = ours.open(path).unwrap();
    let mut lib = LibTdb::open(path, 0, lflags);
    let mut r = Rng(seed);
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let key = |r: &mut Rng| format!("key{}", r.below(150)).into_bytes();
    for step in 0..2000 {
        let mine = step % 2 == 0;
        let k = key(&mut r);
        match r.below(10) {
            0..=4 => {
                let big = r.below(20) == 0;
                let v = r.bytes(if big { 5000 } else { 120 });
                if mine {
                    db.store(&k, &v, StoreMode::Replace).unwrap();
                } else {
                    lib.store(&k, &v);
                }
                model.insert(k, v);
            }
            5..=6 => {
                let had = model.remove(&k).is_some();
                let did = if mine {
                    db.delete(&k).is_ok()
                } else {
                    lib.delete(&k)
                };
                assert_eq!(had, did, "step {step}: delete of existing key");
            }
            7 if mine => {
                // A small transaction of our own.
                let tx = db.transaction_start().unwrap();
                for _ in 0..3 {
                    let k = key(&mut r);
                    let v = r.bytes(64);
                    tx.store(&k, &v, StoreMode::Replace).unwrap();
                    model.insert(k, v);
                }
                tx.commit().unwrap();
            }
            7 => {
                assert_eq!(lib.cmd("transaction_start"), "ok");
                for _ in 0..3 {
                    let k = key(&mut r);
                    let v = r.bytes(64);
                    lib.store(&k, &v);
                    model.insert(k, v);
                }
                assert_eq!(lib.cmd("transaction_commit"), "ok");
            }
            _ => {
                let got = if mine {
                    db.fetch(&k).unwrap()
                } else {
                    lib.fetch(&k)
                };
                assert_eq!(got.as_ref(), model.get(&k), "step {step}: fetch");
            }
        }
        if step % 250 == 249 {
            let got: BTreeMap<_, _> = db.iter().map(|kv| kv.unwrap()).collect();
            assert_eq!(got, model, "step {step}: our view");
            let got: BTreeMap<_, _> = lib.items().into_iter().collect();
            assert_eq!(got, model, "step {step}: libtdb's view");
        }
    }
    db.check().unwrap();
    assert_eq!(lib.cmd("check"), "ok");
    lib.close();
    drop(db);
    assert_eq!(
        tdbdump(path),
        dump(&OpenOptions::new().read_only(true).open(path).unwrap())
    );
}

#[test]
fn alternating_writers_fcntl() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alt.tdb");
    Tdb::create(&path, 31).unwrap();
    alternate(&path, &OpenOptions::new(), 0, 5);
}

#[test]
fn alternating_writers_mutex_volatile_style() {
    // As CTDB opens volatile databases.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("altm.tdb");
    let f = flags::CLEAR_IF_FIRST
        | flags::INCOMPATIBLE_HASH
        | flags::MUTEX_LOCKING
        | flags::NOSYNC
        | flags::DISALLOW_NESTING;
    let o = OpenOptions::new()
        .create(true)
        .hash_size(97)
        .tdb_flags(f)
        .max_dead(5)
        .clone();
    alternate(&path, &o, f, 6);
}

/// Sequence numbers as smbd and ctdbd share them on a volatile database:
/// libtdb's opener asks for `TDB_SEQNUM` at open, ours turns it on later
/// (`tdb_enable_seqnum`); each side's stores, deletes and explicit bumps
/// move the one header word the other reads, with and without mutexes.
#[test]
fn sequence_numbers_shared_with_libtdb() {
    for mutexes in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seq.tdb");
        let mut f = flags::INCOMPATIBLE_HASH | flags::NOSYNC | flags::DISALLOW_NESTING;
        if mutexes {
            f |= flags::MUTEX_LOCKING;
        }
        let ours = OpenOptions::new()
            .create(true)
            .hash_size(97)
            .tdb_flags(f)
            .open(&path)
            .unwrap();
        let mut lib = LibTdb::open(&path, 97, f | flags::SEQNUM);
        let seq = |lib: &mut LibTdb| lib.cmd("get_seqnum").parse::<u32>().unwrap();
        assert_eq!(
            lib.cmd("get_flags").parse::<u32>().unwrap() & flags::SEQNUM,
            flags::SEQNUM
        );
        let s0 = ours.seqnum().unwrap();
        assert_eq!(seq(&mut lib), s0);

        // Without TDB_SEQNUM our writes leave the number alone.
        assert!(!ours.seqnum_enabled());
        ours.store(b"a", b"1", StoreMode::Insert).unwrap();
        ours.increment_seqnum().unwrap();
        assert_eq!(seq(&mut lib), s0, "mutexes={mutexes}");

        // libtdb's writes bump it, and we see them.
        lib.store(b"b", b"2");
        assert!(lib.delete(b"b"));
        assert_eq!(ours.seqnum().unwrap(), s0 + 2, "mutexes={mutexes}");

        // Turned on here, our stores, deletes and bumps count too.
        ours.enable_seqnum();
        assert!(ours.seqnum_enabled());
        ours.store(b"a", b"3", StoreMode::Replace).unwrap();
        ours.delete(b"a").unwrap();
        ours.increment_seqnum().unwrap();
        assert_eq!(seq(&mut lib), s0 + 5, "mutexes={mutexes}");
        lib.cmd("increment_seqnum_nonblock");
        assert_eq!(ours.seqnum().unwrap(), s0 + 6, "mutexes={mutexes}");
        lib.close();
    }
}
