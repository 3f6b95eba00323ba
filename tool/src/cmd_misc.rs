//! Tunables, statistics, debug levels, memory dumps, helper programs, and
//! the commands that need no daemon.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};

use ctdb_protocol::header::CTDB_PROTOCOL;
use ctdb_protocol::message::srvid;
use ctdb_protocol::types::{LatencyCounter, SrvidMessage, Statistics, Tunable};
use ctdb_protocol::{ControlReply as R, ControlRequest as Q, Marshal};

use crate::ctx::Ctx;
use crate::format;
use crate::options::usage;

/// The version the tool reports.
pub const VERSION: &str = "4.17.12-Debian";

pub fn version() -> i32 {
    println!("{VERSION}");
    0
}

/// CTDB's debug levels: (level, name), in its lookup order.
const LEVELS: &[(u32, &str)] = &[
    (0, "ERROR"),
    (1, "WARNING"),
    (2, "WARNING"),
    (3, "NOTICE"),
    (4, "NOTICE"),
    (5, "INFO"),
    (6, "INFO"),
    (7, "INFO"),
    (8, "INFO"),
    (9, "INFO"),
    (10, "DEBUG"),
];

/// Parses a debug level: a number below 11, or a (prefix of a) name.
pub fn debug_level_parse(s: &str) -> Option<u32> {
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        let l = format::atoi(s);
        return (0..LEVELS.len() as i64).contains(&l).then_some(l as u32);
    }
    LEVELS
        .iter()
        .find(|(_, n)| n.len() >= s.len() && n[..s.len()].eq_ignore_ascii_case(s))
        .map(|(l, _)| *l)
}

fn debug_level_name(l: u32) -> &'static str {
    LEVELS
        .iter()
        .find(|(x, _)| *x == l)
        .map_or("UNKNOWN", |(_, n)| n)
}

async fn list_tunables(ctx: &Ctx) -> Result<Vec<String>, i32> {
    match ctx.ctrl(ctx.cmd_pnn, Q::ListTunables).await {
        Ok(Some(R::ListTunables(v))) => Ok(v.names().map(str::to_owned).collect()),
        Ok(_) => Err(1),
        Err(e) => Err(e),
    }
}

async fn getvar_one(ctx: &Ctx, name: &str) -> i32 {
    let names = match list_tunables(ctx).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("Failed to get list of variables from node {}", ctx.cmd_pnn);
            return e;
        }
    };
    if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
        println!("No such tunable {name}");
        return 1;
    }
    let req = Q::GetTunable(ctdb_protocol::control::TunableName(name.to_owned()));
    match ctx.ctrl(ctx.cmd_pnn, req).await {
        Ok(Some(R::GetTunable(v))) => {
            println!("{name:<26} = {v}");
            0
        }
        Ok(_) => 1,
        Err(e) => e,
    }
}

pub async fn getvar(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() != 1 {
        usage(Some("getvar"));
    }
    getvar_one(ctx, &args[0]).await
}

pub async fn setvar(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() != 2 {
        usage(Some("setvar"));
    }
    let names = match list_tunables(ctx).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("Failed to get list of variables from node {}", ctx.cmd_pnn);
            return e;
        }
    };
    if !names.iter().any(|n| n.eq_ignore_ascii_case(&args[0])) {
        println!("No such tunable {}", args[0]);
        return 1;
    }
    let Some(value) = format::parse_standard_ulong(&args[1], 0) else {
        return 22;
    };
    let t = Tunable {
        name: args[0].clone(),
        value: value as u32,
    };
    match ctx.ctrl(ctx.cmd_pnn, Q::SetTunable(t)).await {
        Ok(_) => 0,
        Err(1) => {
            eprintln!("Setting obsolete tunable variable '{}'", args[0]);
            0
        }
        Err(e) => e,
    }
}

pub async fn listvars(ctx: &mut Ctx, args: &[String]) -> i32 {
    if !args.is_empty() {
        usage(Some("listvars"));
    }
    let names = match list_tunables(ctx).await {
        Ok(n) => n,
        Err(e) => return e,
    };
    for n in names {
        getvar_one(ctx, &n).await;
    }
    0
}

