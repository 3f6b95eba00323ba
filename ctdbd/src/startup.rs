//! Start-up: read the configuration, find this node, bind the sockets,
//! then run the event loop and the transport on one current-thread
//! runtime (the recovery daemon is a process of its own, started by the
//! monitor once `setup` succeeded).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, bail};
use ctdb_protocol::types::Runstate;
use tracing::{error, info, warn};

use crate::config::{self, CTDB_PORT, Config, DaemonPaths, NodeEntry};
use crate::control::Core;
use crate::db::DbConfig;
use crate::db::file::persistent_names;
use crate::logging;
use crate::monitor::{self, Monitor, ScriptEvent};
use crate::node::NodeState;
use crate::recoverd::{self, RecoverdConfig};
use crate::server::{Event, Server, ServerConfig};
use crate::{clients, daemonize, eventd_client, transport, tunables};

/// Command-line options (CTDB's `ctdbd` has just one).
#[derive(Debug, clap::Parser)]
#[command(name = "ctdbd", about = "The ctdb-rs clustered database daemon")]
pub struct Args {
    /// Stay in the foreground.
    #[arg(short, long)]
    pub interactive: bool,
}

/// Everything read before the daemon starts.
pub struct Setup {
    pub paths: DaemonPaths,
    pub config: Config,
    pub warnings: Vec<String>,
    pub nodes: Vec<NodeEntry>,
    pub tunables: ctdb_protocol::types::TunableList,
}

