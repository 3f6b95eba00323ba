//! Start-up and life of the daemon, as `ctdbd` 4.17 runs its event daemon:
//! `ctdb-eventd -P <ctdbd pid> -S <fd>`.
//!
//! * The pid file `RUNDIR/eventd.pid` is created and locked (a second
//!   daemon for the same directory refuses to start); the socket
//!   `RUNDIR/eventd.socket` is replaced.
//! * Once listening, four zero bytes (an `unsigned int` 0) are written to
//!   the start-up descriptor. The descriptor itself stays open until the
//!   daemon exits, so the parent sees end-of-file when it goes.
//! * The `-P` pid is checked after one second and then every five; when it
//!   is gone the daemon shuts down (exit status `ESRCH`).
//! * SIGTERM or SIGINT: shut down (exit status 0); SIGUSR1: re-read
//!   `ctdb.conf` (the debug script); SIGHUP: nothing to reopen here.
//! * Shutting down removes the socket and the pid file and kills the
//!   process group of every script still running.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::config::{EventConfig, EventdPaths};
use crate::runner::EventContext;

/// Command line, as 4.17's `ctdb-eventd` takes it.
#[derive(Debug, Parser)]
#[command(name = "ctdb-eventd", about = "CTDB event daemon")]
pub struct Options {
    /// pid to wait for
    #[arg(short = 'P', long = "pid", value_name = "PID")]
    pub pid: Option<i32>,
    /// file descriptor to notify of successful start
    #[arg(short = 'S', long = "startup-fd", value_name = "FD")]
    pub startup_fd: Option<i32>,
}

/// Runs the daemon; returns the exit status.
pub fn main(opts: Options) -> i32 {
    let paths = match EventdPaths::from_env() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ctdb-eventd: {e}");
            return 1;
        }
    };
    let interactive = std::env::var_os("CTDB_INTERACTIVE").is_some();
    let config = EventConfig::load(&paths.config_file(), &paths.etcdir);
    // As 4.17: interactive logs NOTICE to stderr; otherwise ctdb.conf's
    // [logging], defaulting to ERROR in LOGDIR/log.ctdb.
    let (location, level) = match (&config, interactive) {
        (Ok(c), false) => (
            c.log_location
                .clone()
                .unwrap_or_else(|| crate::logging::DEFAULT_LOCATION.into()),
            c.log_level.clone().unwrap_or_else(|| "ERROR".into()),
        ),
        _ => ("file:".into(), "NOTICE".into()),
    };
    let level = crate::logging::level_from_ctdb(&level).unwrap_or(tracing::Level::ERROR);
    crate::logging::init(Some(&location), level);
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            error!("Failed to initialize event config: {e}");
            return libc::EINVAL;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("Failed to initialize the event loop: {e}");
            return 1;
        }
    };
    let local = tokio::task::LocalSet::new();
    let code = local.block_on(&rt, run(opts, paths, config));
    crate::proc::kill_all(Signal::SIGKILL);
    code
}

/// The locked pid file; removed on drop.
struct PidFile {
    path: PathBuf,
    _file: std::fs::File,
}

impl PidFile {
    fn create(path: &Path) -> std::io::Result<PidFile> {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)?;
        let lock = libc::flock {
            l_type: libc::F_WRLCK as i16,
            l_whence: libc::SEEK_SET as i16,
            l_start: 0,
            l_len: 0,
            l_pid: 0,
        };
        nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_SETLK(&lock))
            .map_err(std::io::Error::from)?;
        f.set_len(0)?;
        writeln!(f, "{}", std::process::id())?;
        Ok(PidFile {
            path: path.to_owned(),
            _file: f,
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes an `unsigned int` 0 to the start-up descriptor, through a second
/// descriptor so that the inherited one stays open as it is.
fn notify_started(fd: i32) {
    let r = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{fd}"))
        .and_then(|mut f| f.write_all(&0u32.to_ne_bytes()));
    if let Err(e) = r {
        warn!("Failed to write zero to pipe FD: {e}");
    }
}

/// Waits until `pid` is gone: checks after 1 s, then every 5 s.
async fn watch_pid(pid: Option<i32>) {
    let Some(pid) = pid.filter(|&p| p > 1) else {
        return std::future::pending().await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    loop {
        match nix::sys::signal::kill(Pid::from_raw(pid), None) {
            Err(nix::errno::Errno::ESRCH) => {
                error!("PID {pid} gone away, exiting");
                return;
            }
            Err(e) => error!("Failed to check PID status {pid}, ret={}", e as i32),
            Ok(()) => {}
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

async fn run(opts: Options, paths: EventdPaths, config: EventConfig) -> i32 {
    let pidfile = match PidFile::create(&paths.pidfile()) {
        Ok(p) => p,
        Err(e) => {
            error!(
                "Failed to create pid file {}: {e}",
                paths.pidfile().display()
            );
            return libc::EEXIST;
        }
    };
    let (mut term, mut int, mut hup, mut usr1) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined1()),
    ) {
        (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
        _ => {
            error!("Failed to set up signal handlers");
            return 1;
        }
    };
    info!("daemon started, pid={}", std::process::id());
    let ctx = EventContext::new(paths.script_dir(), config.debug_program(&paths.etcdir));
    info!("startup completed successfully");

    let sock = paths.socket();
    let _ = std::fs::remove_file(&sock);
    let listener = match tokio::net::UnixListener::bind(&sock) {
        Ok(l) => l,
        Err(e) => {
            error!("Failed to setup socket {}: {e}", sock.display());
            return 1;
        }
    };
    info!("listening on {}", sock.display());
    if let Some(fd) = opts.startup_fd {
        notify_started(fd);
    }

    let serve = crate::server::serve(ctx.clone(), listener);
    tokio::pin!(serve);
    let watch = watch_pid(opts.pid);
    tokio::pin!(watch);
    let code = loop {
        tokio::select! {
            e = &mut serve => {
                error!("socket {} closed unexpectedly: {e}", sock.display());
                break e.raw_os_error().unwrap_or(1);
            }
            _ = &mut watch => break libc::ESRCH,
            _ = term.recv() => { info!("Received signal 15"); break 0; }
            _ = int.recv() => { info!("Received signal 2"); break 0; }
            _ = hup.recv() => info!("Received signal 1"),
            _ = usr1.recv() => {
                info!("Received signal 10");
                match EventConfig::load(&paths.config_file(), &paths.etcdir) {
                    Ok(c) => {
                        ctx.set_debug_prog(c.debug_program(&paths.etcdir));
                        info!("reconfigure completed successfully");
                    }
                    Err(e) => warn!("Configuration reload failed: {e}"),
                }
            }
        }
    };
    info!("Shutting down");
    let _ = std::fs::remove_file(&sock);
    crate::proc::kill_all(Signal::SIGKILL);
    drop(pidfile);
    code
}
