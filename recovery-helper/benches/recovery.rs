//! Recovery benchmark: the reference `ctdb_recovery_helper` against ours,
//! in the same reference cluster, alternated.
//!
//! `cargo bench -p ctdb-recovery-helper --bench recovery [-- ROUNDS [RECORDS]]`
//!
//! A 3-node cluster of the reference daemon is started with
//! `CTDB_RECOVERY_HELPER` pointing at a small wrapper (this same program in
//! `--wrap` mode) that runs whichever helper the benchmark currently
//! selects, times it, and takes its peak resident memory from
//! `getrusage(RUSAGE_CHILDREN)`. The helper writes its status into the
//! wrapper's pipe; the wrapper records the measurement before passing the
//! status on to the daemon (which kills its helper as soon as it reads the
//! status).
//!
//! Ten databases of 100k records each (five volatile, five persistent,
//! written to every node with `ctdb restoredb`) are then recovered with
//! `ctdb recover`, alternately by each helper.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ctdb_protocol::Marshal;
use ctdb_protocol::backup::{BACKUP_VERSION, BackupChunk, BackupHeader};
use ctdb_protocol::types::{LtdbHeader, RecBuffer, db_flags};
use ctdb_tests::{Cluster, ClusterOptions, Daemon, poll_until, require_reference};

const REFERENCE: &str = "/usr/libexec/ctdb/ctdb_recovery_helper";
const DATABASES: usize = 10;

/// `--wrap STATS TARGET FD SOCKET GENERATION`: run TARGET as the helper.
fn wrap(args: &[String]) -> ! {
    let (stats, target, fd, rest) = (&args[2], &args[3], &args[4], &args[5..]);
    let (mut rd, wr) = std::io::pipe().expect("pipe");
    let t = Instant::now();
    let mut child = Command::new(target)
        .arg("1")
        .args(rest)
        .stdin(Stdio::null())
        .stdout(wr)
        .spawn()
        .expect("spawn helper");
    let mut status = Vec::new();
    let _ = rd.read_to_end(&mut status);
    let exit = child.wait().expect("wait helper");
    let wall = t.elapsed();
    let ru = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .expect("getrusage");
    let tv_us = |t: nix::sys::time::TimeVal| t.tv_sec() * 1_000_000 + t.tv_usec();
    let line = format!(
        "{target} {} {} {} {}\n",
        wall.as_micros(),
        ru.max_rss(),
        exit.code().unwrap_or(-1),
        tv_us(ru.user_time()) + tv_us(ru.system_time())
    );
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(stats)
        .expect("stats file");
    f.write_all(line.as_bytes()).unwrap();
    drop(f);
    if let Ok(mut out) = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{fd}"))
    {
        let _ = out.write_all(&status);
    }
    std::process::exit(exit.code().unwrap_or(1));
}

/// Writes a backup file of `n` records for database `name`.
fn backup(path: &Path, name: &str, flags: u8, n: usize) {
    let mut out = Vec::new();
    let mut chunks = Vec::new();
    let mut rb = RecBuffer::new(0);
    for i in 0..n {
        let h = LtdbHeader {
            rsn: 1 + (i % 5) as u64,
            dmaster: 0,
            reserved1: 0,
            flags: 0,
        };
        let key = format!("{name}/key/{i:08}");
        let value = format!("value-{i:08}-{}", "x".repeat(48));
        rb.add(0, Some(&h), key.as_bytes(), value.as_bytes());
        if rb.records_len() > 100_000 {
            chunks.push(BackupChunk(std::mem::replace(&mut rb, RecBuffer::new(0))));
        }
    }
    let mut n = n;
    if flags & db_flags::PERSISTENT != 0 {
        // Persistent databases written through transactions carry their
        // sequence number in this record.
        let h = LtdbHeader::default();
        rb.add(
            0,
            Some(&h),
            b"__db_sequence_number__\0",
            &1u64.to_le_bytes(),
        );
        n += 1;
    }
    if rb.count() > 0 {
        chunks.push(BackupChunk(rb));
    }
    let hdr = BackupHeader {
        version: BACKUP_VERSION,
        timestamp: 0,
        flags: flags as u64,
        nbuf: chunks.len() as u64,
        nrec: n as u64,
        name: name.into(),
    };
    out.extend_from_slice(&hdr.to_bytes());
    for c in &chunks {
        out.extend_from_slice(&c.to_bytes());
    }
    std::fs::write(path, out).unwrap();
}