/// The counters `statistics` shows, with their dotted names.
fn stats_fields(s: &Statistics) -> Vec<(&'static str, u32)> {
    vec![
        ("num_clients", s.num_clients),
        ("frozen", s.frozen),
        ("recovering", s.recovering),
        ("num_recoveries", s.num_recoveries),
        ("client_packets_sent", s.client_packets_sent),
        ("client_packets_recv", s.client_packets_recv),
        ("node_packets_sent", s.node_packets_sent),
        ("node_packets_recv", s.node_packets_recv),
        ("keepalive_packets_sent", s.keepalive_packets_sent),
        ("keepalive_packets_recv", s.keepalive_packets_recv),
        ("node.req_call", s.node.req_call),
        ("node.reply_call", s.node.reply_call),
        ("node.req_dmaster", s.node.req_dmaster),
        ("node.reply_dmaster", s.node.reply_dmaster),
        ("node.reply_error", s.node.reply_error),
        ("node.req_message", s.node.req_message),
        ("node.req_control", s.node.req_control),
        ("node.reply_control", s.node.reply_control),
        ("node.req_tunnel", s.node.req_tunnel),
        ("client.req_call", s.client.req_call),
        ("client.req_message", s.client.req_message),
        ("client.req_control", s.client.req_control),
        ("client.req_tunnel", s.client.req_tunnel),
        ("timeouts.call", s.timeouts.call),
        ("timeouts.control", s.timeouts.control),
        ("timeouts.traverse", s.timeouts.traverse),
        ("locks.num_calls", s.locks.num_calls),
        ("locks.num_current", s.locks.num_current),
        ("locks.num_pending", s.locks.num_pending),
        ("locks.num_failed", s.locks.num_failed),
        ("total_calls", s.total_calls),
        ("pending_calls", s.pending_calls),
        ("childwrite_calls", s.childwrite_calls),
        ("pending_childwrite_calls", s.pending_childwrite_calls),
        ("memory_used", s.memory_used),
        ("max_hop_count", s.max_hop_count),
        ("total_ro_delegations", s.total_ro_delegations),
        ("total_ro_revokes", s.total_ro_revokes),
    ]
}

fn avg(l: &LatencyCounter) -> f64 {
    if l.num != 0 {
        l.total / l.num as f64
    } else {
        0.0
    }
}

/// Prints counters with their group headings (`node`, `client`, ...).
pub fn print_fields(fields: &[(&str, u32)]) {
    let mut prefix: Option<&str> = None;
    for (name, v) in fields {
        match name.split_once('.') {
            Some((group, field)) => {
                if prefix != Some(group) {
                    prefix = Some(group);
                    println!(" {group}");
                }
                println!("     {field:<22}{v:>10}");
            }
            None => println!(" {name:<22}    {v:>10}"),
        }
    }
}

fn latency_line(label: &str, l: &LatencyCounter) {
    println!(
        " {label:<30}     {:.6}/{:.6}/{:.6} sec out of {}",
        l.min,
        avg(l),
        l.max,
        l.num
    );
}

fn print_statistics(s: &Statistics) {
    let cur = s.statistics_current_time.sec;
    let start = s.statistics_start_time.sec;
    println!("CTDB version {CTDB_PROTOCOL}");
    print!(
        "Current time of statistics  :                {}",
        format::ctime(cur)
    );
    print!(
        "Statistics collected since  : {} {}",
        format::duration(cur - start),
        format::ctime(start)
    );
    print_fields(&stats_fields(s));
    let buckets = |b: &[u32]| {
        b.iter()
            .map(|v| format!(" {}", *v as i32))
            .collect::<String>()
    };
    println!(" hop_count_buckets:{}", buckets(&s.hop_count_bucket));
    println!(" lock_buckets:{}", buckets(&s.locks.buckets));
    latency_line("locks_latency      MIN/AVG/MAX", &s.locks.latency);
    latency_line("reclock_ctdbd      MIN/AVG/MAX", &s.reclock_ctdbd);
    latency_line("reclock_recd       MIN/AVG/MAX", &s.reclock_recd);
    latency_line("call_latency       MIN/AVG/MAX", &s.call_latency);
    latency_line("childwrite_latency MIN/AVG/MAX", &s.childwrite_latency);
}