/// Reads and checks the configuration; any problem is an error.
pub fn read_setup() -> anyhow::Result<Setup> {
    let paths = DaemonPaths::from_env()?;
    let (config, warnings) = Config::load(&paths.config_file(), &paths.paths.vardir, &paths.logdir)
        .with_context(|| format!("bad configuration in {}", paths.config_file().display()))?;
    let nodes = config::load_nodes(&paths.nodes_file()).context("bad nodes file")?;
    if let Some(ip) = config.node_address
        && !nodes.iter().any(|n| n.addr == Some(ip))
    {
        bail!("Can not determine PNN - node address {ip} is not in the nodes file");
    }
    let tfile = paths.tunables_file();
    let tunables = match std::fs::read_to_string(&tfile) {
        Ok(text) => tunables::load_file_text(&text).map_err(|errs| {
            anyhow::anyhow!("bad tunables in {}: {}", tfile.display(), errs.join("; "))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => tunables::defaults(),
        Err(e) => bail!("cannot read {}: {e}", tfile.display()),
    };
    Ok(Setup {
        paths,
        config,
        warnings,
        nodes,
        tunables,
    })
}

/// This node's PNN and address: `[cluster] node address`, else the first
/// node address we can listen on.
fn find_self(setup: &Setup) -> anyhow::Result<(u32, IpAddr, tokio::net::TcpListener)> {
    let candidates: Vec<(u32, IpAddr)> = match setup.config.node_address {
        Some(ip) => {
            let pnn = setup
                .nodes
                .iter()
                .position(|n| n.addr == Some(ip))
                .with_context(|| {
                    format!("Can not determine PNN - node address {ip} is not in the nodes file")
                })?;
            vec![(pnn as u32, ip)]
        }
        None => setup
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.addr.map(|a| (i as u32, a)))
            .collect(),
    };
    let mut last = None;
    for (pnn, ip) in candidates {
        match transport::listen(ip) {
            Ok(l) => return Ok((pnn, ip, l)),
            Err(e) => last = Some((ip, e)),
        }
    }
    match last {
        Some((ip, e)) => bail!("Unable to bind to {ip}:{CTDB_PORT}: {e}"),
        None => bail!("No node addresses to bind to"),
    }
}

/// The daemon's `main`.
pub fn main(args: Args) -> anyhow::Result<()> {
    let setup = read_setup()?;
    let socket = setup.paths.socket();
    if !args.interactive {
        return daemonize::background(&socket);
    }
    let foreground = std::env::var_os(daemonize::CHILD_MARKER).is_none();
    let (target, logwarn) =
        logging::log_target(&setup.config.log_location, foreground, &setup.paths.logdir);
    let level = logging::parse_debug_level(&setup.config.log_level).unwrap_or(3);
    let (log, log_file) = logging::init(&target, level).context("cannot open the log")?;
    if let Some(w) = logwarn {
        warn!("{w}");
    }
    for w in &setup.warnings {
        warn!("{w}");
    }
    if setup.config.recovery_lock.is_some() {
        warn!("Configuration option [cluster] -> recovery lock is deprecated");
    }
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let r = rt.block_on(serve(setup, log, log_file, foreground));
    if let Err(e) = &r {
        error!("{e:#}");
    }
    // Dropping the runtime drops every task, and with them the helper
    // processes (the recovery daemon and the cluster lock among them).
    drop(rt);
    r
}

async fn serve(
    setup: Setup,
    log: logging::LogControl,
    log_file: Option<logging::LogFile>,
    foreground: bool,
) -> anyhow::Result<()> {
    info!(
        "Starting CTDBD (ctdb-rs {}) as PID: {}",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    );
    let (pnn, ip, tcp) = find_self(&setup)?;
    info!("PNN is {pnn}");
    // Signal dispositions change here, before the pid file and the socket
    // exist: whoever sees either may send SIGTERM and expect a clean exit.
    let signals = register_signals();
    let pidfile = setup.paths.pidfile();
    if let Some(d) = pidfile.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&pidfile, format!("{}\n", std::process::id()))
        .with_context(|| format!("cannot write {}", pidfile.display()))?;
    let socket = setup.paths.socket();
    let ux = clients::bind(&socket).with_context(|| format!("cannot bind {}", socket.display()))?;

    let cfg = &setup.config;
    let caps = NodeState::capabilities_from_config(cfg.leader_capability, cfg.lmaster_capability);
    let mut node = NodeState::new(pnn, &setup.nodes, caps);
    if cfg.start_as_disabled {
        error!("This node is configured to start in DISABLED state");
        node.disable();
    }
    if cfg.start_as_stopped {
        error!("This node is configured to start in STOPPED state");
        node.stop();
    }
    let lock = cfg.effective_cluster_lock().map(str::to_owned);
    let core = Core::new(
        node,
        setup.tunables,
        log,
        lock.clone(),
        setup.paths.nodes_file(),
    );
    let live = (cfg.metrics_address).map(|_| std::sync::Arc::new(crate::metrics::Live::new()));
    core.stats.set_live(live.clone());
    for d in [
        &cfg.volatile_db_dir,
        &cfg.persistent_db_dir,
        &cfg.state_db_dir,
    ] {
        let _ = std::fs::create_dir_all(d);
    }
    let log_for_recoverd = log_file.clone();
    let log_for_sighup = log_file.clone();
    // Helpers log as the daemon does (CTDB passes this in the environment).
    let helper_env = vec![
        ("CTDB_LOGGING".to_owned(), cfg.log_location.clone()),
        (
            "CTDB_DEBUGLEVEL".to_owned(),
            logging::debug_level_name(server_level(cfg)).to_owned(),
        ),
    ];
    let db_config = database_config(cfg, &core);
    let mut server = Server::new(
        core,
        ServerConfig {
            socket: socket.clone(),
            helper_dir: setup.paths.helper_dir.clone(),
            log_file,
            my_addr: SocketAddr::new(ip, CTDB_PORT),
            helper_env: helper_env.clone(),
            client_queue_limit: cfg.client_queue_limit,
        },
        db_config,
    );
    // As CTDB: the event daemon starts in recovery mode, and `init` runs
    // before the transport and the clients are served.
    let recoverd_cfg = RecoverdConfig {
        socket: socket.clone(),
        pnn,
        cluster_lock: lock,
        leader_timeout: std::time::Duration::from_secs(u64::from(cfg.leader_timeout)),
        helper_dir: setup.paths.helper_dir.clone(),
        recovery_helper: recoverd::recovery_helper_path(&setup.paths.helper_dir),
        state_dir: cfg.state_db_dir.clone(),
        log_file: log_for_recoverd,
        helper_env: helper_env.clone(),
        failover_disabled: cfg.failover_disabled,
    };
    start_monitor(
        &mut server,
        &setup.paths,
        &helper_env,
        foreground,
        recoverd_cfg,
    )
    .await?;
    let public = setup.paths.paths.etcdir.join("public_addresses");
    match crate::takeover::Takeover::load(public, cfg.failover_disabled) {
        Ok(t) => server.install_takeover(t),
        Err(e) => {
            error!("{e}");
            bail!("Unable to setup public IP addresses");
        }
    }
    attach_databases(&mut server, cfg)?;
    let ev = server.events();
    clients::spawn_acceptor(ux, ev.clone());
    if let (Some(addr), Some(live)) = (cfg.metrics_address, live) {
        crate::metrics::spawn(addr, socket.clone(), live)
            .await
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
    }
    transport::spawn_acceptor(tcp, ev.clone());
    server.start_transport();
    spawn_signal_handlers(signals, ev.clone(), log_for_sighup);
    let recovery_helper = recoverd::recovery_helper_path(&setup.paths.helper_dir);
    if !recovery_helper.is_file() {
        warn!(
            "recovery helper {} not found; recoveries will fail",
            recovery_helper.display()
        );
    }
    crate::db::keyed_recovery::note_recovery_helper(&recovery_helper).await;
    // `setup` runs in the background; when it succeeds the recovery
    // daemon starts (monitor.rs).
    let (monitor, core) = server.monitor_mut();
    monitor.start_setup(core);
    server.run().await;
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(&pidfile);
    Ok(())
}

