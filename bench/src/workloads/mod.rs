//! The workloads, and running worker processes for them.

mod contention;
mod inmemory;
mod keyed;
mod latency;
mod locks;
mod memory;
mod messages;
mod transactions;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ctdb_tests::{Cluster, ClusterOptions, Daemon};
use serde::Serialize;

use crate::Timing;
use crate::worker::{Kind, Report, now_us};

/// The daemon a run measures.
pub enum Target {
    Reference,
    Ours(PathBuf),
}

impl Target {
    pub fn name(&self) -> &'static str {
        match self {
            Target::Reference => "reference",
            Target::Ours(_) => "ours",
        }
    }

    fn daemon(&self) -> Daemon {
        match self {
            Target::Reference => Daemon::Reference,
            Target::Ours(p) => Daemon::Ours(p.clone()),
        }
    }
}

/// One line of results.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub workload: String,
    pub unit: String,
    pub higher_is_better: bool,
    /// `None` when the workload failed.
    pub value: Option<f64>,
    pub note: String,
    pub error: Option<String>,
}

impl Row {
    pub(crate) fn ok(
        workload: &str,
        unit: &str,
        higher_is_better: bool,
        value: f64,
        note: String,
    ) -> Row {
        Row {
            workload: workload.into(),
            unit: unit.into(),
            higher_is_better,
            value: Some(value),
            note,
            error: None,
        }
    }
}

type Workload = fn(&Ctx) -> Result<Vec<Row>>;

/// Every workload: its name (for `--only`) and its runner.
const WORKLOADS: &[(&str, Workload)] = &[
    ("migration-ring", locks::migration_ring),
    ("migration-ring-3", locks::migration_rings_3),
    ("fetch-lock", locks::contended),
    ("one-record", contention::run),
    ("ptrans", transactions::run),
    ("ptrans-inmemory", inmemory::run),
    ("ptrans-keyed", keyed::run),
    ("message-ring", messages::ring),
    ("message-ring-3", messages::rings_3),
    ("ping", latency::ping),
    ("memory", memory::run),
];

/// Names of the rows each workload can produce, for failure rows.
fn rows_of(name: &str) -> &'static [&'static str] {
    match name {
        "migration-ring" => &[
            "migration ring (migrations/s)",
            "daemon CPU per migration, ring (µs)",
        ],
        "migration-ring-3" => &["migration ring, 3 clients/node (migrations/s)"],
        "fetch-lock" => &[
            "fetch-lock 100 keys (ops/s)",
            "fetch-lock 10000 keys (ops/s)",
        ],
        "one-record" => &[
            "fetch-lock 1 key, 12 clients (ops/s)",
            "CTDB-style g_lock ptrans 1 key, 12 clients (commits/s)",
        ],
        "ptrans" => &[
            "ptrans 1 client (commits/s)",
            "ptrans 16 clients same key (commits/s)",
            "ptrans 16 clients disjoint keys (commits/s)",
        ],
        "ptrans-inmemory" => &[inmemory::ROW],
        "ptrans-keyed" => &[keyed::ROW, keyed::ROW_ONE],
        "message-ring" => &[
            "message ring (messages/s)",
            "daemon CPU per message, ring (µs)",
        ],
        "message-ring-3" => &["message ring, 3 clients/node (messages/s)"],
        "ping" => &[
            "ping p50, 1000 idle clients/node (µs)",
            "ping p99, 1000 idle clients/node (µs)",
        ],
        _ => &["memory after 1M records (MiB)"],
    }
}

/// What a workload needs: the cluster and how to start workers on it.
pub struct Ctx<'a> {
    pub cluster: &'a Cluster,
    pub timing: Timing,
    pub quick: bool,
    exe: PathBuf,
    tmp: tempfile::TempDir,
    seq: std::cell::Cell<u32>,
}

impl Ctx<'_> {
    /// A start time far enough ahead for every worker to connect.
    pub fn start_at(&self) -> u64 {
        now_us() + 1_500_000
    }

    /// The database name for one workload run (fresh each time).
    pub fn db_name(&self, base: &str) -> String {
        let n = self.seq.get();
        self.seq.set(n + 1);
        format!("bench_{base}_{n}.tdb")
    }

    /// Starts a worker against node `node`.
    pub fn spawn(
        &self,
        kind: Kind,
        node: usize,
        id: u32,
        start_at: u64,
        extra: &[String],
    ) -> Result<Worker> {
        let stderr_path = self
            .tmp
            .path()
            .join(format!("worker-{}-{kind:?}-{id}.err", self.seq.get()));
        let mut cmd = Command::new(&self.exe);
        cmd.arg("worker")
            .arg(format!("{kind:?}").to_lowercase())
            .arg("--socket")
            .arg(self.cluster.socket(node))
            .args(["--id", &id.to_string()])
            .args(["--nodes", &self.cluster.len().to_string()])
            .args(["--start-at", &start_at.to_string()])
            .args(["--warmup-ms", &self.timing.warmup.as_millis().to_string()])
            .args(["--measure-ms", &self.timing.measure.as_millis().to_string()])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path)?);
        let child = cmd.spawn().context("starting a worker")?;
        Ok(Worker {
            child: Some(child),
            stderr_path,
        })
    }

    /// How long after the start a worker may take to finish.
    pub fn deadline(&self) -> Duration {
        self.timing.warmup + self.timing.measure + Duration::from_secs(60)
    }
}

