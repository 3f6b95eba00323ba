//! The recovery daemon's own process: `ctdbd --recoverd ...`, started by
//! the daemon ([`super::process`]) as CTDB forks `ctdb-recoverd`.
//!
//! It dies with its parent (`PR_SET_PDEATHSIG`, checked against the
//! parent it was told right after, in case the daemon died first), names
//! itself `ctdb_recoverd` as CTDB's does, logs to the daemon's log target
//! as `ctdb-recoverd[PID]`, follows the daemon's debug level, and runs the
//! recovery daemon on a current-thread runtime of its own until its
//! connection to the daemon breaks (exit status 1: the daemon starts a new
//! one) or it gets SIGTERM (the lock released, status 0).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ctdb_client::{Client, Message};
use ctdb_protocol::header::{CTDB_CURRENT_NODE, CTDB_UNKNOWN_PNN};
use ctdb_protocol::message::srvid;
use ctdb_protocol::types::{NodeMap, Timeval};
use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::{Recoverd, RecoverdConfig, takeover_run};
use crate::logging::{self, LogControl, LogTarget};

/// The first argument that makes `ctdbd` the recovery daemon.
pub const CHILD_ARG: &str = "--recoverd";

/// What the daemon passes on the recovery daemon's command line
/// ([`child_args`] writes it).
#[derive(Debug, clap::Parser)]
#[command(
    name = "ctdbd --recoverd",
    about = "ctdb-rs recovery daemon (started by ctdbd)"
)]
struct ChildArgs {
    /// The daemon's pid: the recovery daemon exits when it is not its parent.
    #[arg(long)]
    parent: i32,
    #[arg(long)]
    pnn: u32,
    #[arg(long)]
    socket: PathBuf,
    #[arg(long, allow_hyphen_values = true)]
    cluster_lock: Option<String>,
    #[arg(long)]
    leader_timeout_ms: u64,
    #[arg(long)]
    helper_dir: PathBuf,
    #[arg(long)]
    recovery_helper: PathBuf,
    #[arg(long)]
    state_dir: PathBuf,
    /// The daemon's log file; none: standard error (inherited).
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// CTDB's debug level number at start (followed from the daemon later).
    #[arg(long, allow_hyphen_values = true)]
    log_level: i32,
    /// `KEY=VALUE` for the helpers' environment.
    #[arg(long, allow_hyphen_values = true)]
    helper_env: Vec<String>,
    #[arg(long)]
    failover_disabled: bool,
}

fn opt(name: &str, value: impl Into<OsString>) -> OsString {
    let mut s = OsString::from(format!("--{name}="));
    s.push(value.into());
    s
}

/// The arguments after [`CHILD_ARG`] for a recovery daemon of `cfg`,
/// child of `parent`, logging at `level` to start with.
pub fn child_args(cfg: &RecoverdConfig, parent: u32, level: i32) -> Vec<OsString> {
    let mut a = vec![
        opt("parent", parent.to_string()),
        opt("pnn", cfg.pnn.to_string()),
        opt("socket", &cfg.socket),
        opt(
            "leader-timeout-ms",
            cfg.leader_timeout.as_millis().to_string(),
        ),
        opt("helper-dir", &cfg.helper_dir),
        opt("recovery-helper", &cfg.recovery_helper),
        opt("state-dir", &cfg.state_dir),
        opt("log-level", level.to_string()),
    ];
    if let Some(l) = &cfg.cluster_lock {
        a.push(opt("cluster-lock", l));
    }
    if let Some(f) = &cfg.log_file {
        a.push(opt("log-file", f.path()));
    }
    for (k, v) in &cfg.helper_env {
        a.push(opt("helper-env", format!("{k}={v}")));
    }
    if cfg.failover_disabled {
        a.push("--failover-disabled".into());
    }
    a
}

