//! `ctdbd`: see the library's documentation.

use clap::Parser;

fn main() {
    ctdb_protocol::stdio::exit_quietly_on_closed_output();
    // The recovery daemon and the cluster mutex helper's exec shim are
    // this program again (before anything else, as they exec or fork
    // nothing of the daemon's).
    let args_os: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match args_os.get(1).and_then(|a| a.to_str()) {
        Some(ctdbd::cluster_mutex::EXEC_ARG) => {
            std::process::exit(ctdbd::cluster_mutex::exec_main(&args_os[2..]))
        }
        Some(ctdbd::recoverd::CHILD_ARG) => {
            std::process::exit(ctdbd::recoverd::child_main(&args_os[2..]))
        }
        _ => {}
    }
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
