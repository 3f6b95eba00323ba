//! `ctdb_mutex_fcntl_helper FILE [RECHECK_INTERVAL [PING_TIMEOUT]]`: see
//! the library's documentation.

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use ctdb_mutex_helper::args::{Args, usage};
use ctdb_mutex_helper::hold::{self, End};
use ctdb_mutex_helper::lock::{self, Outcome};
use tracing::{error, info};

/// The program's name in log lines (CTDB's helper names itself so too).
const APP: &str = "ctdb_mutex_fcntl_helper";

fn main() -> ExitCode {
    let mut argv = std::env::args_os();
    let prog = argv
        .next()
        .as_deref()
        .and_then(|p| Path::new(p).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| APP.to_owned());
    let rest: Vec<OsString> = argv.collect();
    let Ok(args) = Args::parse(&rest) else {
        eprintln!("{}", usage(&prog));
        return ExitCode::from(1);
    };
    ctdb_logging::init_from_env(APP);
    // Asked before the lock is taken: a parent that is gone by the time
    // the lock is held must not leave it held.
    let ppid = nix::unistd::getppid();
    let outcome = lock::take(&args.file);
    if let Outcome::Error(why) = &outcome {
        error!("{why}");
    }
    let mut out = std::io::stdout();
    if let Err(e) = out
        .write_all(&[outcome.status()])
        .and_then(|()| out.flush())
    {
        // Nobody to tell that the lock is held: let it go.
        error!("cannot write the lock status: {e}");
        return ExitCode::SUCCESS;
    }
    if let Outcome::Taken(held) = outcome {
        match hold::hold(held, ppid, &args, nix::unistd::getppid) {
            End::ParentGone => info!("parent gone"),
            End::Lost(lost) => error!("lock lost - {}", lost.0),
            End::CheckHung(t) => error!(
                "lock check of \"{}\" has not ended after {} s - giving up the lock",
                args.file.display(),
                t.as_secs()
            ),
        }
        // The daemon learns the lock is lost when this end of its pipe
        // closes (and then stops this process: so the reason is logged
        // before). The process's exit closes it, but a check stuck in the
        // file system can hold that exit up (its thread shares the
        // descriptors): so it is closed here.
        let _ = nix::unistd::close(1);
    }
    ExitCode::SUCCESS
}
