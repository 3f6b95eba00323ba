//! The tool against `fake_ctdbd`: every case in `tests/cases` run with the
//! reference tool (so the expectations cannot drift from what CTDB's tool
//! prints) and with ours (which must print exactly the same).
//!
//! `CTDB_GOLDEN_UPDATE=1 cargo test -p ctdb-tool --test fake_cases
//! reference_tool` rewrites the expectations from the reference tool.

mod golden;

use std::path::Path;

use golden::{all_cases, differences, parallel, run_case};

const REFERENCE_TOOL: &str = "/usr/bin/ctdb";

#[test]
fn there_are_enough_cases() {
    let cases = all_cases();
    let steps: usize = cases.iter().map(|c| c.steps.len()).sum();
    assert!(cases.len() >= 100, "only {} case files", cases.len());
    assert!(steps >= cases.len());
}

#[test]
fn reference_tool_matches_case_files() {
    ctdb_tests::require_reference();
    let update = std::env::var_os("CTDB_GOLDEN_UPDATE").is_some();
    let cases = all_cases();
    let results = parallel(&cases, |c| {
        let got = run_case(c, Path::new(REFERENCE_TOOL));
        (c.clone(), got)
    });
    let mut failures = Vec::new();
    for (case, got) in results {
        if let Some(d) = differences(&case, &got) {
            if update {
                let mut c = case.clone();
                c.steps = got;
                c.write();
            } else {
                failures.push(d);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) differ from the reference tool:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn our_tool_matches_case_files() {
    let ours = ctdb_tests::our_bin("ctdb");
    let cases = all_cases();
    let results = parallel(&cases, |c| differences(c, &run_case(c, &ours)));
    let failures: Vec<String> = results.into_iter().flatten().collect();
    assert!(
        failures.is_empty(),
        "{} case(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