/// Starts the event daemon and runs `init` (CTDB's order: in recovery
/// mode, before the transport starts); either failing stops the daemon.
async fn start_monitor(
    server: &mut Server,
    paths: &DaemonPaths,
    helper_env: &[(String, String)],
    foreground: bool,
    recoverd: RecoverdConfig,
) -> anyhow::Result<()> {
    let mut env = helper_env.to_vec();
    if std::env::var_os("CTDB_BASE").is_none() {
        env.push((
            "CTDB_BASE".to_owned(),
            paths.paths.etcdir.display().to_string(),
        ));
    }
    if foreground {
        env.push(("CTDB_INTERACTIVE".to_owned(), "true".to_owned()));
    }
    let path = eventd_client::find_eventd(&paths.helper_dir);
    let socket = paths.paths.socket("eventd");
    let eventd = match monitor::start_eventd(&path, &socket, std::process::id(), &env).await {
        Ok(e) => e,
        Err(e) => {
            error!("Failed to start event daemon: {e}");
            bail!("Failed to start event daemon");
        }
    };
    let fast_start = std::env::var_os("CTDB_TEST_MODE").is_some();
    let m = Monitor::new(eventd, server.events(), recoverd, fast_start);
    server.install_monitor(m);
    let (monitor, core) = server.monitor_mut();
    core.set_runstate(Runstate::Init);
    if monitor.run_sync(core, ScriptEvent::Init).await != 0 {
        let pid = monitor.eventd_pid();
        error!("ctdb exiting with error: Failed to run init event");
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        bail!("Failed to run init event");
    }
    Ok(())
}

/// Where the database layer keeps its files, and how it opens them.
fn database_config(cfg: &Config, core: &Core) -> DbConfig {
    crate::db::changelog::set_limits(crate::db::changelog::Limits {
        max_bytes: cfg.changelog_max_bytes,
        max_age: std::time::Duration::from_secs(cfg.changelog_max_age.into()),
    });
    DbConfig {
        volatile_dir: cfg.volatile_db_dir.clone(),
        persistent_dir: cfg.persistent_db_dir.clone(),
        state_dir: cfg.state_db_dir.clone(),
        mutexes: cfg.tdb_mutexes && core.tunables.mutex_enabled != 0,
        // This binary again, the running version even after an upgrade
        // replaced the file (as the recovery daemon is started).
        traverse_helper: PathBuf::from(crate::db::traverse::SELF_EXE),
    }
}

