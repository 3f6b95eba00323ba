//! Going into the background, without `fork()` in a Rust process: the
//! daemon starts itself again with `--interactive` as a detached child
//! (own process group, stdio on `/dev/null`), waits until that child is
//! serving its socket (or has died, which is reported), and exits.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

/// Set in the child so it knows it was started by [`background`].
pub const CHILD_MARKER: &str = "CTDBD_RS_DAEMONIZED";

/// Starts the detached daemon and waits for it to serve `socket`.
pub fn background(socket: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    args.push("--interactive".into());
    let mut child = Command::new(exe)
        .args(&args)
        .env(CHILD_MARKER, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.try_wait()? {
            anyhow::bail!("ctdbd exited during start-up ({st}); see its log");
        }
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            eprintln!(
                "ctdbd: still starting after 20 s (socket {} not ready); leaving it running",
                socket.display()
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
