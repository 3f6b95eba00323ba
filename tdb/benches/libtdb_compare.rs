//! Side-by-side benchmark against the reference libtdb.
//!
//! `cargo bench -p tdb --bench libtdb_compare` builds a small C program
//! against libtdb (`gcc ... -ltdb`, from Debian's libtdb-dev) in a temporary
//! directory, runs the same workloads with it and with this crate, and
//! prints ops/s and the ratio ours/libtdb:
//!
//! * `lock1`: chain lock + fetch + store (same size) + unlock of one record,
//!   one process;
//! * `lock2`: the same with two processes hammering the same record (total
//!   rate from "go" until both are done; the record holds a counter that must
//!   end at exactly the number of cycles, proving mutual exclusion);
//! * `store1M` / `fetch1M`: one million distinct keys stored, then fetched
//!   (three fetch passes, the best counts).
//!
//! Each in fcntl mode and in mutex mode (robust mutexes, as CTDB opens
//! volatile databases). Hash size 100001, CTDB's default. Not a test: it
//! prints numbers and always succeeds unless something breaks.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use tdb::{OpenOptions, StoreMode, Tdb, flags};

const HASH_SIZE: u32 = 100_001;
const KEY: &[u8] = b"record-key";

const C_SOURCE: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>
#include <tdb.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int flags_for(int mutex) {
    return mutex ? (TDB_MUTEX_LOCKING | TDB_CLEAR_IF_FIRST | TDB_INCOMPATIBLE_HASH | TDB_NOSYNC)
                 : TDB_NOSYNC;
}

static struct tdb_context *open_db(const char *path, int mutex) {
    struct tdb_context *t = tdb_open(path, 100001, flags_for(mutex), O_RDWR | O_CREAT, 0600);
    if (!t) { perror("tdb_open"); exit(1); }
    return t;
}

static void put_record(struct tdb_context *t) {
    unsigned char v[40];
    memset(v, 0, sizeof(v));
    TDB_DATA key = { (unsigned char *)"record-key", 10 };
    TDB_DATA val = { v, sizeof(v) };
    if (tdb_store(t, key, val, TDB_REPLACE) != 0) { fprintf(stderr, "store\n"); exit(1); }
}

static void cycles(struct tdb_context *t, long n) {
    TDB_DATA key = { (unsigned char *)"record-key", 10 };
    for (long i = 0; i < n; i++) {
        if (tdb_chainlock(t, key) != 0) { fprintf(stderr, "chainlock\n"); exit(1); }
        TDB_DATA d = tdb_fetch(t, key);
        if (!d.dptr) { fprintf(stderr, "fetch\n"); exit(1); }
        unsigned long long c;
        memcpy(&c, d.dptr, 8);
        c++;
        memcpy(d.dptr, &c, 8);
        if (tdb_store(t, key, d, TDB_REPLACE) != 0) { fprintf(stderr, "store\n"); exit(1); }
        free(d.dptr);
        tdb_chainunlock(t, key);
    }
}

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage\n"); return 2; }
    const char *w = argv[1], *path = argv[2];
    long n = atol(argv[3]);
    int mutex = atoi(argv[4]);
    unlink(path);
    struct tdb_context *t = open_db(path, mutex);
    if (!strcmp(w, "lock1")) {
        put_record(t);
        double t0 = now();
        cycles(t, n);
        printf("%f\n", n / (now() - t0));
    } else if (!strcmp(w, "lock2")) {
        int go[2], res[2];
        put_record(t);
        if (pipe(go) || pipe(res)) { perror("pipe"); return 1; }
        pid_t pid = fork();
        if (pid == 0) {
            char c;
            if (tdb_reopen(t) != 0) { fprintf(stderr, "reopen\n"); _exit(1); }
            if (write(res[1], "r", 1) != 1) _exit(1);
            if (read(go[0], &c, 1) != 1) _exit(1);
            cycles(t, n);
            if (write(res[1], "d", 1) != 1) _exit(1);
            _exit(0);
        }
        char c;
        if (read(res[0], &c, 1) != 1) return 1;
        double t0 = now();
        if (write(go[1], "g", 1) != 1) return 1;
        cycles(t, n);
        if (read(res[0], &c, 1) != 1) return 1;
        double dt = now() - t0;
        waitpid(pid, NULL, 0);
        TDB_DATA key = { (unsigned char *)"record-key", 10 };
        TDB_DATA d = tdb_fetch(t, key);
        unsigned long long cnt;
        memcpy(&cnt, d.dptr, 8);
        if (cnt != (unsigned long long)(2 * n)) { fprintf(stderr, "lost updates\n"); return 1; }
        printf("%f\n", 2 * n / dt);
    } else if (!strcmp(w, "keys")) {
        char k[32];
        unsigned char v[40];
        memset(v, 'v', sizeof(v));
        double t0 = now();
        for (long i = 0; i < n; i++) {
            int l = snprintf(k, sizeof(k), "key-%08ld", i);
            TDB_DATA key = { (unsigned char *)k, l }, val = { v, sizeof(v) };
            if (tdb_store(t, key, val, TDB_INSERT) != 0) { fprintf(stderr, "store\n"); return 1; }
        }
        double t1 = now(), best = 0;
        for (int pass = 0; pass < 3; pass++) {
            double p0 = now();
            for (long i = 0; i < n; i++) {
                int l = snprintf(k, sizeof(k), "key-%08ld", i);
                TDB_DATA key = { (unsigned char *)k, l };
                TDB_DATA d = tdb_fetch(t, key);
                if (!d.dptr) { fprintf(stderr, "fetch\n"); return 1; }
                free(d.dptr);
            }
            double r = n / (now() - p0);
            if (r > best) best = r;
        }
        printf("%f %f\n", n / (t1 - t0), best);
    }
    tdb_close(t);
    return 0;
}
"#;

