//! `bench --quick` against both daemons: every workload runs a few seconds
//! and must pass its own correctness check (counters equal the increments,
//! no message lost), so the benchmark code cannot rot. No speed is asserted.

use std::process::Command;

#[test]
fn bench_quick_runs_green_against_both_daemons() {
    ctdb_tests::require_reference();
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--quick", "--daemon", "both", "--out"])
        .arg(out.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "bench --quick failed:\n{stdout}\n{stderr}"
    );
    // Every workload has a figure for both daemons.
    for name in [
        "migration ring",
        "fetch-lock 100 keys",
        "fetch-lock 10000 keys",
        "ptrans 1 client",
        "ptrans 16 clients same key",
        "ptrans 16 clients disjoint keys",
        "ptrans 16 clients disjoint keys, keyed",
        "message ring",
        "ping p50",
        "ping p99",
        "memory",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {name}")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{stdout}"));
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        for (i, who) in [(2, "reference"), (3, "ours")] {
            assert!(
                cells[i].parse::<f64>().is_ok(),
                "{name}: no figure for {who}: {line}"
            );
        }
    }
    for f in ["results.md", "results.json", "ratios.svg"] {
        let p = out.path().join(f);
        assert!(
            p.is_file() && std::fs::metadata(&p).unwrap().len() > 0,
            "{f} not written"
        );
    }
}
