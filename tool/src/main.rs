//! `ctdb`: the CTDB admin tool, command- and output-compatible with CTDB
//! 4.17's.
//!
//! * [`options`]: global options, parsed as popt does, and usage texts;
//! * [`commands`]: the command table and dispatch;
//! * [`ctx`]: a connected run (controls, node map, leader);
//! * [`format`]: output formats and argument parsing shared by commands;
//! * `cmd_*`: the commands, by area (nodes, databases, records and
//!   backups, public addresses, the rest).

mod cmd_db;
mod cmd_dblog;
mod cmd_ip;
mod cmd_misc;
mod cmd_node;
mod cmd_rec;
mod cmd_replica;
mod cmd_waitseqnum;
mod commands;
mod ctx;
mod format;
mod limit;
mod options;
mod progress;
mod tickle;

use std::io::Write;
use std::time::Duration;

use ctdb_client::{Client, Paths};
use options::{Options, ParseOutcome};

fn main() {
    ctdb_protocol::stdio::exit_quietly_on_closed_output();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut opts = match Options::parse(&argv) {
        Ok(o) => o,
        Err(ParseOutcome::Info(text)) => {
            print!("{text}");
            exit(0);
        }
        Err(ParseOutcome::Error(msg)) => {
            eprintln!("{msg}");
            exit(1);
        }
    };
    if opts.maxruntime == 0 {
        opts.maxruntime = match std::env::var("CTDB_TIMEOUT") {
            Ok(v) => match format::parse_standard_ulong(&v, 0) {
                Some(n) => n as i64,
                None => {
                    eprintln!("Invalid value CTDB_TIMEOUT");
                    exit(1);
                }
            },
            Err(_) => 120,
        };
    }
    if opts.args.is_empty() {
        options::usage(None);
    }
    let name = opts.args[0].clone();
    let Some(cmd) = commands::find(&name) else {
        eprintln!("Unknown command '{name}'");
        exit(1);
    };

    // Give up after the maximum run time, as the reference does.
    limit::start(opts.maxruntime.max(0) as u64);

    let args: Vec<String> = opts.args[1..].to_vec();
    if cmd.without_daemon {
        if opts.pnn != -1 {
            eprintln!("Cannot specify node for command {}", cmd.name);
            exit(1);
        }
        let ret = commands::run_local(&opts, cmd.name, &args);
        exit(ret);
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let ret = rt.block_on(connected(opts, cmd, args));
    exit(ret);
}

/// Flushes stdout and exits with `ret` (-1 becomes 1, as in the reference).
fn exit(ret: i32) -> ! {
    limit::wait_if_fired();
    let _ = std::io::stdout().flush();
    std::process::exit(if ret == -1 { 1 } else { ret });
}

async fn connected(opts: Options, cmd: &'static commands::Command, args: Vec<String>) -> i32 {
    let socket = match Paths::from_env() {
        Ok(p) => p.socket("ctdbd"),
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let timeout = Duration::from_secs(opts.timelimit.max(0) as u64);
    let client = match Client::connect(&socket).await {
        Ok(c) => c.with_timeout(timeout),
        Err(e) => {
            if let ctdb_client::ClientError::Connect { source, .. } = &e {
                eprintln!(
                    "connect() failed, errno={}",
                    source.raw_os_error().unwrap_or(0)
                );
            }
            eprintln!("Failed to connect to CTDB daemon ({})", socket.display());
            if !cmd_node::find_node_xpnn() {
                eprintln!("Is this node part of CTDB cluster?");
            }
            return 1;
        }
    };
    let mut ctx = ctx::Ctx::new(opts, client);
    let pnn = ctx.opts.pnn;
    if pnn != -1 {
        if !cmd_node::verify_pnn(&mut ctx, pnn).await {
            return 1;
        }
        ctx.cmd_pnn = ctx.opts.pnn as u32;
    }
    if !cmd.remote && ctx.pnn != ctx.cmd_pnn {
        eprintln!("Node cannot be specified for command {}", cmd.name);
        return 1;
    }
    if !ctx.setup_leader_handler().await {
        eprintln!("Failed to setup leader handler");
        return 1;
    }
    commands::run(&mut ctx, cmd.name, &args).await
}
