//! `ctdb-eventd [-P PID] [-S FD]`: see the crate documentation.

use clap::Parser;

fn main() {
    ctdb_protocol::stdio::exit_quietly_on_closed_output();
    let opts = ctdb_eventd::daemon::Options::parse();
    std::process::exit(ctdb_eventd::daemon::main(opts));
}
