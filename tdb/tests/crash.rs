//! Crash safety: a child process running transactions is killed (SIGKILL)
//! at random points, many times, many of them inside commit. Afterwards the
//! file must open consistently, in this engine and in libtdb, with every
//! transaction whose commit returned present and no partial transaction.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use tdb::{OpenOptions, StoreMode, Tdb, flags};

const CHILD_ENV: &str = "TDB_CRASH_CHILD";
const KEYS: u32 = 40;

type State = BTreeMap<Vec<u8>, Vec<u8>>;

fn value(t: u64, j: u32) -> Vec<u8> {
    let mut v = format!("{t}:{j}:").into_bytes();
    let pad = ((t * 7 + j as u64 * 13) % 700) as usize;
    v.resize(v.len() + pad, b'a' + (t % 26) as u8);
    v
}

/// The database contents after transaction `t`.
fn state(t: u64) -> State {
    let mut s = State::new();
    for j in 0..KEYS {
        s.insert(format!("k{j}").into_bytes(), value(t, j));
    }
    s.insert(b"counter".to_vec(), t.to_string().into_bytes());
    for x in t.saturating_sub(9)..=t {
        if x > 0 && x % 2 == 0 {
            s.insert(
                format!("e{x}").into_bytes(),
                vec![x as u8; (x % 97) as usize * 40],
            );
        }
    }
    s
}

/// Transaction `t`: turns state(t-1) into state(t).
fn apply(db: &Tdb, t: u64) {
    let tx = db.transaction_start().unwrap();
    for j in 0..KEYS {
        tx.store(format!("k{j}").as_bytes(), &value(t, j), StoreMode::Replace)
            .unwrap();
    }
    tx.store(b"counter", t.to_string().as_bytes(), StoreMode::Replace)
        .unwrap();
    if t.is_multiple_of(2) {
        tx.store(
            format!("e{t}").as_bytes(),
            &vec![t as u8; (t % 97) as usize * 40],
            StoreMode::Insert,
        )
        .unwrap();
    }
    if t > 10 && t.is_multiple_of(2) {
        tx.delete(format!("e{}", t - 10).as_bytes()).unwrap();
    }
    tx.commit().unwrap();
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Fcntl,
    FcntlSync,
    Mutex,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Fcntl => "fcntl",
            Mode::FcntlSync => "fcntl-sync",
            Mode::Mutex => "mutex",
        }
    }
    fn parse(s: &str) -> Mode {
        match s {
            "fcntl" => Mode::Fcntl,
            "fcntl-sync" => Mode::FcntlSync,
            _ => Mode::Mutex,
        }
    }
    fn options(self) -> OpenOptions {
        let mut o = OpenOptions::new();
        o.hash_size(61);
        match self {
            Mode::Fcntl => o.no_sync(true),
            Mode::FcntlSync => &mut o,
            Mode::Mutex => o.mutex_locking(true).no_sync(true),
        };
        o
    }
    fn libtdb_flags(self) -> u32 {
        match self {
            Mode::Mutex => flags::MUTEX_LOCKING | flags::INCOMPATIBLE_HASH | flags::NOSYNC,
            _ => flags::NOSYNC,
        }
    }
}

/// The child side: open, optionally arm a crash point, run transactions.
#[test]
fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let (path, mode, start, point) = (
        parts[0],
        Mode::parse(parts[1]),
        parts[2].parse::<u64>().unwrap(),
        parts[3].parse::<u32>().unwrap(),
    );
    let db = mode.options().open(path).unwrap();
    println!("@@open");
    tdb::testing::crash_at_point(point);
    // Runs until killed (by the parent or by the armed crash point).
    for t in start..start + 100_000 {
        apply(&db, t);
        println!("@@committed {t}");
    }
    println!("@@done");
}

/// Which transaction's state the database holds, checking it is exactly one.
fn current(db: &Tdb) -> u64 {
    let mut got = State::new();
    for kv in db.iter() {
        let (k, v) = kv.unwrap();
        got.insert(k, v);
    }
    let t: u64 = std::str::from_utf8(&got[&b"counter"[..]])
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        got == state(t),
        "database is not the state of a whole transaction (counter {t})"
    );
    t
}