fn print_statistics_machine(sep: &str, s: &Statistics, header: bool) {
    let fields = stats_fields(s);
    let mut out = String::new();
    if header {
        out.push_str(&format!(
            "CTDB version{sep}Current time of statistics{sep}Statistics collected since{sep}"
        ));
        for (n, _) in &fields {
            out.push_str(&format!("{n}{sep}"));
        }
        for what in [
            "reclock_ctdbd",
            "reclock_recd",
            "call",
            "lockwait",
            "childwrite",
        ] {
            for k in ["num", "min", "avg", "max"] {
                out.push_str(&format!("{k}_{what}_latency{sep}"));
            }
        }
        String::push(&mut out, '\n');
    }
    out.push_str(&format!(
        "{CTDB_PROTOCOL}{sep}{}{sep}{}{sep}",
        s.statistics_current_time.sec as u32, s.statistics_start_time.sec as u32
    ));
    for (_, v) in &fields {
        out.push_str(&format!("{v}{sep}"));
    }
    for (l, signed) in [
        (&s.reclock_ctdbd, false),
        (&s.reclock_recd, false),
        (&s.call_latency, true),
        (&s.locks.latency, false),
        (&s.childwrite_latency, true),
    ] {
        if signed {
            out.push_str(&format!("{}{sep}", l.num));
        } else {
            out.push_str(&format!("{}{sep}", l.num as u32));
        }
        out.push_str(&format!(
            "{:.6}{sep}{:.6}{sep}{:.6}{sep}",
            l.min,
            avg(l),
            l.max
        ));
    }
    println!("{out}");
}

pub async fn statistics(ctx: &mut Ctx, args: &[String]) -> i32 {
    if !args.is_empty() {
        usage(Some("statistics"));
    }
    match ctx.ctrl(ctx.cmd_pnn, Q::Statistics).await {
        Ok(Some(R::Statistics(s))) => {
            if ctx.opts.machinereadable {
                print_statistics_machine(&ctx.opts.sep, &s, true);
            } else {
                print_statistics(&s);
            }
            0
        }
        Ok(_) => 1,
        Err(e) => e,
    }
}

pub async fn statistics_reset(ctx: &mut Ctx, args: &[String]) -> i32 {
    if !args.is_empty() {
        usage(Some("statisticsreset"));
    }
    match ctx.ctrl(ctx.cmd_pnn, Q::StatisticsReset).await {
        Ok(_) => 0,
        Err(e) => e,
    }
}

pub async fn stats(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() > 1 {
        usage(Some("stats"));
    }
    let count = args.first().map_or(0, |a| format::atoi(a));
    let list = match ctx.ctrl(ctx.cmd_pnn, Q::GetStatHistory).await {
        Ok(Some(R::GetStatHistory(l))) => l,
        Ok(_) => return 1,
        Err(e) => return e,
    };
    let mut header = true;
    for (i, s) in list.stats.iter().enumerate() {
        if s.statistics_start_time.sec == 0 {
            continue;
        }
        if ctx.opts.machinereadable {
            print_statistics_machine(&ctx.opts.sep, s, header);
            header = false;
        } else {
            print_statistics(s);
        }
        if count > 0 && i as i64 == count {
            break;
        }
    }
    0
}

pub async fn setdebug(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() != 1 {
        usage(Some("setdebug"));
    }
    let Some(level) = debug_level_parse(&args[0]) else {
        eprintln!("Invalid debug level '{}'. Valid levels are:", args[0]);
        eprintln!("\tERROR | WARNING | NOTICE | INFO | DEBUG");
        return 1;
    };
    match ctx.ctrl(ctx.cmd_pnn, Q::SetDebug(level)).await {
        Ok(_) => 0,
        Err(e) => e,
    }
}

pub async fn getdebug(ctx: &mut Ctx, args: &[String]) -> i32 {
    if !args.is_empty() {
        usage(Some("getdebug"));
    }
    match ctx.ctrl(ctx.cmd_pnn, Q::GetDebug).await {
        Ok(Some(R::GetDebug(l))) => {
            println!("{}", debug_level_name(l));
            0
        }
        Ok(_) => 1,
        Err(e) => e,
    }
}

