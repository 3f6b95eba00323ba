//! Check (b) of the tool: against a live 3-node cluster of the reference
//! CTDB, every recorded command (and a few more) prints with our tool what
//! the reference tool prints on the same cluster state, and has the shape
//! of the recorded output. See `live/mod.rs` for the plan and the masking.

mod live;

use std::path::Path;

use ctdb_tests::{Cluster, Daemon, require_reference};

#[test]
fn every_recorded_command_has_a_step() {
    let plan = live::plan();
    for name in live::recorded_names() {
        assert!(
            plan.iter().any(|s| s.recorded && s.name == name),
            "tool-output/{name}.out is not in the plan"
        );
    }
}

#[test]
fn our_tool_prints_what_the_reference_tool_prints_on_a_reference_cluster() {
    require_reference();
    let c = Cluster::start(live::options(Daemon::Reference));
    let ours = Path::new(env!("CARGO_BIN_EXE_ctdb"));
    let outcomes = live::compare(&c, ours, &live::plan(), &[]);
    assert!(outcomes.len() >= live::recorded_names().len());
    live::assert_all_same(&outcomes, &c);
}
