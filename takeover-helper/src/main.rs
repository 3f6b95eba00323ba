//! `ctdb_takeover_helper <write-fd> <socket-path> [<force-rebalance-nodes>]`:
//! see the library's documentation.

use std::io::Write;
use std::process::ExitCode;

use ctdb_client::Client;
use ctdb_takeover_helper::run::{self, Failed, Options};

/// C's `atoi`: leading blanks, an optional sign, then digits; anything
/// else ends the number (no digits: 0).
fn atoi(s: &str) -> i32 {
    let s = s.trim_start();
    let (neg, rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let v = digits.parse::<i64>().unwrap_or(0);
    (if neg { -v } else { v }) as i32
}

/// The force-rebalance list: PNNs separated by commas.
fn parse_nodes(s: &str) -> Vec<u32> {
    s.split(',')
        .filter(|t| !t.is_empty())
        .map(|t| atoi(t) as u32)
        .collect()
}

/// Writes the run's result to the daemon's pipe. The fd is inherited; it is
/// reopened through /proc rather than adopted, which needs no `unsafe`.
fn write_status(fd: i32, ret: i32) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{fd}"));
    match f {
        Ok(mut f) => {
            if let Err(e) = f.write_all(&ret.to_ne_bytes()) {
                tracing::error!("cannot write the status to fd {fd}: {e}");
            }
        }
        Err(e) => tracing::error!("cannot open status fd {fd}: {e}"),
    }
}

fn takeover(socket: &str, opts: &Options) -> Result<(), Failed> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            tracing::error!("cannot start the runtime: {e}");
            Failed(libc::ENOMEM)
        })?;
    rt.block_on(async {
        let client = Client::connect(socket).await.map_err(|e| {
            let ret = run::error_code(&e);
            tracing::error!("ctdb_client_init() failed, ret={ret}: {e}");
            Failed(ret)
        })?;
        tracing::debug!("takeover run on node {} (ctdb-rs helper)", client.pnn());
        run::run(client, opts).await
    })
}

fn main() -> ExitCode {
    ctdb_protocol::stdio::exit_quietly_on_closed_output();
    let args: Vec<String> = std::env::args().collect();
    if !(3..=4).contains(&args.len()) {
        eprintln!(
            "\nUsage: {} <output-fd> <ctdb-socket-path> [<force-rebalance-nodes>]",
            args.first()
                .map(String::as_str)
                .unwrap_or("ctdb_takeover_helper")
        );
        return ExitCode::from(1);
    }
    ctdb_recovery_helper::log::init_as("ctdb-takeover");
    let fd = atoi(&args[1]);
    let opts = Options {
        force_rebalance: args.get(3).map(|s| parse_nodes(s)),
        failover_disabled: std::env::var_os("CTDB_DISABLE_IP_FAILOVER").is_some(),
    };
    let ret = match takeover(&args[2], &opts) {
        Ok(()) => 0,
        Err(Failed(ret)) => {
            tracing::error!("takeover run failed, ret={ret}");
            ret
        }
    };
    write_status(fd, ret);
    ExitCode::from(ret as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parse_like_atoi() {
        assert_eq!(atoi("3"), 3);
        assert_eq!(atoi(" 12x"), 12);
        assert_eq!(atoi("-1"), -1);
        assert_eq!(atoi("junk"), 0);
        assert_eq!(parse_nodes("0,2,,5"), vec![0, 2, 5]);
        assert_eq!(parse_nodes(""), Vec::<u32>::new());
    }
}