pub async fn dumpmemory(ctx: &mut Ctx, _args: &[String]) -> i32 {
    match ctx.ctrl(ctx.cmd_pnn, Q::DumpMemory).await {
        Ok(Some(R::DumpMemory(s))) => {
            print!("{s}");
            0
        }
        Ok(_) => 1,
        Err(e) => e,
    }
}

pub async fn rddumpmemory(ctx: &mut Ctx, _args: &[String]) -> i32 {
    let sid = ctx.next_srvid();
    let mut rx = match ctx.client.register_srvid(sid).await {
        Ok(rx) => rx,
        Err(e) => return crate::ctx::report(&e, ctdb_protocol::Opcode::RegisterSrvid, ctx.pnn),
    };
    let m = SrvidMessage {
        pnn: ctx.pnn,
        srvid: sid,
    };
    let mut data = vec![0u8; m.len()];
    m.push(&mut data);
    if ctx
        .client
        .send_message(ctx.cmd_pnn, srvid::MEM_DUMP, &data)
        .is_err()
    {
        crate::ctx::disconnected();
    }
    match rx.recv().await {
        Some(m) => {
            let end = m.data.iter().position(|&b| b == 0).unwrap_or(m.data.len());
            print!("{}", String::from_utf8_lossy(&m.data[..end]));
            0
        }
        None => crate::ctx::disconnected(),
    }
}

/// Runs a helper program with `args`, as the reference does for `lvs`,
/// `natgw` and `event`.
pub fn run_helper(command: &str, path: &str, args: &[String]) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    let status = std::process::Command::new(path).args(args).status();
    match status {
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(2);
            eprintln!("{command} failed with error {errno}");
            errno
        }
        Ok(st) => {
            if let Some(sig) = st.signal() {
                eprintln!("{command} terminated with signal {sig}");
                return 4; // EINTR
            }
            let code = st.code().unwrap_or(1);
            if (64..255).contains(&code) {
                eprintln!("{command} failed with error {}", code - 64);
                code - 64
            } else {
                code
            }
        }
    }
}

/// Helper program `name` for this tool (see
/// [`ctdb_client::paths::installed_helper`]).
fn helper_path(name: &str) -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    ctdb_client::paths::installed_helper(&exe, name)
        .display()
        .to_string()
}

/// `lvs` and `natgw`: one argument handed to the helper.
pub fn helper(args: &[String], name: &str, desc: &str, env: &str, bin: &str) -> i32 {
    if args.len() != 1 {
        usage(Some(name));
    }
    let path = std::env::var(env).unwrap_or_else(|_| helper_path(bin));
    run_helper(desc, &path, args)
}

pub fn event(args: &[String]) -> i32 {
    let path = std::env::var("CTDB_EVENT_HELPER").unwrap_or_else(|_| helper_path("ctdb-event"));
    run_helper("event daemon helper", &path, args)
}

pub fn scriptstatus(args: &[String]) -> i32 {
    if args.len() > 1 {
        usage(Some("scriptstatus"));
    }
    let ev = args.first().cloned().unwrap_or_else(|| "monitor".into());
    event(&["status".into(), "legacy".into(), ev]);
    0
}

pub fn checktcpport(args: &[String]) -> i32 {
    if args.len() != 1 {
        usage(Some("chktcpport"));
    }
    let port = format::atoi(&args[0]) as u16;
    match TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("Failed to bind to TCP port {port}");
            e.raw_os_error().unwrap_or(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_levels() {
        assert_eq!(debug_level_parse("NOTICE"), Some(3));
        assert_eq!(debug_level_parse("not"), Some(3));
        assert_eq!(debug_level_parse("4"), Some(4));
        assert_eq!(debug_level_parse("11"), None);
        assert_eq!(debug_level_parse("bogus"), None);
        assert_eq!(debug_level_name(4), "NOTICE");
        assert_eq!(debug_level_name(42), "UNKNOWN");
    }
}
