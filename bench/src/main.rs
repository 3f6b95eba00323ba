//! `bench`: the same workloads against a 3-node cluster of the reference
//! CTDB and of ours, driven by the same client code, reported side by side.
//!
//! ```text
//! bench [--quick] [--daemon both|ours|reference] [--only NAME]... [--rounds N] [--out DIR]
//! ```
//!
//! Each workload starts worker processes (this binary re-executed with the
//! hidden `worker` subcommand), one or more per node, which run for a fixed
//! time after a warm-up and print their counts; the workload then checks
//! the result (the counter equals the number of increments, every message
//! arrived) before it reports a figure. A workload whose check fails is
//! reported as a failure, not as a number.

mod report;
mod worker;
mod workloads;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(about = "Side-by-side benchmarks of ctdb-rs and the reference CTDB")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// A few seconds per workload instead of the full run.
    #[arg(long)]
    quick: bool,
    /// Which daemons to measure.
    #[arg(long, value_enum, default_value = "both")]
    daemon: Which,
    /// Run only these workloads (by name).
    #[arg(long)]
    only: Vec<String>,
    /// Measure N times, the reference's and our clusters taking turns
    /// (each round starts fresh clusters); the ratios of every round and
    /// their range are reported, each round's tables under round-K/.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Where to write results.md, results.json and ratios.svg.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Internal: one worker process of a workload.
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Both,
    Ours,
    Reference,
}

/// Timing of a run.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub warmup: Duration,
    pub measure: Duration,
}

fn main() -> Result<()> {
    ctdb_protocol::stdio::exit_quietly_on_closed_output();
    let cli = Cli::parse();
    if let Some(Cmd::Worker(args)) = cli.cmd {
        return worker::run(args);
    }
    let timing = if cli.quick {
        Timing {
            warmup: Duration::from_millis(300),
            measure: Duration::from_millis(1500),
        }
    } else {
        Timing {
            warmup: Duration::from_secs(2),
            measure: Duration::from_secs(10),
        }
    };
    ctdb_tests::require_reference();
    let mut daemons = Vec::new();
    if cli.daemon != Which::Ours {
        daemons.push(workloads::Target::Reference);
    }
    if cli.daemon != Which::Reference {
        daemons.push(workloads::Target::Ours(sibling("ctdbd")?));
    }
    let mut rounds = Vec::new();
    for round in 1..=cli.rounds {
        if cli.rounds > 1 {
            eprintln!("round {round} of {}", cli.rounds);
        }
        let mut results = report::Results::new(cli.quick);
        for target in &daemons {
            let runs = workloads::run_all(target, timing, cli.quick, &cli.only)
                .with_context(|| format!("benchmarking {}", target.name()))?;
            results.add(target.name(), runs);
        }
        rounds.push(results);
    }
    std::fs::create_dir_all(&cli.out)?;
    if let [results] = rounds.as_slice() {
        results.write(&cli.out)?;
        print!("{}", results.markdown());
    } else {
        for (k, results) in rounds.iter().enumerate() {
            let dir = cli.out.join(format!("round-{}", k + 1));
            std::fs::create_dir_all(&dir)?;
            results.write(&dir)?;
        }
        let spread = report::spread_markdown(&rounds);
        std::fs::write(cli.out.join("results.md"), &spread)?;
        print!("{spread}");
    }
    if rounds.iter().any(report::Results::any_failed) {
        anyhow::bail!("some workloads failed their correctness check");
    }
    Ok(())
}

/// A binary built beside this one.
pub fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("no parent directory")?;
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    anyhow::bail!(
        "{name} not found beside {}: build the workspace's binaries",
        exe.display()
    )
}