/// `main` of `ctdbd --recoverd ARGS`: returns the exit status.
pub fn child_main(args: &[OsString]) -> i32 {
    let argv = std::iter::once(OsString::from("ctdbd --recoverd")).chain(args.iter().cloned());
    let a = match <ChildArgs as clap::Parser>::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ctdb-recoverd: {e}");
            return 1;
        }
    };
    // Die with the daemon. The daemon may have died before this line:
    // then the parent is no longer the one named.
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM) {
        eprintln!("ctdb-recoverd: cannot ask to die with the daemon: {e}");
        return 1;
    }
    if nix::unistd::getppid().as_raw() != a.parent {
        eprintln!("ctdb-recoverd: the daemon (pid {}) is gone", a.parent);
        return 1;
    }
    // `ps`, `top` and /proc/PID/comm show it as CTDB's does.
    let _ = nix::sys::prctl::set_name(c"ctdb_recoverd");
    let target = match &a.log_file {
        Some(p) => LogTarget::File(p.clone()),
        None => LogTarget::Stderr,
    };
    let (log, log_file) = match logging::init_as(&target, a.log_level, "ctdb-recoverd") {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ctdb-recoverd: cannot open the log: {e}");
            return 1;
        }
    };
    let helper_env = a
        .helper_env
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let cfg = RecoverdConfig {
        socket: a.socket,
        pnn: a.pnn,
        cluster_lock: a.cluster_lock,
        leader_timeout: Duration::from_millis(a.leader_timeout_ms),
        helper_dir: a.helper_dir,
        recovery_helper: a.recovery_helper,
        state_dir: a.state_dir,
        log_file,
        helper_env,
        failover_disabled: a.failover_disabled,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("recovery daemon: cannot build its runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(run(cfg, a.parent, log)) {
        Ok(()) => 0,
        Err(e) => {
            error!("recovery daemon stopped: {e}");
            1
        }
    }
}

