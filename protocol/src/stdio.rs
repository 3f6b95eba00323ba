//! How every program of the workspace ends when the reader of its output
//! goes away (`ctdb status | head -1`, `| grep -q OK`): quietly, with the
//! status a shell shows for a process ended by SIGPIPE (141), as CTDB's C
//! programs end, instead of Rust's panic "failed printing to stdout: Broken
//! pipe" and a stack trace.
//!
//! SIGPIPE itself stays ignored (the Rust runtime ignores it, and the
//! daemon relies on that for its sockets and helper pipes); the ending
//! comes from the broken-pipe error instead:
//!
//! * [`exit_quietly_on_closed_output`], called first thing in `main`,
//!   turns the panic of `print!`/`println!`/`eprintln!` on a closed pipe
//!   into that exit;
//! * [`check_output`] does the same for a write whose error the caller
//!   would otherwise drop (a long listing written through a locked or
//!   buffered stdout).

use std::io;

/// The exit status a shell reports for a process killed by SIGPIPE.
pub const CLOSED_OUTPUT_STATUS: i32 = 128 + 13;

/// Installs a panic hook (keeping the previous one for every other panic)
/// under which a failed print to a closed stdout or stderr ends the
/// process quietly with [`CLOSED_OUTPUT_STATUS`].
pub fn exit_quietly_on_closed_output() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if is_closed_output_panic(msg) {
            std::process::exit(CLOSED_OUTPUT_STATUS);
        }
        previous(info);
    }));
}

/// Whether `msg` is the standard library's panic for printing to a closed
/// pipe.
fn is_closed_output_panic(msg: &str) -> bool {
    (msg.starts_with("failed printing to stdout") || msg.starts_with("failed printing to stderr"))
        && (msg.contains("Broken pipe") || msg.contains("(os error 32)"))
}

/// Passes `r` through, except that a broken pipe ends the process quietly
/// with [`CLOSED_OUTPUT_STATUS`].
pub fn check_output<T>(r: io::Result<T>) -> io::Result<T> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => std::process::exit(CLOSED_OUTPUT_STATUS),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_the_broken_pipe_print_panic() {
        assert!(is_closed_output_panic(
            "failed printing to stdout: Broken pipe (os error 32)"
        ));
        assert!(is_closed_output_panic(
            "failed printing to stderr: Broken pipe (os error 32)"
        ));
        assert!(!is_closed_output_panic(
            "failed printing to stdout: No space left on device (os error 28)"
        ));
        assert!(!is_closed_output_panic("index out of bounds: Broken pipe"));
    }

    #[test]
    fn other_errors_pass_through() {
        let e: io::Result<()> = Err(io::Error::other("x"));
        assert!(check_output(e).is_err());
        assert_eq!(check_output(Ok::<_, io::Error>(3)).unwrap(), 3);
    }
}
