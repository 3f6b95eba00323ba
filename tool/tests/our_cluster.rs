//! Check (c) of the tool: the same plan as `reference_cluster.rs`, on a
//! 3-node cluster of OUR daemon: our tool must print what the reference
//! tool prints against it, and the recorded shapes.
//!
//! Every step of the plan runs: [`DAEMON_GAPS`] (steps left out for a
//! daemon gap) is empty now that ctdbd has databases. `CTDB_LIVE_ALL=1`
//! runs every step regardless of that list.

mod live;

use std::path::Path;

use ctdb_tests::{Cluster, Daemon, our_bin, require_reference};

const HELPER: &str = "/usr/libexec/ctdb/ctdb_recovery_helper";

/// Steps left out for a known gap of our daemon: (step name, reason).
/// Empty since ctdbd's database layer landed; until then it held every
/// step that needs a database ("our ctdbd refuses database controls").
const DAEMON_GAPS: &[(&str, &str)] = &[];

#[test]
fn exclusions_name_steps_of_the_plan() {
    let plan = live::plan();
    for (name, _) in DAEMON_GAPS {
        assert!(
            plan.iter().any(|s| s.name == *name),
            "{name} is not a step of the plan"
        );
    }
}

#[test]
fn our_tool_prints_what_the_reference_tool_prints_on_our_cluster() {
    require_reference();
    let c = Cluster::start(live::options(Daemon::Ours(our_bin("ctdbd"))).recovery_helper(HELPER));
    let ours = Path::new(env!("CARGO_BIN_EXE_ctdb"));
    let skip: &[(&str, &str)] = if std::env::var_os("CTDB_LIVE_ALL").is_some() {
        &[]
    } else {
        DAEMON_GAPS
    };
    let outcomes = live::compare(&c, ours, &live::plan(), skip);
    let commands = live::plan()
        .iter()
        .filter(|s| s.setup.is_none() && !skip.iter().any(|(n, _)| *n == s.name))
        .count();
    assert_eq!(outcomes.len(), commands, "commands compared");
    live::assert_all_same(&outcomes, &c);
}