async fn connect(cfg: &RecoverdConfig) -> Client {
    loop {
        match Client::connect(&cfg.socket).await {
            Ok(c) => return c,
            Err(e) => {
                debug!("recovery daemon cannot connect yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Every srvid the recovery daemon listens on.
const SRVIDS: &[u64] = &[
    srvid::LEADER,
    srvid::ELECTION,
    srvid::TAKEOVER_RUN,
    srvid::PUSH_NODE_FLAGS,
    srvid::RELOAD_NODES,
    srvid::DISABLE_TAKEOVER_RUNS,
    srvid::DISABLE_RECOVERIES,
    srvid::DISABLE_IP_CHECK,
    srvid::REBALANCE_NODE,
    srvid::SET_NODE_FLAGS,
    srvid::MEM_DUMP,
];

/// The recovery daemon until SIGTERM (`Ok`) or until its connection to the
/// daemon breaks (`Err`).
async fn run(
    cfg: RecoverdConfig,
    parent: i32,
    log: LogControl,
) -> Result<(), ctdb_client::ClientError> {
    let signal_or_warn = |kind: SignalKind, name: &str| match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!("recovery daemon cannot handle {name}: {e}");
            None
        }
    };
    // Signals are handled by tasks of their own, so that they are seen
    // while the recovery daemon waits on the daemon or a helper.
    if let Some(mut s) = signal_or_warn(SignalKind::terminate(), "SIGTERM") {
        tokio::spawn(async move {
            s.recv().await;
            // Sent by the daemon when it stops or restarts us, or by the
            // kernel when it died (PR_SET_PDEATHSIG). The cluster mutex
            // helper gets SIGTERM as we exit (its own PR_SET_PDEATHSIG,
            // `cluster_mutex.rs`), which releases the lock.
            if nix::unistd::getppid().as_raw() != parent {
                error!("recovery daemon parent died - exiting");
            } else {
                error!("Received SIGTERM, exiting");
            }
            std::process::exit(0);
        });
    }
    if let Some(mut s) = signal_or_warn(SignalKind::hangup(), "SIGHUP") {
        let file = cfg.log_file.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                match &file {
                    // Its standard error (inherited from the daemon: the
                    // file before the rotation) follows too.
                    Some(f) => match f.reopen().and_then(|()| f.redirect_stderr()) {
                        Ok(()) => warn!("Received SIGHUP - reopened {}", f.path().display()),
                        Err(e) => {
                            error!("Received SIGHUP: cannot reopen {}: {e}", f.path().display())
                        }
                    },
                    None => warn!("Received SIGHUP - logging to stderr, nothing to reopen"),
                }
            }
        });
    }
    let client = connect(&cfg).await;
    let tunables = *client.get_all_tunables(CTDB_CURRENT_NODE).await?;
    let client = client.with_timeout(Duration::from_secs(u64::from(
        tunables.recover_timeout.max(1),
    )));
    // All messages into one queue.
    let (tx, mut msgs) = mpsc::unbounded_channel::<Message>();
    for &id in SRVIDS {
        let mut rx = client.register_srvid(id).await?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if tx.send(m).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let banning = client.register_srvid(srvid::BANNING).await?;
    let pnn = cfg.pnn;
    let mut rec = Recoverd {
        cfg,
        client,
        log: Some(log),
        pnn,
        tunables,
        nodemap: NodeMap::default(),
        node_flags: 0,
        caps: HashMap::new(),
        leader: CTDB_UNKNOWN_PNN,
        election_in_progress: false,
        lock: None,
        lock_failures: 0,
        priority_time: Timeval::now(),
        leader_timeout_at: None,
        election_timeout_at: None,
        send_election_at: None,
        need_recovery: false,
        recoveries_disabled_until: None,
        culprits: HashMap::new(),
        last_culprit: pnn,
        takeover_requests: Vec::new(),
        takeover: takeover_run::TakeoverRuns::default(),
        frozen_on_inactive: false,
        links_waiting_since: None,
        recover_once_links_up: false,
        banning,
    };
    info!(
        "Recovery daemon started (pnn {pnn}, pid {})",
        std::process::id()
    );
    let mut next_main = Instant::now();
    let mut next_broadcast = Instant::now() + Duration::from_secs(1);
    let far = Duration::from_secs(3600);
    loop {
        let now = Instant::now();
        let leader_to = rec.leader_timeout_at.unwrap_or(now + far);
        let election_to = rec.election_timeout_at.unwrap_or(now + far);
        let send_election = rec.send_election_at.unwrap_or(now + far);
        let lock_lost = async {
            match rec.lock.as_mut() {
                Some(h) => h.lost().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            m = msgs.recv() => {
                let Some(m) = m else { return Err(ctdb_client::ClientError::Disconnected) };
                rec.on_message(m).await;
            }
            m = rec.banning.recv() => {
                let Some(m) = m else { return Err(ctdb_client::ClientError::Disconnected) };
                rec.banning_message(&m.data);
            }
            _ = lock_lost => {
                rec.lost_cluster_lock().await;
            }
            _ = tokio::time::sleep_until(next_main.into()) => {
                rec.main_loop().await;
                let interval = Duration::from_secs(u64::from(rec.tunables.recover_interval.max(1)));
                next_main = Instant::now() + interval;
            }
            _ = tokio::time::sleep_until(next_broadcast.into()) => {
                rec.leader_broadcast_tick().await;
                next_broadcast = Instant::now() + Duration::from_secs(1);
            }
            _ = tokio::time::sleep_until(leader_to.into()) => {
                handle_queued(&mut rec, &mut msgs).await;
                if expired(rec.leader_timeout_at) {
                    rec.leader_timeout_at = None;
                    info!("Leader broadcast timeout");
                    rec.force_election().await;
                }
            }
            _ = tokio::time::sleep_until(election_to.into()) => {
                handle_queued(&mut rec, &mut msgs).await;
                if expired(rec.election_timeout_at) {
                    rec.election_timeout_at = None;
                    rec.election_timeout().await;
                }
            }
            _ = tokio::time::sleep_until(send_election.into()) => {
                rec.send_election_at = None;
                rec.send_election_request();
            }
        }
        if rec.client.is_closed() {
            return Err(ctdb_client::ClientError::Disconnected);
        }
    }
}

/// Whether a timeout set for `at` is due.
fn expired(at: Option<Instant>) -> bool {
    at.is_some_and(|t| t <= Instant::now())
}

/// Handles the messages that were queued before a timeout came due: a
/// timeout may have passed while the loop was busy (the leader running a
/// recovery that outlasts `leader timeout`), and what arrived meanwhile,
/// such as the leader's broadcasts, including its own, must count before
/// the timeout does, as it would have had it been read on time. Only what
/// is queued now, so a steady stream of messages cannot hold the timeout
/// off for ever.
async fn handle_queued(rec: &mut Recoverd, msgs: &mut mpsc::UnboundedReceiver<Message>) {
    // The tasks that move messages from each srvid's channel to the
    // queue run first.
    tokio::task::yield_now().await;
    for _ in 0..msgs.len() {
        match msgs.try_recv() {
            Ok(m) => rec.on_message(m).await,
            Err(_) => break,
        }
    }
}
