//! `ctdb-test-client PROGRAM ARGS...`: the whole-cluster tests' client
//! programs in one binary (each was a binary of its own, and each compiled
//! the client library's async code again). PROGRAM names one, as it
//! appears in process listings:
//!
//! * `ctdb-increment` ([`increment`]): increments a counter record;
//! * `ctdb-inmem-increment` ([`inmem_increment`]): the no-lost-updates
//!   client of in-memory and keyed databases;
//! * `ctdb-contend` ([`contend`]): contends for one record (lock fairness);
//! * `ctdb-glock-hold` ([`glock_hold`]): holds a g_lock until told;
//! * `ctdb-tickle-server` ([`tickle_server`]): registers TCP connections as
//!   smbd does.
//!
//! The tests start them with `ctdb_tests::test_client(PROGRAM)`.

mod contend;
mod glock_hold;
mod increment;
mod inmem_increment;
mod tickle_server;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let program = if args.is_empty() {
        String::new()
    } else {
        args.remove(0)
    };
    match program.as_str() {
        "ctdb-increment" => increment::main(args),
        "ctdb-inmem-increment" => inmem_increment::main(args),
        "ctdb-contend" => contend::main(args),
        "ctdb-glock-hold" => glock_hold::main(args),
        "ctdb-tickle-server" => tickle_server::main(args),
        _ => {
            eprintln!(
                "usage: ctdb-test-client ctdb-increment|ctdb-inmem-increment|ctdb-contend|ctdb-glock-hold|ctdb-tickle-server ARGS..."
            );
            std::process::exit(2);
        }
    }
}
