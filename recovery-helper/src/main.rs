//! `ctdb_recovery_helper <write-fd> <socket-path> <generation>`: see the
//! library's documentation.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, bail};
use ctdb_client::Client;
use ctdb_recovery_helper::{Options, log, recovery, trace, trace_event};

/// Parses a number as C's `strtoul(s, NULL, 0)` would: `0x` for
/// hexadecimal, a leading `0` for octal, decimal otherwise.
fn parse_c_u32(s: &str) -> Option<u32> {
    let s = s.trim();
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(h, 16).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        u32::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse().ok()
    }
}

/// Writes the success status (the int 0) to the daemon's pipe.
///
/// The fd is inherited; it is reopened through /proc rather than adopted,
/// which needs no `unsafe`.
fn write_status(fd: i32) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{fd}"))
        .with_context(|| format!("cannot open status fd {fd}"))?;
    f.write_all(&0i32.to_ne_bytes())
        .with_context(|| format!("cannot write status to fd {fd}"))
}

fn run(fd: i32, socket: &str, generation: u32) -> anyhow::Result<()> {
    let opts = Options::from_env();
    trace::init(opts.trace.as_deref());
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 4);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .max_blocking_threads(2 * workers)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async {
        let client = Client::connect(socket)
            .await
            .with_context(|| format!("cannot connect to {socket}"))?;
        tracing::info!("Recovering to generation {generation} (ctdb-rs helper)");
        recovery::run(client, socket.into(), generation, opts).await?;
        anyhow::Ok(())
    })?;
    // The daemon kills the helper as soon as it has read the status, so
    // everything else must be said before.
    ctdb_recovery_helper::catchup::trace_io();
    let rss = trace::peak_rss_kib().unwrap_or(0);
    trace_event!("exit", "status=0 peak_rss_kib={rss}");
    tracing::debug!("recovery done, peak memory {rss} KiB");
    write_status(fd)
}

fn main() -> ExitCode {
    ctdb_protocol::stdio::exit_quietly_on_closed_output();
    let args: Vec<String> = std::env::args().collect();
    // ctdbd asks which ctdb-rs protocols this helper speaks: the copy
    // epochs of keyed databases (ctdbd/src/db/keyed_recovery.rs).
    if args.len() == 2 && args[1] == "--ctdb-rs-features" {
        println!("keyed-copy-epoch");
        return ExitCode::SUCCESS;
    }
    if args.len() != 4 {
        eprintln!(
            "\nUsage: {} <output-fd> <ctdb-socket-path> <generation>",
            args.first()
                .map(String::as_str)
                .unwrap_or("ctdb_recovery_helper")
        );
        return ExitCode::from(1);
    }
    log::init();
    let parsed = (|| {
        let fd: i32 = args[1]
            .trim()
            .parse()
            .with_context(|| format!("invalid output fd {:?}", args[1]))?;
        let Some(generation) = parse_c_u32(&args[3]) else {
            bail!("unable to initialize generation from {:?}", args[3]);
        };
        anyhow::Ok((fd, generation))
    })();
    let result = parsed.and_then(|(fd, generation)| run(fd, &args[2], generation));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let rss = trace::peak_rss_kib().unwrap_or(0);
            trace_event!("exit", "status=1 peak_rss_kib={rss}");
            tracing::error!("database recovery failed: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_c_u32;

    #[test]
    fn generations_parse_like_strtoul() {
        assert_eq!(parse_c_u32("123"), Some(123));
        assert_eq!(parse_c_u32("0x1f"), Some(31));
        assert_eq!(parse_c_u32("010"), Some(8));
        assert_eq!(parse_c_u32("0"), Some(0));
        assert_eq!(parse_c_u32("4294967295"), Some(u32::MAX));
        assert_eq!(parse_c_u32("junk"), None);
    }
}