/// A worker process; killed if dropped before it finished.
pub struct Worker {
    child: Option<Child>,
    stderr_path: PathBuf,
}

impl Worker {
    /// Waits for a line on the worker's stdout (used by idle workers).
    pub fn wait_line(&mut self, expect: &str) -> Result<()> {
        let child = self.child.as_mut().context("worker gone")?;
        let out = child.stdout.as_mut().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        if line.trim() != expect {
            bail!(
                "worker said {line:?} instead of {expect:?}: {}",
                self.stderr()
            );
        }
        Ok(())
    }

    /// Closes the worker's stdin (idle workers exit on it).
    pub fn close_stdin(&mut self) {
        if let Some(c) = self.child.as_mut() {
            drop(c.stdin.take());
        }
    }

    /// Waits for the worker to exit and returns its report.
    pub fn finish(mut self, limit: Duration) -> Result<Report> {
        let mut child = self.child.take().context("worker gone")?;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = child.try_wait()? {
                let mut out = String::new();
                if let Some(mut o) = child.stdout.take() {
                    o.read_to_string(&mut out)?;
                }
                if !st.success() {
                    bail!("worker failed ({st}): {}", self.stderr());
                }
                let last = out.lines().last().unwrap_or_default();
                return serde_json::from_str(last)
                    .with_context(|| format!("worker output {out:?}: {}", self.stderr()));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("worker did not finish in {limit:?}: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path)
            .unwrap_or_default()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits for all workers and returns their reports.
pub fn finish_all(ctx: &Ctx, workers: Vec<Worker>) -> Result<Vec<Report>> {
    let limit = ctx.deadline();
    workers.into_iter().map(|w| w.finish(limit)).collect()
}

/// Fails if any worker saw an error.
pub fn check_errors(reports: &[Report]) -> Result<()> {
    let errs: Vec<&String> = reports.iter().flat_map(|r| &r.errors).collect();
    if !errs.is_empty() {
        bail!("workers saw errors: {:?}", &errs[..errs.len().min(5)]);
    }
    Ok(())
}

/// Runs on the current thread a future that talks to the cluster.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Runs every selected workload against a fresh 3-node cluster of `target`.
pub fn run_all(target: &Target, timing: Timing, quick: bool, only: &[String]) -> Result<Vec<Row>> {
    eprintln!("starting a 3-node {} cluster", target.name());
    let mut opts = ClusterOptions::new(target.daemon(), 3);
    if let Target::Ours(p) = target {
        // Our recovery helper beside our daemon: keyed databases can be
        // attached only with it (ctdbd/src/db/keyed_recovery.rs).
        opts = opts.recovery_helper(p.with_file_name("ctdb_recovery_helper"));
    }
    let cluster = Cluster::start(opts);
    let ctx = Ctx {
        cluster: &cluster,
        timing,
        quick,
        exe: std::env::current_exe()?,
        tmp: tempfile::tempdir()?,
        seq: std::cell::Cell::new(0),
    };
    let mut rows = Vec::new();
    for (name, run) in WORKLOADS {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        eprintln!("  {}: {name}", target.name());
        match run(&ctx) {
            Ok(mut r) => rows.append(&mut r),
            Err(e) => {
                eprintln!("  {name} failed: {e:#}");
                for row in rows_of(name) {
                    rows.push(Row {
                        workload: (*row).into(),
                        unit: String::new(),
                        higher_is_better: true,
                        value: None,
                        note: String::new(),
                        error: Some(format!("{e:#}")),
                    });
                }
            }
        }
    }
    Ok(rows)
}

/// Sum of the reports' window counts per second of measurement.
/// CPU time the cluster's daemons have used so far (user + system,
/// children they reaped included), in microseconds; `None` if a daemon's
/// `/proc` entry cannot be read. (Clock ticks are 1/100 s on Linux.)
pub fn daemon_cpu_us(ctx: &Ctx) -> Option<u64> {
    let mut total = 0;
    for k in 0..ctx.cluster.len() {
        let pid = ctx.cluster.pid(k)?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces): state is
        // field 3; utime, stime, cutime, cstime are fields 14 to 17.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        for i in 11..15 {
            total += f.get(i)?.parse::<u64>().ok()?;
        }
    }
    Some(total * 10_000)
}

/// A "daemon CPU per operation" row from two [`daemon_cpu_us`] readings
/// around a run of `ops` operations.
pub fn cpu_row(name: &str, before: Option<u64>, after: Option<u64>, ops: u64) -> Row {
    match (before, after) {
        (Some(b), Some(a)) if ops > 0 => Row::ok(
            name,
            "µs",
            false,
            a.saturating_sub(b) as f64 / ops as f64,
            format!(
                "{:.2} s of daemon CPU over {ops} operations",
                (a - b) as f64 / 1e6
            ),
        ),
        _ => Row {
            workload: name.into(),
            unit: "µs".into(),
            higher_is_better: false,
            value: None,
            note: String::new(),
            error: Some("daemon CPU time not readable".into()),
        },
    }
}

pub fn rate(ctx: &Ctx, reports: &[Report]) -> f64 {
    reports.iter().map(|r| r.ops_window).sum::<u64>() as f64 / ctx.timing.measure.as_secs_f64()
}
