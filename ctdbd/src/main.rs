//! `ctdbd`: see the library's documentation.

use clap::Parser;

fn main() {
    let args = ctdbd::startup::Args::parse();
    if let Err(e) = ctdbd::startup::main(args) {
        eprintln!("ctdbd: {e:#}");
        std::process::exit(1);
    }
}