fn verify_with_libtdb(path: &Path, mode: Mode) -> u64 {
    let mut lib = LibTdb::open(path, 0, mode.libtdb_flags());
    let got: State = lib.items().into_iter().collect();
    let t: u64 = std::str::from_utf8(&got[&b"counter"[..]])
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        got == state(t),
        "libtdb sees a partial transaction (counter {t})"
    );
    lib.store(b"libtdb was here", b"1");
    assert!(lib.delete(b"libtdb was here"));
    lib.close();
    t
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Does the file (not open here) hold a valid recovery record?
fn needs_recovery_raw(path: &Path) -> bool {
    let b = std::fs::read(path).unwrap();
    let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap());
    let feature = u32_at(40) == 0x0bad_1a52 && u32_at(60) & 1 != 0;
    let base = if feature { u32_at(64) as usize } else { 0 };
    let head = u32_at(base + 44) as usize;
    head != 0 && u32_at(base + head + 20) == 0xf53b_c0e7
}

/// One run: start a child at the current state, kill it somewhere, check.
/// Returns whether the killed child left a commit to roll back.
fn one_round(dir: &Path, path: &Path, mode: Mode, rng: &mut Rng, round: u32) -> bool {
    let before = {
        let db = mode.options().open(path).unwrap();
        db.check().unwrap();
        current(&db)
    };
    // Either a crash point chosen at random inside the commit code (each
    // commit passes several), or a SIGKILL at a random moment.
    let by_point = round.is_multiple_of(2);
    let point = if by_point {
        1 + rng.below(40) as u32
    } else {
        0
    };
    let spec = format!(
        "{}|{}|{}|{}",
        path.display(),
        mode.name(),
        before + 1,
        point
    );
    let mut child = spawn_child("crash_child", &[(CHILD_ENV, spec)]);
    let mut lines = ChildLines::new(&mut child);
    assert_eq!(lines.next_line().as_deref(), Some("open"));
    let mut acked = before;
    if by_point {
        while let Some(l) = lines.next_line() {
            if let Some(t) = l.strip_prefix("committed ") {
                acked = t.parse().unwrap();
            }
        }
    } else {
        let wait_for = rng.below(3);
        while acked < before + wait_for {
            let l = lines.next_line().expect("child died unexpectedly");
            acked = l.strip_prefix("committed ").unwrap().parse().unwrap();
        }
        // A random moment within the next few commits.
        let spin = Duration::from_micros(rng.below(3000));
        let t0 = Instant::now();
        while t0.elapsed() < spin {
            std::hint::spin_loop();
        }
        sigkill(&child);
        while let Some(l) = lines.next_line() {
            if let Some(t) = l.strip_prefix("committed ") {
                acked = t.parse().unwrap();
            }
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "child should have been killed");

    // Check copies with both engines: each runs its own recovery.
    let a = dir.join("copy-ours.tdb");
    let b = dir.join("copy-libtdb.tdb");
    std::fs::copy(path, &a).unwrap();
    std::fs::copy(path, &b).unwrap();
    let rolled_back = needs_recovery_raw(&a);
    let ours = {
        let db = mode
            .options()
            .open(&a)
            .unwrap_or_else(|e| panic!("round {round}: open after the crash: {e}"));
        db.check()
            .unwrap_or_else(|e| panic!("round {round}: check after the crash: {e}"));
        current(&db)
    };
    let theirs = verify_with_libtdb(&b, mode);
    assert!(
        ours == acked || ours == acked + 1,
        "round {round}: acked {acked}, found {ours}"
    );
    assert_eq!(
        ours, theirs,
        "round {round}: engines disagree after recovery"
    );
    rolled_back
}

fn crash_rounds(mode: Mode, rounds: u32, seed: u64) {
    require_python_tdb();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.tdb");
    {
        let db = mode.options().create(true).open(&path).unwrap();
        let tx = db.transaction_start().unwrap();
        for (k, v) in state(0) {
            tx.store(&k, &v, StoreMode::Insert).unwrap();
        }
        tx.commit().unwrap();
    }
    let mut rng = Rng(seed);
    let mut recoveries = 0;
    for round in 0..rounds {
        if one_round(dir.path(), &path, mode, &mut rng, round) {
            recoveries += 1;
        }
    }
    eprintln!("{mode:?}: {rounds} kills, {recoveries} left an interrupted commit to roll back");
    // The crash points guarantee some kills land between setting and
    // clearing the recovery magic.
    assert!(
        recoveries >= rounds / 8,
        "only {recoveries} rollbacks in {rounds} rounds"
    );
}

/// Every crash point of a database's first commit (the one that has to
/// create the recovery area), deterministically, in both locking modes.
#[test]
fn crash_at_each_point_of_first_commit() {
    require_python_tdb();
    for mode in [Mode::Fcntl, Mode::Mutex] {
        for point in 1..=14 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("first.tdb");
            {
                // No transaction yet: no recovery area.
                let db = mode.options().create(true).open(&path).unwrap();
                for (k, v) in state(0) {
                    db.store(&k, &v, StoreMode::Insert).unwrap();
                }
            }
            let spec = format!("{}|{}|1|{point}", path.display(), mode.name());
            let mut child = spawn_child("crash_child", &[(CHILD_ENV, spec)]);
            let mut lines = ChildLines::new(&mut child);
            let mut acked = 0;
            while let Some(l) = lines.next_line() {
                if let Some(t) = l.strip_prefix("committed ") {
                    acked = t.parse().unwrap();
                }
            }
            assert!(!child.wait().unwrap().success());
            let b = dir.path().join("copy.tdb");
            std::fs::copy(&path, &b).unwrap();
            let ours = {
                let db = mode.options().open(&path).unwrap();
                db.check()
                    .unwrap_or_else(|e| panic!("{mode:?} point {point}: check: {e}"));
                current(&db)
            };
            let theirs = verify_with_libtdb(&b, mode);
            assert!(ours == acked || ours == acked + 1, "{mode:?} point {point}");
            assert_eq!(ours, theirs, "{mode:?} point {point}");
        }
    }
}

