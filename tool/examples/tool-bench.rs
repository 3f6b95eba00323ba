//! Benchmark (not a test): the reference `ctdb` tool against ours on the
//! record-heavy commands, on one live 3-node cluster of the reference CTDB.
//!
//! * `ptrans` of N records (default 100,000) into a fresh persistent
//!   database;
//! * `backupdb` of a persistent database of N records;
//! * `restoredb` of that backup.
//!
//! Runs alternate between the two tools (the order flips every round) on
//! the same cluster; each run is checked (records readable afterwards,
//! backups of equal size). Prints a Markdown table of median times and the
//! ratio reference/ours.
//!
//! `restoredb`, like `recover` and `wipedb`, first waits for the leader's
//! broadcast (once a second) to learn the cluster generation: 0 to 1 s of
//! each run, in both tools, that says nothing about either. Back-to-back
//! runs would phase-lock onto the broadcast and both wait nearly the full
//! second; a pseudo-random pause before each run spreads the wait evenly,
//! and restores run three times as often to steady the medians.
//!
//! ```sh
//! cargo build --release -p ctdb-tool
//! cargo run --release -p ctdb-tool --example tool-bench -- [--records N] [--rounds R]
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ctdb_tests::{Cluster, ClusterOptions, Daemon, our_bin, require_reference};

const REFERENCE_TOOL: &str = "/usr/bin/ctdb";
/// The node the tools talk to.
const NODE: usize = 1;

struct Args {
    records: usize,
    rounds: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        records: 100_000,
        rounds: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut num = |what: &str| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{what} needs a number"))
        };
        match x.as_str() {
            "--records" => a.records = num("--records"),
            "--rounds" => a.rounds = num("--rounds").max(1),
            other => panic!("unknown argument {other}; use --records N --rounds R"),
        }
    }
    a
}

fn key(i: usize) -> String {
    format!("key{i:07}")
}

fn value(i: usize) -> String {
    format!("value-{i:07}-0123456789abcdef")
}

/// A tool under test.
struct Tool {
    name: &'static str,
    path: PathBuf,
}

/// Runs `tool ARGS` against node 1 with `stdin`; returns the wall time.
/// Panics (with the output) if it fails.
fn timed(c: &Cluster, tool: &Path, args: &[&str], stdin: Option<&Path>) -> Duration {
    let mut cmd = Command::new(tool);
    cmd.args(args)
        .env("CTDB_TEST_MODE", "yes")
        .env("CTDB_BASE", c.base(NODE))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match stdin {
        Some(p) => cmd.stdin(std::fs::File::open(p).unwrap()),
        None => cmd.stdin(Stdio::null()),
    };
    let t0 = Instant::now();
    let out = cmd.output().unwrap();
    let dt = t0.elapsed();
    assert!(
        out.status.success(),
        "{} {}: {}\n{}{}",
        tool.display(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    dt
}

/// The reference tool's stdout for `args` on node 1.
fn reference(c: &Cluster, args: &[&str]) -> String {
    let out = c.tool(NODE, args);
    assert!(
        out.status.success(),
        "ctdb {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The database holds the first and the last record.
fn check_records(c: &Cluster, db: &str, n: usize) {
    for i in [0, n - 1] {
        let got = reference(c, &["pfetch", db, &key(i)]);
        assert_eq!(got.trim_end(), value(i), "{db}: record {i}");
    }
}

/// A pause of 0 to 1 s, different each time (see the module comment).
fn jitter() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let x = STATE.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed) ^ seed;
    let x = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
    std::thread::sleep(Duration::from_millis((x >> 33) % 1000));
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Times of one operation, per tool.
#[derive(Default)]
struct Times {
    reference: Vec<Duration>,
    ours: Vec<Duration>,
}

impl Times {
    fn push(&mut self, tool: &Tool, d: Duration) {
        if tool.name == "reference" {
            self.reference.push(d);
        } else {
            self.ours.push(d);
        }
        eprintln!("  {:<9} {:8.3} s", tool.name, d.as_secs_f64());
    }
}

fn main() {
    let args = parse_args();
    require_reference();
    let ours = our_bin("ctdb");
    let tools = [
        Tool {
            name: "reference",
            path: PathBuf::from(REFERENCE_TOOL),
        },
        Tool {
            name: "ours",
            path: ours,
        },
    ];
    let n = args.records;
    eprintln!("starting a 3-node reference cluster");
    let c = Cluster::start(ClusterOptions::new(Daemon::Reference, 3));

    let input = c.dir().join("ptrans.input");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        for i in 0..n {
            writeln!(f, "\"{}\" \"{}\"", key(i), value(i)).unwrap();
        }
    }

    // Round r runs the reference first when r is even, ours first when odd.
    let order = |r: usize| -> [&Tool; 2] {
        if r & 1 == 0 {
            [&tools[0], &tools[1]]
        } else {
            [&tools[1], &tools[0]]
        }
    };

    let mut ptrans = Times::default();
    for r in 0..args.rounds {
        for t in order(r) {
            let db = format!("ptrans_{}_{r}.tdb", t.name);
            reference(&c, &["attach", &db, "persistent"]);
            eprintln!("ptrans {n} records, round {r}");
            ptrans.push(t, timed(&c, &t.path, &["ptrans", &db], Some(&input)));
            check_records(&c, &db, n);
        }
    }

    // The database to back up: filled once (by our ptrans).
    let src = "backup_src.tdb";
    reference(&c, &["attach", src, "persistent"]);
    timed(&c, &tools[1].path, &["ptrans", src], Some(&input));
    check_records(&c, src, n);

    let mut backup = Times::default();
    let mut sizes = Vec::new();
    for r in 0..args.rounds {
        for t in order(r) {
            let file = c.dir().join(format!("backup.{}.{r}", t.name));
            let file_s = file.display().to_string();
            eprintln!("backupdb of {n} records, round {r}");
            backup.push(t, timed(&c, &t.path, &["backupdb", src, &file_s], None));
            sizes.push((t.name, std::fs::metadata(&file).unwrap().len()));
        }
    }
    assert!(
        sizes.windows(2).all(|w| w[0].1 == w[1].1),
        "backups differ in size: {sizes:?}"
    );

    let mut restore = Times::default();
    let file = c.dir().join("backup.reference.0").display().to_string();
    for r in 0..args.rounds * 3 {
        for t in order(r) {
            eprintln!("restoredb of {n} records, round {r}");
            jitter();
            restore.push(t, timed(&c, &t.path, &["restoredb", &file, src], None));
            check_records(&c, src, n);
        }
    }

    println!(
        "\n{n} records, 3-node reference cluster, median of {} runs per tool \
         ({} for restoredb)\n",
        args.rounds,
        args.rounds * 3
    );
    println!("| operation | reference tool | ours | reference / ours |");
    println!("|---|---:|---:|---:|");
    for (what, t) in [
        ("ptrans", &mut ptrans),
        ("backupdb", &mut backup),
        ("restoredb", &mut restore),
    ] {
        let a = median(&mut t.reference).as_secs_f64();
        let b = median(&mut t.ours).as_secs_f64();
        println!("| {what} | {a:.3} s | {b:.3} s | {:.1}x |", a / b);
    }
}
