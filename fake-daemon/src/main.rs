//! `fake_ctdbd -d LEVEL -s SOCKET -p PIDFILE -D DBDIR < state`
//!
//! Reads a cluster state from standard input, listens on SOCKET, then puts
//! itself in the background: the command returns once the socket is being
//! served, with the server's pid in PIDFILE. SIGTERM (or a client's
//! `SHUTDOWN` control) stops it and removes SOCKET and PIDFILE.

use std::cell::RefCell;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::exit;
use std::rc::Rc;

use fake_ctdbd::daemon::Daemon;
use fake_ctdbd::state::ClusterState;
use nix::unistd::{ForkResult, fork, pipe};

#[derive(Default)]
struct Options {
    dbdir: Option<String>,
    socket: Option<String>,
    pidfile: Option<String>,
    debug: Option<String>,
}

const HELP: &str = "Usage: fake_ctdbd [OPTION...]
  -D, --dbdir=directory           Database directory
  -s, --socket=filename           Unix domain socket path
  -p, --pidfile=filename          pid file
  -d, --debug=ERR|WARNING|NOTICE|INFO|DEBUG     debug level

Help options:
  -?, --help                      Show this help message
      --usage                     Display brief usage message
";

fn parse_args() -> Options {
    let mut o = Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (a.clone(), None),
        };
        let slot = match name.as_str() {
            "-D" | "--dbdir" => &mut o.dbdir,
            "-s" | "--socket" => &mut o.socket,
            "-p" | "--pidfile" => &mut o.pidfile,
            "-d" | "--debug" => &mut o.debug,
            "-?" | "--help" | "--usage" => {
                print!("{HELP}");
                exit(0);
            }
            _ => {
                eprintln!("Invalid option {a}");
                exit(1);
            }
        };
        let v = match inline.or_else(|| args.next()) {
            Some(v) => v,
            None => {
                eprintln!("Invalid option {a}");
                exit(1);
            }
        };
        *slot = Some(v);
    }
    o
}

fn require(v: Option<String>, what: &str) -> String {
    match v {
        Some(v) => v,
        None => {
            eprintln!("Please specify {what}");
            print!("{HELP}");
            exit(1);
        }
    }
}

/// Maps a CTDB debug level name to a tracing filter.
fn level(s: Option<&str>) -> Option<&'static str> {
    Some(match s.unwrap_or("ERR").to_ascii_uppercase().as_str() {
        "ERR" | "ERROR" | "0" => "error",
        "WARNING" | "1" => "warn",
        "NOTICE" | "2" => "info",
        "INFO" | "3" => "info",
        "DEBUG" | "4" => "debug",
        _ => return None,
    })
}

fn main() {
    ctdb_protocol::stdio::exit_quietly_on_closed_output();
    let o = parse_args();
    let dbdir = PathBuf::from(require(o.dbdir, "database directory"));
    let socket = PathBuf::from(require(o.socket, "socket path"));
    let pidfile = PathBuf::from(require(o.pidfile, "pid file"));
    let Some(filter) = level(o.debug.as_deref()) else {
        eprintln!("Invalid debug level");
        print!("{HELP}");
        exit(1);
    };

    let mut input = String::new();
    if std::io::stdin().read_to_string(&mut input).is_err() {
        eprintln!("Failed to read the cluster state");
        exit(1);
    }
    let st = match ClusterState::parse(&input) {
        Ok(st) => st,
        Err(e) => {
            eprintln!("{e}");
            exit(1);
        }
    };
    if st
        .current()
        .is_some_and(|n| n.flags & ctdb_protocol::types::node_flags::DISCONNECTED != 0)
    {
        // A disconnected current node has no daemon to talk to.
        exit(0);
    }

    let listener = match UnixListener::bind(&socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bind failed - {}: {e}", socket.display());
            exit(1);
        }
    };

    let (rd, wr) = match pipe() {
        Ok(p) => p,
        Err(_) => {
            eprintln!("Failed to create pipe");
            let _ = std::fs::remove_file(&socket);
            exit(1);
        }
    };
    // SAFETY: no other threads exist yet (no runtime has been started), so
    // the child may go on running arbitrary code after the fork.
    match unsafe { fork() } {
        Err(_) => {
            eprintln!("Failed to fork");
            let _ = std::fs::remove_file(&socket);
            exit(1);
        }
        Ok(ForkResult::Child) => {
            drop(rd);
            let code = run_server(st, dbdir, listener, &socket, &pidfile, wr, filter);
            exit(code);
        }
        Ok(ForkResult::Parent { child }) => {
            drop(wr);
            let mut f = std::fs::File::from(rd);
            let mut buf = [0u8; 4];
            if f.read_exact(&mut buf).is_err() {
                eprintln!("Failed to get message from child");
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGTERM);
                exit(1);
            }
            match std::fs::File::create(&pidfile) {
                Ok(mut p) => {
                    let _ = writeln!(p, "{child}");
                }
                Err(_) => {
                    eprintln!("Failed to open pid file {}", pidfile.display());
                    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGTERM);
                    exit(1);
                }
            }
        }
    }
}

/// The background server: opens the databases, tells the parent it is
/// ready, serves until shutdown or SIGTERM, then cleans up.
fn run_server(
    st: ClusterState,
    dbdir: PathBuf,
    listener: UnixListener,
    socket: &std::path::Path,
    pidfile: &std::path::Path,
    ready: OwnedFd,
    filter: &str,
) -> i32 {
    // The daemon cores log what a real node would ("Stopping node", ...)
    // at error level; from a fake that is noise except when debugging.
    let directives = if filter == "debug" {
        filter.to_owned()
    } else {
        format!("{filter},ctdbd=off")
    };
    // Colour only on a terminal: stderr is usually a test's log file.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(directives))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .with_target(false)
        .try_init();
    let cleanup = || {
        let _ = std::fs::remove_file(socket);
        let _ = std::fs::remove_file(pidfile);
    };
    let daemon = match Daemon::new(st, dbdir) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("Failed to set up databases: {e}");
            cleanup();
            return 1;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Failed to start runtime: {e}");
            cleanup();
            return 1;
        }
    };
    let local = tokio::task::LocalSet::new();
    let code = local.block_on(&rt, async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return 1,
            };
        // Ready: the socket is listening and every database is open.
        let mut f = std::fs::File::from(ready);
        if f.write_all(&0i32.to_le_bytes()).is_err() {
            return 1;
        }
        drop(f);
        let shared = Rc::new(RefCell::new(daemon));
        tokio::select! {
            r = fake_ctdbd::server::serve(listener, shared) => {
                if let Err(e) = r {
                    eprintln!("server failed: {e}");
                    return 1;
                }
                0
            }
            _ = term.recv() => 0,
        }
    });
    cleanup();
    code
}
