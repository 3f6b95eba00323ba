//! `ctdb-eventd [-P PID] [-S FD]`: see the crate documentation.

use clap::Parser;

fn main() {
    ctdb_protocol::stdio::exit_quietly_on_closed_output();
    // popt's way: a bad option is exit status 1 (help and usage 0).
    let opts = match ctdb_eventd::daemon::Options::try_parse() {
        Ok(o) => o,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { 1 } else { 0 });
        }
    };
    std::process::exit(ctdb_eventd::daemon::main(opts));
}
