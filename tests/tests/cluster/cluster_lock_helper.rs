//! Our `ctdb_mutex_fcntl_helper` as the cluster lock helper of both
//! daemons (the reference daemon with our helper, ours with ours; ours
//! with the reference's helper is every other cluster test): the leader
//! holds the shared lock file through it, and when the file is removed
//! (as CTDB's own test cluster.015.reclock_remove_lock does) the helper
//! lets the lock go, the leader says the lock was lost, and the cluster
//! takes the lock again, on the file the new helper creates.

use std::time::Duration;

use ctdb_tests::procs::exe;
use ctdb_tests::{Cluster, ClusterOptions, Daemon, our_bin, poll_until, require_reference};

fn lock_file_removed(daemon: Daemon) {
    require_reference();
    let helper = our_bin("ctdb_mutex_fcntl_helper").canonicalize().unwrap();
    let mut opts = ClusterOptions::new(daemon, 3);
    opts.env.push((
        "CTDB_CLUSTER_MUTEX_HELPER".into(),
        helper.display().to_string(),
    ));
    let c = Cluster::start(opts);

    let leader = poll_until(Duration::from_secs(30), "a leader", || c.leader(0));
    let holder = poll_until(
        Duration::from_secs(30),
        "the leader to hold the lock through our helper",
        || {
            let pid = c.lock_holder()?;
            (c.lock_holder_node() == Some(leader) && exe(pid).as_ref() == Some(&helper))
                .then_some(pid)
        },
    );

    std::fs::remove_file(c.lock_file()).unwrap();
    // Our helper looks every 5 s (the default interval, as CTDB's).
    poll_until(
        Duration::from_secs(30),
        "the helper to let the lock go once its file is removed",
        || exe(holder).is_none().then_some(()),
    );
    poll_until(
        Duration::from_secs(30),
        "the leader's daemon to log the lock lost",
        || {
            (0..c.len())
                .any(|k| c.log_text(k).contains("Cluster lock helper terminated"))
                .then_some(())
        },
    );
    let (new_leader, new_holder) = poll_until(
        Duration::from_secs(90),
        "a leader to hold the lock again, on a new file",
        || {
            let leader = c.leader(0)?;
            let pid = c.lock_holder()?;
            (pid != holder
                && exe(pid).as_ref() == Some(&helper)
                && c.lock_holder_node() == Some(leader))
            .then_some((leader, pid))
        },
    );
    c.wait_healthy(Duration::from_secs(90));
    // Every node agrees on who leads, and the lock stayed with it.
    for k in 0..c.len() {
        assert_eq!(c.leader(k), Some(new_leader), "node {k}'s leader");
    }
    assert_eq!(c.lock_holder(), Some(new_holder));
    // The helper that let the lock go ran on the old leader's node.
    let helper_log = c.log_text(leader);
    assert!(
        helper_log.contains("lock lost - lock file")
            && helper_log.contains("open failed (No such file or directory)"),
        "our helper says why it let the lock go, in the daemon's log:\n{}",
        c.log_tails()
    );
}

#[test]
fn our_daemon_with_our_lock_helper() {
    lock_file_removed(Daemon::ours());
}

#[test]
fn reference_daemon_with_our_lock_helper() {
    lock_file_removed(Daemon::Reference);
}
