//! Check (c) of the tool: the same plan as `reference_cluster.rs`, on a
//! 3-node cluster of OUR daemon: our tool must print what the reference
//! tool prints against it, and the recorded shapes.
//!
//! Our daemon has no database layer yet (it refuses every database
//! control), so the steps that need databases are left out: delete names
//! from [`NEEDS_DATABASES`] as the daemon learns them.

mod live;

use std::path::Path;

use ctdb_tests::{Cluster, Daemon, our_bin, require_reference};

const HELPER: &str = "/usr/libexec/ctdb/ctdb_recovery_helper";

/// Steps left out, all for one reason: our ctdbd answers every database
/// control (attach, record calls, traverse, TRANS3_COMMIT, DB_PULL/PUSH,
/// database map with databases, ...) with an error until the databases
/// issue lands.
const NEEDS_DATABASES: &[&str] = &[
    "databases of the recorded getdbmap",
    "getdbmap",
    "attach_vol",
    "attach_pers",
    "attach_repl",
    "dbstatistics",
    "writekey",
    "readkey",
    "catdb_vol",
    "cattdb",
    "pstore",
    "pfetch",
    "pdelete",
    "records of the recorded catdb",
    "catdb_pers",
    "getdbseqnum",
    "getdbstatus",
    "backupdb",
    "dumpdbbackup",
    "restoredb",
    "catdb after restoredb",
    "ptrans",
    "pfetch after ptrans",
    "tstore",
    "tfetch",
    "deletekey",
    "readkey readonly, plain database",
    "setdbreadonly",
    "a record whose dmaster is node 0",
    "readkey readonly, remote record",
    "readkey, remote record",
    "setdbsticky",
    "getdbmap -X",
    "wipedb",
    "no such key",
];

const WHY: &str = "our ctdbd has no database layer yet";

#[test]
fn exclusions_name_steps_of_the_plan() {
    let plan = live::plan();
    for name in NEEDS_DATABASES {
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
    let skip: Vec<(&str, &str)> = NEEDS_DATABASES.iter().map(|n| (*n, WHY)).collect();
    let outcomes = live::compare(&c, ours, &live::plan(), &skip);
    assert!(
        outcomes.len() >= 25,
        "only {} commands compared",
        outcomes.len()
    );
    live::assert_all_same(&outcomes, &c);
}