/// CPU time (user + system) used so far by node `k`'s main daemon.
fn daemon_cpu(c: &Cluster, k: usize) -> Duration {
    let Some(pid) = c.pid(k) else {
        return Duration::ZERO;
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime is the
    // 12th, stime the 13th; both in clock ticks of 1/100 s.
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    if f.len() < 13 {
        return Duration::ZERO;
    }
    Duration::from_millis((f[11] + f[12]) * 10)
}

struct Run {
    helper: &'static str,
    daemons_cpu: Duration,
    wall: Duration,
    cpu: Duration,
    maxrss_kib: u64,
    tool: Duration,
}

fn stats_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--wrap") {
        wrap(&args);
    }
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "recovery benchmark: run it with `cargo bench -p ctdb-recovery-helper --bench recovery`"
        );
        return;
    }
    let nums: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let rounds = nums.first().copied().unwrap_or(3);
    let records = nums.get(1).copied().unwrap_or(100_000);
    require_reference();

    let work = tempfile::Builder::new()
        .prefix("recovery-bench-")
        .tempdir()
        .unwrap();
    let stats = work.path().join("stats");
    let target = work.path().join("target");
    let script = work.path().join("helper.sh");
    let me = std::env::current_exe().unwrap();
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec '{}' --wrap '{}' \"$(cat '{}')\" \"$@\"\n",
            me.display(),
            stats.display(),
            target.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ours = PathBuf::from(env!("CARGO_BIN_EXE_ctdb_recovery_helper"));
    std::fs::write(&target, REFERENCE).unwrap();

    let mut opts = ClusterOptions::new(Daemon::Reference, 3);
    opts.recovery_helper = Some(script.clone());
    if let Ok(m) = std::env::var("RECOVERY_BENCH_MEMORY") {
        opts.env.push(("CTDB_RECOVERY_HELPER_MEMORY".into(), m));
    }
    if let Ok(t) = std::env::var("RECOVERY_BENCH_TRACE") {
        opts.env.push(("CTDB_RECOVERY_HELPER_TRACE".into(), t));
    }
    let c = Cluster::start(opts);
    for k in 0..3 {
        c.tool_ok(k, &["setvar", "RerecoveryTimeout", "0"]);
    }

    eprintln!("creating {DATABASES} databases of {records} records...");
    for d in 0..DATABASES {
        let (name, flags) = if d % 2 == 0 {
            (format!("bench_vol{d}.tdb"), 0)
        } else {
            (format!("bench_pers{d}.tdb"), db_flags::PERSISTENT)
        };
        let file = work.path().join(format!("{name}.backup"));
        backup(&file, &name, flags, records);
        c.tool_ok(0, &["restoredb", file.to_str().unwrap()]);
        std::fs::remove_file(file).unwrap();
    }
    c.wait_healthy(Duration::from_secs(120));

    let mut runs = Vec::new();
    let order: Vec<(&'static str, PathBuf)> = vec![
        ("reference", PathBuf::from(REFERENCE)),
        ("ours", ours.clone()),
    ];
    // One untimed run each to warm caches, then the measured rounds.
    for round in 0..=rounds {
        for (label, path) in &order {
            std::fs::write(&target, path.display().to_string()).unwrap();
            let before = stats_lines(&stats).len();
            let cpu0: Vec<Duration> = (0..3).map(|k| daemon_cpu(&c, k)).collect();
            let t = Instant::now();
            c.tool_ok(0, &["recover"]);
            c.wait_healthy(Duration::from_secs(300));
            let lines = poll_until(Duration::from_secs(300), "the helper's measurement", || {
                let l = stats_lines(&stats);
                (l.len() > before).then_some(l)
            });
            let tool = t.elapsed();
            let per_node: Vec<Duration> = (0..3).map(|k| daemon_cpu(&c, k) - cpu0[k]).collect();
            let daemons_cpu: Duration = per_node.iter().sum();
            eprintln!(
                "  daemons' cpu per node (ms): {:?}",
                per_node.iter().map(|d| d.as_millis()).collect::<Vec<_>>()
            );
            // The recovery this `ctdb recover` caused is the last one.
            let f: Vec<&str> = lines.last().unwrap().split_whitespace().collect();
            assert_eq!(f[0], path.display().to_string(), "wrong helper ran");
            assert_eq!(f[3], "0", "{label} helper failed: {}", c.log_tails());
            let run = Run {
                helper: label,
                daemons_cpu,
                wall: Duration::from_micros(f[1].parse().unwrap()),
                cpu: Duration::from_micros(f[4].parse().unwrap()),
                maxrss_kib: f[2].parse().unwrap(),
                tool,
            };
            eprintln!(
                "round {round} {:<9} helper {:>8.1} ms (cpu {:>7.1} ms)  peak RSS {:>7} KiB  (ctdb recover {:.1} ms, daemons' cpu {:.0} ms)",
                run.helper,
                run.wall.as_secs_f64() * 1e3,
                run.cpu.as_secs_f64() * 1e3,
                run.maxrss_kib,
                run.tool.as_secs_f64() * 1e3,
                run.daemons_cpu.as_secs_f64() * 1e3
            );
            if round > 0 {
                runs.push(run);
            }
        }
    }

    // Every node must hold every record after the last recovery.
    for d in 0..DATABASES {
        let name = if d % 2 == 0 {
            format!("bench_vol{d}.tdb")
        } else {
            format!("bench_pers{d}.tdb")
        };
        for k in 0..3 {
            let out = c.tool_ok(k, &["getdbstatus", &name]);
            assert!(out.contains(&name), "{out}");
        }
    }

    let summary = |label: &str| {
        let r: Vec<&Run> = runs.iter().filter(|r| r.helper == label).collect();
        let wall = median(r.iter().map(|r| r.wall.as_secs_f64() * 1e3).collect());
        let rss = median(r.iter().map(|r| r.maxrss_kib as f64).collect());
        let tool = median(r.iter().map(|r| r.tool.as_secs_f64() * 1e3).collect());
        let cpu = median(r.iter().map(|r| r.cpu.as_secs_f64() * 1e3).collect());
        (wall, rss, tool, cpu)
    };
    let (rw, rr, rt, rc) = summary("reference");
    let (ow, or, ot, oc) = summary("ours");
    println!();
    println!(
        "Recovery of {DATABASES} databases x {records} records (5 volatile, 5 persistent), 3 nodes, {rounds} rounds, medians:"
    );
    println!(
        "| helper    | helper wall (ms) | helper CPU (ms) | peak RSS (KiB) | ctdb recover (ms) |"
    );
    println!(
        "|-----------|------------------|-----------------|----------------|-------------------|"
    );
    println!("| reference | {rw:>16.1} | {rc:>15.1} | {rr:>14.0} | {rt:>17.1} |");
    println!("| ours      | {ow:>16.1} | {oc:>15.1} | {or:>14.0} | {ot:>17.1} |");
    println!(
        "| reference / ours | {:.2} | {:.2} | {:.2} | {:.2} |",
        rw / ow,
        rc / oc,
        rr / or,
        rt / ot
    );
}
