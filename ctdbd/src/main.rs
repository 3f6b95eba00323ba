//! `ctdbd`: see the library's documentation.

use clap::Parser;

fn main() {
    ctdb_protocol::stdio::exit_quietly_on_closed_output();
    // A local traverse runs in a helper process: this program again.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(ctdbd::db::traverse::HELPER_ARG) {
        std::process::exit(ctdbd::db::traverse::helper_main(&argv[2..]));
    }
    let args = ctdbd::startup::Args::parse();
    if let Err(e) = ctdbd::startup::main(args) {
        eprintln!("ctdbd: {e:#}");
        std::process::exit(1);
    }
}
