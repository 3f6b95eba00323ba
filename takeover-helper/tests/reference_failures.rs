//! Failing takeover runs, ours against CTDB 4.17's helper: a control
//! fails or never answers on one node (`fake_ctdbd`'s CONTROLFAILS, the
//! scenarios of CTDB's own takeover-helper unit tests). Both helpers must
//! write the same status, exit the same way, send the same controls and
//! the same ban message (naming the node at fault, only with EnableBans)
//! and log the same lines.

mod common;

use common::{Case, Outcome, run_both};

const NODES: &str = "NODEMAP
0       192.168.20.41   0x0     CURRENT RECMASTER
1       192.168.20.42   0x0
2       192.168.20.43   0x0

";

const IPS: &str = "IFACES
:Name:LinkStatus:References:
:eth2:1:2:
:eth1:1:4:

PUBLICIPS
10.0.0.31  -1
10.0.0.32  -1
10.0.0.33  -1

";

fn case(body: &str, fails: &str, tunables: Vec<(&'static str, u32)>) -> Case {
    Case {
        script: format!("{NODES}{body}CONTROLFAILS\n{fails}\n"),
        tunables,
        force: None,
        failover_disabled: false,
    }
}

fn check(name: &str, c: &Case, status: i32, banned: Option<u32>) -> (Outcome, Outcome) {
    let dir = tempfile::tempdir().unwrap();
    let (reference, ours) = run_both(c, dir.path(), "NOTICE");
    assert_eq!(reference, ours, "{name}: reference first, ours second");
    assert_eq!(reference.status, Some(status), "{name}: {reference:#?}");
    assert_eq!(reference.exit, Some(status & 0xff), "{name}");
    let bans = reference.lines("BANNING");
    match banned {
        Some(p) => assert_eq!(bans, [format!("BANNING 0 {p}")], "{name}"),
        None => assert!(bans.is_empty(), "{name}: {bans:?}"),
    }
    (reference, ours)
}

#[test]
fn failed_controls_fail_the_run_the_same_way() {
    let (r, _) = check(
        "IPREALLOCATED error, no addresses",
        &case(
            "",
            "137 1 ERROR CTDB_CONTROL_IPREALLOCATED fake failure",
            vec![],
        ),
        -1,
        Some(1),
    );
    assert!(
        r.log
            .iter()
            .any(|l| l == "IPREALLOCATED failed on node 1, ret=-1"),
        "{r:#?}"
    );

    let (r, _) = check(
        "TAKEOVER_IP error",
        &case(
            IPS,
            "89 1 ERROR CTDB_CONTROL_TAKEOVER_IP fake failure",
            vec![],
        ),
        -1,
        Some(1),
    );
    // A failed takeover ends the run before IPREALLOCATED.
    assert!(r.lines("IPREALLOCATED").is_empty(), "{r:#?}");
    assert_eq!(r.lines("TAKEOVER_IP").len(), 3, "{r:#?}");

    let (r, _) = check(
        "RELEASE_IP error",
        &case(
            IPS,
            "88 2 ERROR CTDB_CONTROL_RELEASE_IP fake failure",
            vec![],
        ),
        -1,
        Some(2),
    );
    assert!(r.lines("TAKEOVER_IP").is_empty(), "{r:#?}");

    check(
        "GET_PUBLIC_IPS error",
        &case(
            IPS,
            "90 2 ERROR CTDB_CONTROL_GET_PUBLIC_IPS fake failure",
            vec![],
        ),
        -1,
        Some(2),
    );
    check(
        "GET_ALL_TUNABLES error",
        &case(
            IPS,
            "53 0 ERROR CTDB_CONTROL_GET_ALL_TUNABLES fake failure",
            vec![],
        ),
        -1,
        None,
    );
    check(
        "GET_NODEMAP error",
        &case(
            IPS,
            "91 0 ERROR CTDB_CONTROL_GET_NODEMAP fake failure",
            vec![],
        ),
        -1,
        None,
    );
    check(
        "TAKEOVER_IP error without bans",
        &case(
            IPS,
            "89 1 ERROR CTDB_CONTROL_TAKEOVER_IP fake failure",
            vec![("EnableBans", 0)],
        ),
        -1,
        None,
    );
}

#[test]
fn unanswered_controls_time_out_the_same_way() {
    // TakeoverTimeout 2 (as in CTDB's unit tests): queries wait 2 s, the
    // moving stages 6 s together; long enough for the controls that do
    // answer on a loaded machine.
    let fast = || vec![("TakeoverTimeout", 2)];
    let (r, _) = check(
        "IPREALLOCATED timeout",
        &case(
            "",
            "137 1 TIMEOUT CTDB_CONTROL_IPREALLOCATED fake timeout",
            fast(),
        ),
        libc::ETIMEDOUT,
        Some(1),
    );
    assert_eq!(r.lines("IPREALLOCATED").len(), 3, "{r:#?}");
    check(
        "GET_PUBLIC_IPS timeout",
        &case(
            IPS,
            "90 1 TIMEOUT CTDB_CONTROL_GET_PUBLIC_IPS fake timeout",
            fast(),
        ),
        libc::ETIMEDOUT,
        Some(1),
    );
    check(
        "TAKEOVER_IP timeout",
        &case(
            IPS,
            "89 2 TIMEOUT CTDB_CONTROL_TAKEOVER_IP fake timeout",
            fast(),
        ),
        libc::ETIMEDOUT,
        Some(2),
    );
}

#[test]
fn nothing_to_do_and_nobody_to_do_it() {
    // No node active: CTDB's helper gives up (ENOMEM) before asking for
    // addresses, and bans nobody.
    let c = Case {
        script: format!(
            "NODEMAP\n0 192.168.20.41 0x8 CURRENT RECMASTER\n1 192.168.20.42 0x20\n\n{IPS}"
        ),
        tunables: vec![],
        force: None,
        failover_disabled: false,
    };
    let dir = tempfile::tempdir().unwrap();
    let (r, o) = run_both(&c, dir.path(), "NOTICE");
    assert_eq!(r, o);
    assert_eq!(r.status, Some(libc::ENOMEM), "{r:#?}");
    assert!(r.controls.is_empty(), "{r:#?}");

    // Failover disabled: only IPREALLOCATED, to every connected node.
    let c = Case {
        failover_disabled: true,
        ..case(IPS, "", vec![])
    };
    let c = Case {
        script: format!("{NODES}{IPS}"),
        ..c
    };
    let (r, o) = run_both(&c, dir.path().join("x").as_path(), "NOTICE");
    assert_eq!(r, o);
    assert_eq!(r.status, Some(0));
    assert_eq!(
        r.controls,
        ["IPREALLOCATED 0", "IPREALLOCATED 1", "IPREALLOCATED 2"],
        "{r:#?}"
    );
}
