//! Network partitions between nodes in their own network namespaces: a
//! node cut off from the others (both ways, or one way) is dropped from
//! the cluster, which carries on with the rest; once the cut is removed
//! the cluster heals by itself. On the reference and on ours. And a node
//! whose connection to another is refused for a while: a call sent to the
//! other meanwhile (CTDB drops it, ours keeps it until the connection is
//! up).

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ctdb_tests::procs::Reaped;
use ctdb_tests::{Cluster, ClusterOptions, Daemon, poll_until, require_reference};

fn status_line(c: &Cluster, observer: usize, pnn: usize) -> String {
    let out = c.tool(observer, &["status"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with(&format!("pnn:{pnn} ")))
        .unwrap_or_default()
        .to_owned()
}

fn partitions_heal(daemon: Daemon) {
    require_reference();
    let c = Cluster::start(
        ClusterOptions::new(daemon, 3)
            .in_namespaces()
            .tunable("KeepaliveInterval", 1)
            .tunable("KeepaliveLimit", 3),
    );
    let limit = Duration::from_secs(90);

    // Node 2 cut off both ways: nodes 0 and 1 go on without it.
    c.net().partition(&[2], &[0, 1]);
    poll_until(limit, "node 0 to see node 2 disconnected", || {
        status_line(&c, 0, 2).contains("DISCONNECTED").then_some(())
    });
    c.wait_status(limit, 2, &[2]);
    c.tool_ok(0, &["attach", "partition.tdb"]);
    c.tool_ok(1, &["writekey", "partition.tdb", "k", "during"]);
    c.net().heal();
    c.wait_healthy(limit);
    // Node 2 catches up through the recovery that its return starts.
    poll_until(
        limit,
        "node 2 to read the record written during the cut",
        || {
            let out = c.tool(2, &["readkey", "partition.tdb", "k"]);
            String::from_utf8_lossy(&out.stdout)
                .contains("during")
                .then_some(())
        },
    );

    // Node 0 stops hearing node 1 (one way): the cluster notices, and
    // heals once the cut is gone.
    c.net().drop_from(0, 1);
    poll_until(limit, "node 0 to see node 1 disconnected", || {
        status_line(&c, 0, 1).contains("DISCONNECTED").then_some(())
    });
    c.net().heal();
    c.wait_healthy(limit);
}

#[test]
fn partitions_heal_reference() {
    partitions_heal(Daemon::Reference);
}

#[test]
fn partitions_heal_ours() {
    partitions_heal(Daemon::ours());
}

/// Node `k`'s vnn map (from `ctdb status`): the pnn of each hash slot.
fn vnnmap(c: &Cluster, k: usize) -> Vec<u32> {
    c.tool_ok(k, &["status"])
        .lines()
        .filter_map(|l| l.split_once("lmaster:")?.1.trim().parse().ok())
        .collect()
}

/// A node can have another in its vnn map before its own connection to it
/// is up: the leader took the other in as soon as it saw it, as after a
/// restart where one link comes up a moment after the recovery. A call for
/// a record that other node is the lmaster of is then sent over a link
/// that is not up. CTDB drops it, and its client waits until something
/// else (a recovery) resends it: the 60 s stalls of the rolling upgrade
/// test. Ours keeps it and sends it when the connection comes up, so the
/// client is answered then.
///
/// Node 0 (the sender) runs `sender`, node 1 ours, node 2 the reference,
/// which leads: nodes 0 and 1 may not (it recovers as soon as it sees a
/// node; our leader would wait for every link, and recover again once
/// they are up, which would hide the difference). Node 1 restarts while
/// node 0 cannot connect to it.
fn call_over_a_link_not_yet_up(sender: Daemon) {
    require_reference();
    let limit = Duration::from_secs(90);
    let c = Cluster::start(ClusterOptions::new(Daemon::ours(), 3).in_namespaces());
    for k in 0..3 {
        c.kill(k);
    }
    for k in 0..2 {
        let p = c.base(k).join("ctdb.conf");
        let conf = std::fs::read_to_string(&p).unwrap();
        assert!(conf.contains("[cluster]\n"), "{conf}");
        let conf = conf.replace("[cluster]\n", "[cluster]\n\tleader capability = false\n");
        std::fs::write(&p, conf).unwrap();
    }
    c.restart_with(0, &sender);
    c.restart(1);
    c.restart_with(2, &Daemon::Reference);
    c.wait_one_generation();
    poll_until(limit, "node 2 (the reference) to lead", || {
        let out = c.tool(0, &["leader"]);
        (String::from_utf8_lossy(&out.stdout).trim() == "2").then_some(())
    });
    c.tool_ok(0, &["attach", "held.tdb"]);

    // Node 1 restarts; node 0's connections to it are refused meanwhile.
    c.kill(1);
    c.wait_status(limit, 2, &[1]);
    c.net().refuse_connections(1, 0);
    c.restart(1);
    poll_until(limit, "node 0 to have node 1 in its vnn map", || {
        let map = vnnmap(&c, 0);
        (map.len() == 3 && map.contains(&1)).then_some(map)
    });
    c.wait_status(limit, 3, &[0, 1]);
    assert!(
        status_line(&c, 0, 1).contains("DISCONNECTED"),
        "node 0 must not be connected to node 1 yet: {}",
        status_line(&c, 0, 1)
    );

    // A key node 1 is the lmaster of, never stored: node 0 has no copy,
    // so its fetch goes to node 1.
    let map = vnnmap(&c, 0);
    let key = (0..)
        .map(|i| format!("held-{i}"))
        .find(|k| map[tdb::HashKind::Jenkins.hash(k.as_bytes()) as usize % map.len()] == 1)
        .unwrap();
    let mut fetch = Reaped(
        c.tool_command(
            Path::new("/usr/bin/ctdb"),
            0,
            &["readkey", "held.tdb", &key],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    // The call is on its way; then the connection may come up.
    poll_until(limit, "node 0 to send the call", || {
        let out = c.tool(0, &["statistics"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.contains("pending_calls") && !l.trim().ends_with(" 0"))
            .then_some(())
    });
    let generation = c.generation(0);
    c.net().heal();

    if matches!(sender, Daemon::Reference) {
        // CTDB dropped the call: once connected, node 0 still does not
        // answer it (nothing resends it without a recovery).
        poll_until(limit, "node 0 to connect to node 1", || {
            (!status_line(&c, 0, 1).contains("DISCONNECTED")).then_some(())
        });
        let watched = Instant::now();
        while watched.elapsed() < Duration::from_secs(10) {
            if fetch.0.try_wait().unwrap().is_some() {
                let now = c.generation(0);
                assert_ne!(
                    now, generation,
                    "the reference answered a call sent before its connection was up, \
                     with no recovery in between: it no longer drops such packets, and \
                     this test should say so"
                );
                panic!(
                    "a recovery (generation {generation:?} -> {now:?}) resent the call: \
                     the scenario did not hold"
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        return;
    }
    let status = poll_until(Duration::from_secs(30), "the fetch to be answered", || {
        fetch.0.try_wait().unwrap()
    });
    let mut said = String::new();
    if let Some(mut o) = fetch.0.stdout.take() {
        let _ = o.read_to_string(&mut said);
    }
    if let Some(mut e) = fetch.0.stderr.take() {
        let _ = e.read_to_string(&mut said);
    }
    assert!(status.success(), "ctdb readkey on node 0 failed: {said}");
    assert_eq!(
        c.generation(0),
        generation,
        "answered by a recovery's resend, not by the kept call"
    );
    assert!(
        c.log_text(0).contains("record packets kept for it"),
        "node 0 did not log sending the kept call when its connection to node 1 came up"
    );
}

#[test]
fn call_over_a_link_not_yet_up_ours() {
    call_over_a_link_not_yet_up(Daemon::ours());
}

#[test]
fn call_over_a_link_not_yet_up_reference() {
    call_over_a_link_not_yet_up(Daemon::Reference);
}