/// Attaches the persistent databases found on disk, as CTDB does at
/// start-up: the daemon does not start if the health file or one of them
/// cannot be opened, fails its check or is marked unhealthy
/// (`db::health`).
fn attach_databases(server: &mut Server, cfg: &Config) -> anyhow::Result<()> {
    let (d, env) = server.databases();
    let pnn = env.node.pnn;
    if let Err(e) = d.open_health(pnn) {
        error!("{e}");
        error!("ctdb fatal error: Failed to attach to databases");
        bail!("Failed to attach to databases");
    }
    for name in persistent_names(&cfg.persistent_db_dir, pnn) {
        if let Err(e) = d.attach_existing(&env, &name) {
            error!("{e}");
            error!("Failed to attach to persistent database '{name}'");
            error!("ctdb fatal error: Failed to attach to databases");
            bail!("Failed to attach to databases");
        }
    }
    d.attach_remembered(&env);
    Ok(())
}

/// Many clients mean many descriptors: use the hard limit.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        warn!("cannot raise the open file limit from {soft} to {hard}: {e}");
    }
}

fn server_level(cfg: &Config) -> i32 {
    logging::parse_debug_level(&cfg.log_level).unwrap_or(logging::DEBUG_NOTICE)
}

/// The signals the daemon handles, registered with the runtime (which
/// changes their disposition at once) but not yet read.
struct Signals {
    stop: Vec<(tokio::signal::unix::Signal, &'static str)>,
    hangup: Option<tokio::signal::unix::Signal>,
}

fn register_signals() -> Signals {
    use tokio::signal::unix::{SignalKind, signal};
    let mut stop = Vec::new();
    for (kind, name) in [
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::interrupt(), "SIGINT"),
    ] {
        match signal(kind) {
            Ok(s) => stop.push((s, name)),
            Err(e) => warn!("cannot handle {name}: {e}"),
        }
    }
    // SIGPIPE is ignored by the Rust runtime already; SIGHUP reopens logs
    // in CTDB, here it is simply ignored.
    let hangup = signal(SignalKind::hangup()).ok();
    Signals { stop, hangup }
}

fn spawn_signal_handlers(
    signals: Signals,
    ev: tokio::sync::mpsc::Sender<Event>,
    log: Option<logging::LogFile>,
) {
    for (mut s, name) in signals.stop {
        let ev = ev.clone();
        tokio::spawn(async move {
            if s.recv().await.is_some() {
                let _ = ev.send(Event::Terminate(name)).await;
            }
        });
    }
    // SIGHUP reopens the log file (logrotate's postrotate), as CTDB does,
    // and is passed on to the recovery daemon, which reopens its own.
    if let Some(mut s) = signals.hangup {
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                crate::recoverd::forward_signal(nix::sys::signal::Signal::SIGHUP);
                let Some(log) = &log else {
                    notice_sighup("logging to stderr, nothing to reopen");
                    continue;
                };
                match log.reopen() {
                    Ok(()) => notice_sighup(&format!("reopened {}", log.path().display())),
                    Err(e) => error!(
                        "Received SIGHUP: cannot reopen {}: {e}; still logging to the old file",
                        log.path().display()
                    ),
                }
            }
        });
    }
}

fn notice_sighup(what: &str) {
    tracing::warn!("Received SIGHUP - {what}");
}

/// Where the recovery helper is, for tools and tests.
pub fn helper_dir() -> PathBuf {
    DaemonPaths::from_env()
        .map(|p| p.helper_dir)
        .unwrap_or_else(|_| PathBuf::from("/usr/libexec/ctdb"))
}