#[test]
fn crash_during_commit_fcntl() {
    crash_rounds(Mode::Fcntl, 40, 0x9e37_79b9);
}

#[test]
fn crash_during_commit_fcntl_with_sync() {
    crash_rounds(Mode::FcntlSync, 8, 0x1234_5678);
}

#[test]
fn crash_during_commit_mutex() {
    crash_rounds(Mode::Mutex, 40, 0xdead_beef);
}

/// The parent keeps the database open (mutex mode) while the child dies
/// inside a commit holding the all-record mutex: the parent's next access
/// must neither hang nor see a partial transaction.
#[test]
fn crash_while_another_process_has_it_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.tdb");
    let mode = Mode::Mutex;
    let db = mode.options().create(true).open(&path).unwrap();
    {
        let tx = db.transaction_start().unwrap();
        for (k, v) in state(0) {
            tx.store(&k, &v, StoreMode::Insert).unwrap();
        }
        tx.commit().unwrap();
    }
    let mut rng = Rng(42);
    for round in 0..10 {
        let before = current(&db);
        let point = 2 + rng.below(12) as u32;
        let spec = format!(
            "{}|{}|{}|{}",
            path.display(),
            mode.name(),
            before + 1,
            point
        );
        let mut child = spawn_child("crash_child", &[(CHILD_ENV, spec)]);
        let mut lines = ChildLines::new(&mut child);
        let mut acked = before;
        while let Some(l) = lines.next_line() {
            if let Some(t) = l.strip_prefix("committed ") {
                acked = t.parse().unwrap();
            }
        }
        child.wait().unwrap();
        let t0 = Instant::now();
        let now = current(&db);
        assert!(t0.elapsed() < Duration::from_secs(10));
        assert!(
            now == acked || now == acked + 1,
            "round {round}: acked {acked}, found {now}"
        );
        db.check().unwrap();
    }
}