fn options(mutex: bool) -> OpenOptions {
    let mut o = OpenOptions::new();
    o.create(true).hash_size(HASH_SIZE);
    if mutex {
        o.tdb_flags(
            flags::MUTEX_LOCKING | flags::CLEAR_IF_FIRST | flags::INCOMPATIBLE_HASH | flags::NOSYNC,
        );
    } else {
        o.tdb_flags(flags::NOSYNC);
    }
    o
}

fn put_record(db: &Tdb) {
    db.store(KEY, &[0; 40], StoreMode::Replace).unwrap();
}

fn counter(d: &[u8]) -> u64 {
    u64::from_ne_bytes(d[..8].try_into().unwrap())
}

/// One cycle: lock the record's chain, fetch it, bump the counter in its
/// first 8 bytes, store it back (same size), unlock.
fn cycles(db: &Tdb, n: u64) {
    for _ in 0..n {
        let g = db.chainlock(KEY).unwrap();
        let mut d = g.fetch(KEY).unwrap().expect("record");
        let c = counter(&d) + 1;
        d[..8].copy_from_slice(&c.to_ne_bytes());
        g.store(KEY, &d, StoreMode::Replace).unwrap();
        drop(g);
    }
}

/// The same cycle through the record-lock API (hashes the key once) with a
/// reused buffer (no allocation).
fn cycles_record_api(db: &Tdb, n: u64) {
    let mut d = Vec::with_capacity(64);
    for _ in 0..n {
        let r = db.lock_record(KEY).unwrap();
        assert!(r.fetch_into(&mut d).unwrap());
        let c = counter(&d) + 1;
        d[..8].copy_from_slice(&c.to_ne_bytes());
        r.store(&d, StoreMode::Replace).unwrap();
        drop(r);
    }
}

fn ours_lock1(path: &Path, n: u64, mutex: bool, record_api: bool) -> f64 {
    let _ = std::fs::remove_file(path);
    let db = options(mutex).open(path).unwrap();
    put_record(&db);
    let t0 = Instant::now();
    if record_api {
        cycles_record_api(&db, n);
    } else {
        cycles(&db, n);
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    assert_eq!(counter(&db.fetch(KEY).unwrap().unwrap()), n);
    rate
}

fn ours_lock2(path: &Path, n: u64, mutex: bool) -> f64 {
    let _ = std::fs::remove_file(path);
    let db = options(mutex).open(path).unwrap();
    put_record(&db);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--child-lock2",
            &path.display().to_string(),
            &n.to_string(),
            &(mutex as u8).to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let mut stdin = child.stdin.take().unwrap();
    let t0 = Instant::now();
    writeln!(stdin, "go").unwrap();
    stdin.flush().unwrap();
    cycles(&db, n);
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "done");
    let dt = t0.elapsed().as_secs_f64();
    child.wait().unwrap();
    // Every increment of both processes must be there: the chain lock
    // really excluded the other process.
    let d = db.fetch(KEY).unwrap().unwrap();
    assert_eq!(counter(&d), 2 * n, "lost updates");
    2.0 * n as f64 / dt
}

fn child_lock2(args: &[String]) {
    let path = PathBuf::from(&args[0]);
    let n: u64 = args[1].parse().unwrap();
    let mutex = args[2] == "1";
    let db = options(mutex).open(&path).unwrap();
    println!("ready");
    let mut l = String::new();
    std::io::stdin().read_line(&mut l).unwrap();
    cycles(&db, n);
    println!("done");
}

