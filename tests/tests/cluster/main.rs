//! The whole-cluster tests, one module per scenario family, in one test
//! binary: each was a binary of its own, and ~46 binaries each compiled and
//! linked the client library's async code again (about 350 of the 1000 CPU
//! seconds a cold release build of the workspace took). nextest runs every
//! test in a process of its own, so nothing is shared between tests at run
//! time; select a family with `cargo nextest run -p ctdb-tests -E
//! 'test(/^db_vacuum::/)'` (or `cargo test -p ctdb-tests --test cluster
//! db_vacuum::`).

mod binary_replaced;
mod cluster_lock_helper;
mod daemon_bad_input;
mod daemon_fairness;
mod daemon_faults;
mod daemon_logging;
mod daemon_messaging;
mod daemon_mixed;
mod daemon_tool;
mod daemon_versions;
mod db_catchup;
mod db_contention;
mod db_group_commit;
mod db_health;
mod db_inmemory;
mod db_keyed;
mod db_read_your_writes;
mod db_readonly;
mod db_replicated;
mod db_tool;
mod db_traverse_lmaster;
mod db_vacuum;
mod etcd_cluster_lock;
mod faults_random;
mod glock_node_loss;
mod hostile_clients;
mod hostile_culprits;
mod hostile_transport;
mod ip_failover;
mod ip_tickles;
mod ipf;
mod kill_increments;
mod lock_fairness;
mod lock_fairness_glock;
mod lock_fairness_pull;
mod metrics;
mod monitor_health;
mod monitor_scripts;
mod netns_partition;
mod package;
mod recd_ping;
mod recoverd_process;
mod rolling_upgrade;
mod samba_file_server;
mod self_contained;
mod statistics;
mod takeover_helper_dropin;
mod tunnels;
