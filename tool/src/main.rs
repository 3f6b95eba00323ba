//! Not built yet: see the project's issues.

fn main() {
    eprintln!("{}: not implemented yet", env!("CARGO_PKG_NAME"));
    std::process::exit(1);
}