fn ours_keys(path: &Path, n: u64, mutex: bool) -> (f64, f64) {
    let _ = std::fs::remove_file(path);
    let db = options(mutex).open(path).unwrap();
    let v = [b'v'; 40];
    // Keys are formatted into a reused buffer, as the C side does with
    // snprintf, so that the comparison measures the databases.
    let mut k = Vec::with_capacity(32);
    let t0 = Instant::now();
    for i in 0..n {
        k.clear();
        write!(k, "key-{i:08}").unwrap();
        db.store(&k, &v, StoreMode::Insert).unwrap();
    }
    let t1 = Instant::now();
    // Fetch everything three times, keep the best pass (as the C side).
    let mut best = 0f64;
    for _ in 0..3 {
        let p0 = Instant::now();
        for i in 0..n {
            k.clear();
            write!(k, "key-{i:08}").unwrap();
            db.fetch(&k).unwrap().expect("key");
        }
        best = best.max(n as f64 / p0.elapsed().as_secs_f64());
    }
    (n as f64 / (t1 - t0).as_secs_f64(), best)
}

fn build_c(dir: &Path) -> PathBuf {
    let src = dir.join("bench_libtdb.c");
    std::fs::write(&src, C_SOURCE).unwrap();
    let exe = dir.join("bench_libtdb");
    let out = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&exe)
        .arg(&src)
        .arg("-ltdb")
        .output()
        .expect("gcc (install gcc and libtdb-dev: scripts/install-deps.sh)");
    assert!(
        out.status.success(),
        "building the libtdb benchmark failed (is libtdb-dev installed?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

fn run_c(exe: &Path, w: &str, path: &Path, n: u64, mutex: bool) -> Vec<f64> {
    let out = Command::new(exe)
        .arg(w)
        .arg(path)
        .arg(n.to_string())
        .arg(if mutex { "1" } else { "0" })
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect()
}

/// Best of `reps` runs of each, alternating libtdb and ours so that a load
/// change on the (shared) machine hits both alike.
fn best2(
    reps: usize,
    mut theirs: impl FnMut() -> f64,
    mut ours: impl FnMut() -> f64,
) -> (f64, f64) {
    let (mut t, mut o) = (0.0f64, 0.0f64);
    for _ in 0..reps {
        t = t.max(theirs());
        o = o.max(ours());
    }
    (t, o)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child-lock2") {
        child_lock2(&args[1..]);
        return;
    }
    let quick = std::env::var_os("TDB_BENCH_QUICK").is_some();
    // TDB_BENCH_ONLY=lock1|lock2|keys and TDB_BENCH_MODE=fcntl|mutex restrict
    // the run to some rows.
    let only = std::env::var("TDB_BENCH_ONLY").ok();
    let want = |w: &str| only.as_deref().is_none_or(|o| o == w);
    let mode_only = std::env::var("TDB_BENCH_MODE").ok();
    let (n1, n2, nk, reps) = if quick {
        (100_000, 50_000, 100_000, 1)
    } else {
        (1_000_000, 500_000, 1_000_000, 5)
    };
    let dir = tempfile::tempdir().unwrap();
    let exe = build_c(dir.path());
    let p = dir.path().join("bench.tdb");

    println!("| workload | locking | libtdb ops/s | tdb-rs ops/s | ratio |");
    println!("|---|---|---:|---:|---:|");
    for mutex in [false, true] {
        let mode = if mutex { "mutex" } else { "fcntl" };
        if mode_only.as_deref().is_some_and(|m| m != mode) {
            continue;
        }
        let row = |name: &str, theirs: f64, ours: f64| {
            println!(
                "| {name} | {mode} | {:.0} | {:.0} | {:.2} |",
                theirs,
                ours,
                ours / theirs
            );
        };
        if want("lock1") {
            let (theirs, ours) = best2(
                reps,
                || run_c(&exe, "lock1", &p, n1, mutex)[0],
                || ours_lock1(&p, n1, mutex, false),
            );
            row("lock+fetch+store+unlock, 1 process", theirs, ours);
            let (theirs, ours) = best2(
                reps,
                || run_c(&exe, "lock1", &p, n1, mutex)[0],
                || ours_lock1(&p, n1, mutex, true),
            );
            row("the same, tdb-rs record-lock API", theirs, ours);
        }
        if want("lock2") {
            let (theirs, ours) = best2(
                reps,
                || run_c(&exe, "lock2", &p, n2, mutex)[0],
                || ours_lock2(&p, n2, mutex),
            );
            row("same record, 2 processes (total)", theirs, ours);
        }
        if !want("keys") {
            continue;
        }
        let mut ts = (0.0f64, 0.0f64);
        let mut os = (0.0f64, 0.0f64);
        for _ in 0..reps {
            let t = run_c(&exe, "keys", &p, nk, mutex);
            ts = (ts.0.max(t[0]), ts.1.max(t[1]));
            let o = ours_keys(&p, nk, mutex);
            os = (os.0.max(o.0), os.1.max(o.1));
        }
        row(&format!("store {} distinct keys", nk), ts.0, os.0);
        row(&format!("fetch {} distinct keys", nk), ts.1, os.1);
    }
}
