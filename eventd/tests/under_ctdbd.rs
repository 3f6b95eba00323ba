//! Our ctdb-eventd under the reference `ctdbd` (selected with
//! `CTDB_EVENTD`, as 4.17's daemon allows), side by side with the
//! reference's own event daemon: the node runs its monitor scripts through
//! it, a failing monitor script makes the node UNHEALTHY within two monitor
//! intervals and a passing one brings it back, and `ctdb scriptstatus`
//! shows the same thing.

mod common;

use std::time::Duration;

use common::{mask_times, write_script};
use ctdb_tests::cluster::{Cluster, ClusterOptions, Daemon};
use ctdb_tests::poll_until;

fn scenario(eventd: Option<&std::path::Path>) -> String {
    let mut opts = ClusterOptions::new(Daemon::Reference, 1).tunable("MonitorInterval", 1);
    if let Some(p) = eventd {
        opts.env
            .push(("CTDB_EVENTD".into(), p.display().to_string()));
    }
    let c = Cluster::start(opts);
    // The event daemon running is the one asked for.
    let pid: i32 = std::fs::read_to_string(c.base(0).join("run/eventd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let want = eventd.map_or_else(
        || std::path::PathBuf::from(common::REF_EVENTD),
        |p| std::fs::canonicalize(p).unwrap(),
    );
    assert_eq!(exe, want, "the event daemon under ctdbd");

    // Debian's own scripts, as the check installs them, with the
    // functions file they load from CTDB_BASE.
    std::fs::copy("/etc/ctdb/functions", c.base(0).join("functions")).unwrap();
    for s in ["00.ctdb.script", "01.reclock.script", "05.system.script"] {
        let dst = c.base(0).join("events/legacy").join(s);
        std::fs::copy(format!("/usr/share/ctdb/events/legacy/{s}"), &dst).unwrap();
        std::fs::set_permissions(&dst, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    let flag = c.base(0).join("var/monitor-fails");
    write_script(
        &c.base(0).join("events/legacy/10.flag.script"),
        &format!(
            "#!/bin/sh\n[ \"$1\" = monitor ] || exit 0\n\
             if [ -e '{}' ]; then echo 'flag is set'; exit 1; fi\nexit 0\n",
            flag.display()
        ),
        true,
    );
    let status = |c: &Cluster| String::from_utf8_lossy(&c.tool(0, &["status"]).stdout).into_owned();
    let scriptstatus = |c: &Cluster| {
        mask_times(&String::from_utf8_lossy(
            &c.tool(0, &["scriptstatus"]).stdout,
        ))
    };
    // Healthy, and the new script has run in a monitor event.
    poll_until(
        Duration::from_secs(20),
        "a monitor run with the script",
        || scriptstatus(&c).contains("10.flag OK").then_some(()),
    );
    let mut t = format!("healthy:\n{}\n", scriptstatus(&c));
    std::fs::write(&flag, "").unwrap();
    // MonitorInterval is 1 s: within two intervals, with slack for the
    // loaded machine.
    poll_until(Duration::from_secs(10), "UNHEALTHY", || {
        status(&c).contains("UNHEALTHY").then_some(())
    });
    t += &format!("unhealthy:\n{}\n", scriptstatus(&c));
    std::fs::remove_file(&flag).unwrap();
    poll_until(Duration::from_secs(10), "healthy again", || {
        (!status(&c).contains("UNHEALTHY")).then_some(())
    });
    t += &format!("healthy again:\n{}\n", scriptstatus(&c));
    t
}

#[test]
fn reference_ctdbd_with_our_eventd_sets_and_clears_unhealthy() {
    let reference = scenario(None);
    let ours = scenario(Some(&ctdb_tests::our_bin("ctdb-eventd")));
    assert!(
        ours.starts_with("healthy:\n00.ctdb OK <time>\n01.reclock OK <time>\n05.system OK"),
        "{ours}"
    );
    assert!(
        ours.contains("05.system OK <time>\n10.flag ERROR <time>\n  OUTPUT: flag is set"),
        "{ours}"
    );
    assert_eq!(reference, ours);
}
