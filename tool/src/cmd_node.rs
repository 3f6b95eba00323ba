//! Node commands: status, node flags (disable, stop, ban, ...), recovery,
//! leader, nodes files.

use std::net::{SocketAddr, TcpListener};

use ctdb_protocol::header::{CTDB_BROADCAST_CONNECTED, CTDB_UNKNOWN_PNN, INVALID_GENERATION};
use ctdb_protocol::message::srvid;
use ctdb_protocol::types::{
    BanState, DisableMessage, NodeAndFlags, NodeMap, PidSrvid, Runstate, SrvidMessage,
    capabilities, node_flags,
};
use ctdb_protocol::{ControlReply as R, ControlRequest as Q, Marshal};

use crate::ctx::{Ctx, connected_nodes, node_by_pnn};
use crate::format::{self, NODE_FLAGS_UNKNOWN, addr_str, pretty_flags};
use crate::options::{Options, usage};

const EINVAL: i32 = 22;

fn print_pnn(pnn: u32) {
    if pnn == CTDB_UNKNOWN_PNN {
        println!("UNKNOWN");
    } else {
        println!("{pnn}");
    }
}

/// Checks `-n`: the node must exist and be neither disconnected nor
/// deleted.
pub async fn verify_pnn(ctx: &mut Ctx, pnn: i64) -> bool {
    if pnn == -1 {
        return false;
    }
    let Some(m) = ctx.get_nodemap(false).await else {
        return false;
    };
    let pnn = pnn as u32;
    match node_by_pnn(&m, pnn) {
        None => {
            eprintln!("Node {pnn} does not exist");
            false
        }
        Some(n) if n.flags & (node_flags::DISCONNECTED | node_flags::DELETED) != 0 => {
            eprintln!("Node {pnn} has status {}", pretty_flags(n.flags));
            false
        }
        Some(_) => true,
    }
}

/// The path of the nodes file: `$CTDB_BASE/nodes` or the default.
fn nodes_file_path() -> String {
    let base = std::env::var("CTDB_BASE").unwrap_or_else(|_| "/etc/ctdb".into());
    format!("{base}/nodes")
}

/// Reads the nodes file; prints why not on failure.
pub fn read_nodes_file() -> Option<NodeMap> {
    let path = nodes_file_path();
    let parsed = std::fs::read(&path).ok().and_then(|b| parse_nodes(&b));
    if parsed.is_none() {
        eprintln!("Failed to read nodes file \"{path}\"");
    }
    parsed
}

fn parse_nodes(bytes: &[u8]) -> Option<NodeMap> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines: Vec<&str> = text.split('\n').collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let mut nodes = Vec::new();
    for line in lines {
        let l = line.trim_start_matches([' ', '\t']);
        let l = if l.len() > 1 {
            l.trim_end_matches([' ', '\t'])
        } else {
            l
        };
        if l.is_empty() {
            continue;
        }
        let (ip, flags) = if l.starts_with('#') {
            ("0.0.0.0", node_flags::DELETED)
        } else {
            (l, 0)
        };
        let Some(addr) = format::parse_addr(ip) else {
            eprintln!("Invalid IP address {ip}");
            return None;
        };
        nodes.push(NodeAndFlags {
            pnn: nodes.len() as u32,
            flags,
            addr,
        });
    }
    Some(NodeMap { nodes })
}

/// Whether this host has one of the nodes file's addresses (to tell the
/// user whether they are on a cluster node at all).
pub fn find_node_xpnn() -> bool {
    let Some(m) = read_nodes_file() else {
        return false;
    };
    for n in &m.nodes {
        if n.flags & node_flags::DELETED != 0 {
            continue;
        }
        if let Some(ip) = n.addr.ip()
            && TcpListener::bind(SocketAddr::new(ip, 0)).is_ok()
        {
            return true;
        }
    }
    eprintln!("Failed to detect PNN of the current node.");
    false
}

/// Whether a healthy node has an interface whose link is down.
async fn partially_online(ctx: &Ctx, n: &NodeAndFlags) -> bool {
    if n.flags != 0 {
        return false;
    }
    match ctx.ctrl(n.pnn, Q::GetIfaces).await {
        Ok(Some(R::GetIfaces(l))) => l.ifaces.iter().any(|i| i.link_state == 0),
        _ => false,
    }
}

/// Until the node has finished its first recovery, other nodes' states
/// are not known: show them as UNKNOWN.
async fn nodemap_unknown(ctx: &Ctx, m: &NodeMap) -> Option<NodeMap> {
    let rs = match ctx.ctrl(ctx.cmd_pnn, Q::GetRunstate).await {
        Ok(Some(R::GetRunstate(r))) => r,
        _ => {
            print!("Unable to get runstate");
            return None;
        }
    };
    let mut out = m.clone();
    for n in out.nodes.iter_mut() {
        if n.flags & node_flags::DELETED != 0 {
            continue;
        }
        if rs <= Runstate::FirstRecovery
            && n.flags & node_flags::DISCONNECTED == 0
            && n.pnn != ctx.cmd_pnn
        {
            n.flags = NODE_FLAGS_UNKNOWN;
        }
    }
    Some(out)
}

async fn print_nodemap_machine(ctx: &Ctx, m: &NodeMap, mypnn: u32) {
    let s = ctx.opts.sep.as_str();
    println!(
        "{s}Node{s}IP{s}Disconnected{s}Unknown{s}Banned{s}Disabled{s}Unhealthy{s}Stopped{s}Inactive{s}PartiallyOnline{s}ThisNode{s}"
    );
    for n in &m.nodes {
        if n.flags & node_flags::DELETED != 0 {
            continue;
        }
        let b = |f: u32| (n.flags & f != 0) as u8;
        println!(
            "{s}{}{s}{}{s}{}{s}{}{s}{}{s}{}{s}{}{s}{}{s}{}{s}{}{s}{}{s}",
            n.pnn,
            addr_str(&n.addr, false),
            b(node_flags::DISCONNECTED),
            b(NODE_FLAGS_UNKNOWN),
            b(node_flags::BANNED),
            b(node_flags::PERMANENTLY_DISABLED),
            b(node_flags::UNHEALTHY),
            b(node_flags::STOPPED),
            b(node_flags::INACTIVE),
            partially_online(ctx, n).await as u8,
            if n.pnn == mypnn { 'Y' } else { 'N' },
        );
    }
}

async fn print_nodemap(ctx: &Ctx, m: &NodeMap, mypnn: u32, header: bool) {
    let deleted = m
        .nodes
        .iter()
        .filter(|n| n.flags & node_flags::DELETED != 0)
        .count();
    if header {
        if deleted == 0 {
            println!("Number of nodes:{}", m.nodes.len());
        } else {
            println!(
                "Number of nodes:{} (including {deleted} deleted nodes)",
                m.nodes.len()
            );
        }
    }
    for n in &m.nodes {
        if n.flags & node_flags::DELETED != 0 {
            continue;
        }
        let state = if partially_online(ctx, n).await {
            "PARTIALLYONLINE".to_owned()
        } else {
            pretty_flags(n.flags)
        };
        println!(
            "pnn:{} {:<16} {}{}",
            n.pnn,
            addr_str(&n.addr, false),
            state,
            if n.pnn == mypnn { " (THIS NODE)" } else { "" }
        );
    }
}

pub async fn status(ctx: &mut Ctx, args: &[String]) -> i32 {
    if !args.is_empty() {
        usage(Some("status"));
    }
    let Some(m) = ctx.get_nodemap(false).await else {
        return 1;
    };
    let Some(m) = nodemap_unknown(ctx, &m).await else {
        return 1;
    };
    if ctx.opts.machinereadable {
        print_nodemap_machine(ctx, &m, ctx.cmd_pnn).await;
        return 0;
    }
    let vnn = match ctx.ctrl(ctx.cmd_pnn, Q::GetVnnMap).await {
        Ok(Some(R::GetVnnMap(v))) => v,
        Ok(_) => return 1,
        Err(e) => return e,
    };
    let recmode = match ctx.ctrl_status(ctx.cmd_pnn, Q::GetRecmode, true).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let leader = ctx.get_leader().await;
    print_nodemap(ctx, &m, ctx.cmd_pnn, true).await;
    if vnn.generation == INVALID_GENERATION {
        println!("Generation:INVALID");
    } else {
        println!("Generation:{}", vnn.generation);
    }
    println!("Size:{}", vnn.map.len());
    for (i, l) in vnn.map.iter().enumerate() {
        println!("hash:{i} lmaster:{}", *l as i32);
    }
    println!(
        "Recovery mode:{} ({recmode})",
        if recmode == 0 { "NORMAL" } else { "RECOVERY" }
    );
    print!("Leader:");
    print_pnn(leader);
    0
}

/// `NULL | all | pnn[,pnn...]` to the node map entries it names.
async fn parse_nodestring(ctx: &mut Ctx, s: Option<&str>) -> Option<NodeMap> {
    let m = ctx.get_nodemap(false).await?;
    let nodes = match s {
        None => m
            .nodes
            .iter()
            .filter(|n| n.pnn == ctx.cmd_pnn)
            .take(1)
            .cloned()
            .collect(),
        Some("all") => m.nodes.clone(),
        Some(list) => {
            let mut v = Vec::new();
            for tok in list.split(',').filter(|t| !t.is_empty()) {
                let Some(pnn) = format::parse_standard_ulong(tok, 0) else {
                    eprintln!("Invalid node {tok}");
                    return None;
                };
                let pnn = pnn as u32;
                match node_by_pnn(&m, pnn) {
                    Some(n) => v.push(*n),
                    None => {
                        eprintln!("Node {pnn} does not exist");
                        return None;
                    }
                }
            }
            v
        }
    };
    Some(NodeMap { nodes })
}

pub async fn nodestatus(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() > 1 {
        usage(Some("nodestatus"));
    }
    let s = args.first().map(String::as_str);
    let Some(m) = parse_nodestring(ctx, s).await else {
        return 1;
    };
    let Some(m) = nodemap_unknown(ctx, &m).await else {
        return 1;
    };
    if ctx.opts.machinereadable {
        print_nodemap_machine(ctx, &m, ctx.cmd_pnn).await;
    } else {
        print_nodemap(ctx, &m, ctx.cmd_pnn, s == Some("all")).await;
    }
    let mut ret = 0u32;
    for n in &m.nodes {
        if n.flags & node_flags::DELETED == 0 {
            ret |= n.flags;
        }
    }
    ret as i32
}

pub async fn uptime(ctx: &mut Ctx, _args: &[String]) -> i32 {
    let u = match ctx.ctrl(ctx.cmd_pnn, Q::Uptime).await {
        Ok(Some(R::Uptime(u))) => u,
        Ok(_) => return 1,
        Err(e) => return e,
    };
    let cur = u.current_time.sec;
    print!(
        "Current time of node {:<4}     :                {}",
        ctx.cmd_pnn,
        format::ctime(cur)
    );
    print!(
        "Ctdbd start time              : {} {}",
        format::duration(cur - u.ctdbd_start_time.sec),
        format::ctime(u.ctdbd_start_time.sec)
    );
    print!(
        "Time of last recovery/failover: {} {}",
        format::duration(cur - u.last_recovery_finished.sec),
        format::ctime(u.last_recovery_finished.sec)
    );
    let d = (u.last_recovery_finished.sec - u.last_recovery_started.sec) as f64
        + (u.last_recovery_finished.usec - u.last_recovery_started.usec) as f64 * 1.0e-6;
    println!("Duration of last recovery/failover: {d:.6} seconds");
    0
}

pub async fn ping(ctx: &mut Ctx, _args: &[String]) -> i32 {
    let start = std::time::Instant::now();
    match ctx.ctrl_status(ctx.cmd_pnn, Q::Ping, true).await {
        Ok(n) => {
            println!(
                "response from {} time={:.6} sec  ({n} clients)",
                ctx.cmd_pnn,
                start.elapsed().as_secs_f64()
            );
            0
        }
        Err(e) => e,
    }
}

fn runstate_from_name(s: &str) -> Option<Runstate> {
    (1..=6)
        .filter_map(Runstate::from_u32)
        .find(|r| r.name().eq_ignore_ascii_case(s))
}

pub async fn runstate(ctx: &mut Ctx, args: &[String]) -> i32 {
    let rs = match ctx.ctrl(ctx.cmd_pnn, Q::GetRunstate).await {
        Ok(Some(R::GetRunstate(r))) => r,
        Ok(_) => return 1,
        Err(e) => return e,
    };
    let mut found = true;
    for a in args {
        found = false;
        let Some(t) = runstate_from_name(a) else {
            println!("Invalid run state ({a})");
            return 1;
        };
        if t == rs {
            found = true;
            break;
        }
    }
    if !found {
        println!("CTDB not in required run state (got {})", rs.name());
        return 1;
    }
    println!("{}", rs.name());
    0
}

pub async fn process_exists(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() != 1 && args.len() != 2 {
        usage(Some("process-exists"));
    }
    let pid = format::atoi(&args[0]) as i32;
    let mut sid = 0u64;
    if args.len() == 2 {
        match format::parse_standard_ulong(&args[1], 0) {
            Some(v) => sid = v,
            None => return EINVAL,
        }
    }
    let r = if sid == 0 {
        ctx.ctrl_status(ctx.cmd_pnn, Q::ProcessExists(pid), false)
            .await
    } else {
        ctx.ctrl_status(
            ctx.cmd_pnn,
            Q::CheckPidSrvid(PidSrvid { pid, srvid: sid }),
            false,
        )
        .await
    };
    let status = match r {
        Ok(s) => s,
        Err(e) => return e,
    };
    let what = if status == 0 {
        "exists"
    } else {
        "does not exist"
    };
    if sid == 0 {
        println!("PID {pid} {what}");
    } else {
        println!("PID {pid} with SRVID 0x{sid:x} {what}");
    }
    status
}

pub async fn getcapabilities(ctx: &mut Ctx, args: &[String]) -> i32 {
    if !args.is_empty() {
        usage(Some("getcapabilities"));
    }
    let caps = match ctx.ctrl(ctx.cmd_pnn, Q::GetCapabilities).await {
        Ok(Some(R::GetCapabilities(c))) => c,
        Ok(_) => return 1,
        Err(e) => return e,
    };
    let leader = caps & capabilities::RECMASTER != 0;
    let lmaster = caps & capabilities::LMASTER != 0;
    if ctx.opts.machinereadable {
        let s = &ctx.opts.sep;
        println!("{s}LEADER{s}LMASTER{s}");
        println!("{s}{}{s}{}{s}", leader as u8, lmaster as u8);
    } else {
        println!("LEADER: {}", if leader { "YES" } else { "NO" });
        println!("LMASTER: {}", if lmaster { "YES" } else { "NO" });
    }
    0
}

pub async fn pnn(ctx: &mut Ctx, _args: &[String]) -> i32 {
    println!("{}", ctx.client.pnn());
    0
}

pub async fn getpid(ctx: &mut Ctx, _args: &[String]) -> i32 {
    match ctx.ctrl_status(ctx.cmd_pnn, Q::GetPid, false).await {
        Ok(pid) => {
            println!("{}", pid as u32);
            0
        }
        Err(e) => e,
    }
}

/// Whether the command has nothing to do: the flag is already as asked
/// (prints why). `None` when the node map cannot be had.
async fn already(ctx: &mut Ctx, desc: &str, flag: u32, set: bool) -> Option<bool> {
    let m = ctx.get_nodemap(false).await?;
    let is_set = node_by_pnn(&m, ctx.cmd_pnn).is_some_and(|n| n.flags & flag != 0);
    if is_set == set {
        if set {
            eprintln!("Node {} is already {desc}", ctx.cmd_pnn);
        } else {
            eprintln!("Node {} is not {desc}", ctx.cmd_pnn);
        }
        return Some(true);
    }
    Some(false)
}

/// Polls the node map until the node's flag is as asked.
async fn wait_for_flags(ctx: &mut Ctx, flag: u32, set: bool) {
    loop {
        match ctx.get_nodemap(true).await {
            None => eprintln!("Failed to get nodemap, trying again"),
            Some(m) => {
                let is_set = node_by_pnn(&m, ctx.cmd_pnn).is_some_and(|n| n.flags & flag != 0);
                if is_set == set {
                    return;
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Asks the leader for a takeover run and waits for its answer.
pub async fn ipreallocate(ctx: &mut Ctx) -> i32 {
    let sid = ctx.next_srvid();
    let mut rx = match ctx.client.register_srvid(sid).await {
        Ok(rx) => rx,
        Err(e) => return crate::ctx::report(&e, ctdb_protocol::Opcode::RegisterSrvid, ctx.pnn),
    };
    let msg = SrvidMessage {
        pnn: ctx.pnn,
        srvid: sid,
    };
    let mut data = vec![0u8; msg.len()];
    msg.push(&mut data);
    let ret = loop {
        if ctx
            .client
            .send_message(CTDB_BROADCAST_CONNECTED, srvid::TAKEOVER_RUN, &data)
            .is_err()
        {
            crate::ctx::disconnected();
        }
        let deadline = tokio::time::Instant::now() + ctx.timeout();
        let mut got = None;
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            if m.data.len() == 4 {
                got = Some(i32::from_le_bytes(m.data[..4].try_into().unwrap()));
                break;
            }
        }
        if let Some(status) = got {
            break if status >= 0 { 0 } else { status };
        }
    };
    let _ = ctx.client.deregister_srvid(sid).await;
    ret
}

/// One of the four flag-toggling commands (disable, enable, stop, continue).
struct FlagChange {
    /// The command's name, for its usage line.
    name: &'static str,
    /// How the state is described in "Node N is already ..." messages.
    desc: &'static str,
    flag: u32,
    /// Whether the command sets (true) or clears the flag.
    set: bool,
    req: Q,
    /// Message printed, followed by the pnn, when the control fails.
    fail: &'static str,
}

async fn flag_command(ctx: &mut Ctx, args: &[String], c: FlagChange) -> i32 {
    if !args.is_empty() {
        usage(Some(c.name));
    }
    match already(ctx, c.desc, c.flag, c.set).await {
        None => return 1,
        Some(true) => return 0,
        Some(false) => {}
    }
    if let Err(e) = ctx.ctrl(ctx.cmd_pnn, c.req).await {
        eprintln!("{} {}", c.fail, ctx.cmd_pnn);
        return e;
    }
    wait_for_flags(ctx, c.flag, c.set).await;
    ipreallocate(ctx).await
}

pub async fn disable(ctx: &mut Ctx, args: &[String]) -> i32 {
    let c = FlagChange {
        name: "disable",
        desc: "disabled",
        flag: node_flags::PERMANENTLY_DISABLED,
        set: true,
        req: Q::DisableNode,
        fail: "Failed to disable node",
    };
    flag_command(ctx, args, c).await
}

pub async fn enable(ctx: &mut Ctx, args: &[String]) -> i32 {
    let c = FlagChange {
        name: "enable",
        desc: "disabled",
        flag: node_flags::PERMANENTLY_DISABLED,
        set: false,
        req: Q::EnableNode,
        fail: "Failed to enable node",
    };
    flag_command(ctx, args, c).await
}

pub async fn stop(ctx: &mut Ctx, args: &[String]) -> i32 {
    let c = FlagChange {
        name: "stop",
        desc: "stopped",
        flag: node_flags::STOPPED,
        set: true,
        req: Q::StopNode,
        fail: "Failed to stop node",
    };
    flag_command(ctx, args, c).await
}

pub async fn cont(ctx: &mut Ctx, args: &[String]) -> i32 {
    let c = FlagChange {
        name: "continue",
        desc: "stopped",
        flag: node_flags::STOPPED,
        set: false,
        req: Q::ContinueNode,
        fail: "Failed to continue stopped node",
    };
    flag_command(ctx, args, c).await
}

pub async fn ban(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() != 1 {
        usage(Some("ban"));
    }
    match already(ctx, "banned", node_flags::BANNED, true).await {
        None => return 1,
        Some(true) => return 0,
        Some(false) => {}
    }
    let Some(time) = format::parse_standard_ulong(&args[0], 0) else {
        return EINVAL;
    };
    if time == 0 {
        eprintln!("Ban time cannot be zero");
        return EINVAL;
    }
    let b = BanState {
        pnn: ctx.cmd_pnn,
        time: time as u32,
    };
    if let Err(e) = ctx.ctrl(ctx.cmd_pnn, Q::SetBanState(b)).await {
        eprintln!("Failed to ban node {}", ctx.cmd_pnn);
        return e;
    }
    wait_for_flags(ctx, node_flags::BANNED, true).await;
    ipreallocate(ctx).await
}

pub async fn unban(ctx: &mut Ctx, args: &[String]) -> i32 {
    if !args.is_empty() {
        usage(Some("unban"));
    }
    match already(ctx, "banned", node_flags::BANNED, false).await {
        None => return 1,
        Some(true) => return 0,
        Some(false) => {}
    }
    let b = BanState {
        pnn: ctx.cmd_pnn,
        time: 0,
    };
    if let Err(e) = ctx.ctrl(ctx.cmd_pnn, Q::SetBanState(b)).await {
        eprintln!("Failed to unban node {}", ctx.cmd_pnn);
        return e;
    }
    wait_for_flags(ctx, node_flags::BANNED, false).await;
    ipreallocate(ctx).await
}

pub async fn shutdown(ctx: &mut Ctx, args: &[String]) -> i32 {
    if !args.is_empty() {
        usage(Some("shutdown"));
    }
    let own = ctx.pnn == ctx.cmd_pnn;
    let r = ctx
        .client
        .control_noreply(ctx.cmd_pnn, ctdb_protocol::ReqControl::new(Q::Shutdown));
    if r.is_err() {
        eprintln!("Unable to shutdown node {}", ctx.cmd_pnn);
        return 1;
    }
    if own {
        // Wait for the daemon to close the connection.
        while !ctx.client.is_closed() {
            let probe = ctx.client.with_timeout(std::time::Duration::from_secs(1));
            if let Err(ctdb_client::ClientError::Disconnected) = probe.get_pnn(ctx.pnn).await {
                break;
            }
        }
    }
    0
}

/// The generation once the cluster is out of recovery, asked of the
/// leader.
pub async fn get_generation(ctx: &mut Ctx) -> Result<u32, i32> {
    loop {
        let leader = ctx.get_leader().await;
        let recmode = match ctx.ctrl_status(leader, Q::GetRecmode, true).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("Failed to get recovery mode from node {leader}");
                return Err(e);
            }
        };
        if recmode != 0 {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            continue;
        }
        let vnn = match ctx.ctrl(leader, Q::GetVnnMap).await {
            Ok(Some(R::GetVnnMap(v))) => v,
            Ok(_) => return Err(1),
            Err(e) => {
                eprintln!("Failed to get generation from node {leader}");
                return Err(e);
            }
        };
        if vnn.generation == INVALID_GENERATION {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            continue;
        }
        return Ok(vnn.generation);
    }
}

pub async fn recover(ctx: &mut Ctx, args: &[String]) -> i32 {
    if !args.is_empty() {
        usage(Some("recover"));
    }
    let generation = match get_generation(ctx).await {
        Ok(g) => g,
        Err(e) => return e,
    };
    if let Err(e) = ctx.ctrl(ctx.cmd_pnn, Q::SetRecmode(1)).await {
        eprintln!("Failed to set recovery mode active");
        return e;
    }
    loop {
        match get_generation(ctx).await {
            Ok(g) if g != generation => return 0,
            Ok(_) => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
            Err(e) => {
                eprintln!("Failed to confirm end of recovery");
                return e;
            }
        }
    }
}

pub async fn ipreallocate_cmd(ctx: &mut Ctx, args: &[String], name: &str) -> i32 {
    if !args.is_empty() {
        usage(Some(name));
    }
    ipreallocate(ctx).await
}

pub async fn leader(ctx: &mut Ctx, _args: &[String]) -> i32 {
    let l = ctx.get_leader().await;
    print_pnn(l);
    0
}

pub fn listnodes(opts: &Options, args: &[String]) -> i32 {
    if !args.is_empty() {
        usage(Some("listnodes"));
    }
    let Some(m) = read_nodes_file() else {
        return 1;
    };
    for n in &m.nodes {
        if n.flags & node_flags::DELETED != 0 {
            continue;
        }
        if opts.machinereadable {
            let s = &opts.sep;
            println!("{s}{}{s}{}{s}", n.pnn, addr_str(&n.addr, false));
        } else {
            println!("{}", addr_str(&n.addr, false));
        }
    }
    0
}

fn nodemaps_identical(a: &NodeMap, b: &NodeMap) -> bool {
    a.nodes.len() == b.nodes.len()
        && a.nodes
            .iter()
            .zip(&b.nodes)
            .all(|(x, y)| x.pnn == y.pnn && x.flags == y.flags && x.addr.ip() == y.addr.ip())
}

/// Compares the running node map with the nodes file: prints changes,
/// returns whether to reload, or an error if the change is not allowed.
fn check_node_file_changes(nm: &NodeMap, fnm: &NodeMap) -> Result<bool, i32> {
    let mut reload = false;
    let mut failed = false;
    let mut i = 0;
    while i < nm.nodes.len() {
        let n = &nm.nodes[i];
        let Some(f) = fnm.nodes.get(i) else {
            eprintln!(
                "Node {} ({}) missing from nodes file",
                n.pnn,
                addr_str(&n.addr, false)
            );
            failed = true;
            i += 1;
            continue;
        };
        let ndel = n.flags & node_flags::DELETED != 0;
        let fdel = f.flags & node_flags::DELETED != 0;
        if ndel && fdel {
        } else if !ndel && !fdel {
            if n.addr.ip() != f.addr.ip() {
                eprintln!(
                    "Node {} has changed IP address (was {}, now {})",
                    n.pnn,
                    addr_str(&n.addr, false),
                    addr_str(&f.addr, false)
                );
                failed = true;
            } else if n.flags & node_flags::DISCONNECTED != 0 {
                eprintln!(
                    "WARNING: Node {} is disconnected. You MUST fix this node manually!",
                    n.pnn
                );
            }
        } else if fdel {
            println!("Node {} is DELETED", n.pnn);
            reload = true;
            if n.flags & node_flags::DISCONNECTED == 0 {
                eprintln!("ERROR: Node {} is still connected", n.pnn);
                failed = true;
            }
        } else {
            println!("Node {} is UNDELETED", n.pnn);
            reload = true;
        }
        i += 1;
    }
    if failed {
        eprintln!("ERROR: Nodes will not be reloaded due to previous error");
        return Err(1);
    }
    for f in &fnm.nodes[i.min(fnm.nodes.len())..] {
        println!("Node {} is NEW", f.pnn);
        reload = true;
    }
    Ok(reload)
}

/// Disables (timeout > 0) or re-enables (0) recoveries on `nodes`,
/// waiting for every node to confirm.
async fn disable_recoveries(ctx: &mut Ctx, timeout: u32, nodes: &[u32], what: u64) -> i32 {
    let sid = ctx.next_srvid();
    let mut rx = match ctx.client.register_srvid(sid).await {
        Ok(rx) => rx,
        Err(e) => return crate::ctx::report(&e, ctdb_protocol::Opcode::RegisterSrvid, ctx.pnn),
    };
    let m = DisableMessage {
        pnn: ctx.pnn,
        srvid: sid,
        timeout,
    };
    let mut data = vec![0u8; m.len()];
    m.push(&mut data);
    for &n in nodes {
        if ctx.client.send_message(n, what, &data).is_err() {
            crate::ctx::disconnected();
        }
    }
    let mut replied = vec![false; nodes.len()];
    let deadline = tokio::time::Instant::now() + ctx.timeout();
    let mut status = 0;
    let mut done = false;
    while !done {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(msg)) if msg.data.len() == 4 => {
                let r = i32::from_le_bytes(msg.data[..4].try_into().unwrap());
                if r < 0 {
                    status = r;
                    done = true;
                } else {
                    if let Some(i) = nodes.iter().position(|&p| p == r as u32) {
                        replied[i] = true;
                    }
                    done = replied.iter().all(|r| *r);
                }
            }
            Ok(Some(_)) => {}
            _ => {
                let _ = ctx.client.deregister_srvid(sid).await;
                if what == srvid::DISABLE_RECOVERIES {
                    eprintln!("Timed out waiting to disable recoveries");
                } else {
                    eprintln!("Timed out waiting to disable takeover runs");
                }
                return 62; // ETIME
            }
        }
    }
    let _ = ctx.client.deregister_srvid(sid).await;
    if status >= 0 { 0 } else { 1 }
}

pub async fn disable_takeover_runs(ctx: &mut Ctx, timeout: u32, nodes: &[u32]) -> i32 {
    disable_recoveries(ctx, timeout, nodes, srvid::DISABLE_TAKEOVER_RUNS).await
}

pub async fn reloadnodes(ctx: &mut Ctx, _args: &[String]) -> i32 {
    let Some(nm) = ctx.get_nodemap(false).await else {
        return 1;
    };
    let Some(fnm) = read_nodes_file() else {
        return 1;
    };
    for n in &nm.nodes {
        if n.flags & node_flags::DISCONNECTED != 0 {
            continue;
        }
        let remote = match ctx.ctrl(n.pnn, Q::GetNodesFile).await {
            Ok(Some(R::GetNodesFile(m))) => m,
            Ok(_) => return 1,
            Err(e) => {
                eprintln!("ERROR: Failed to get nodes file from node {}", n.pnn);
                return e;
            }
        };
        if !nodemaps_identical(&fnm, &remote) {
            eprintln!(
                "ERROR: Nodes file on node {} differs from current node ({})",
                n.pnn, ctx.pnn
            );
            return 1;
        }
    }
    let reload = match check_node_file_changes(&nm, &fnm) {
        Ok(r) => r,
        Err(e) => return e,
    };
    if !reload {
        eprintln!("No change in nodes file, skipping unnecessary reload");
        return 0;
    }
    let nodes = connected_nodes(&nm, CTDB_UNKNOWN_PNN);
    if nodes.is_empty() {
        eprintln!("Memory allocation error");
        return 1;
    }
    let t = 2 * ctx.opts.timelimit as u32;
    let r = disable_recoveries(ctx, t, &nodes, srvid::DISABLE_RECOVERIES).await;
    if r != 0 {
        eprintln!("Failed to disable recoveries");
        return r;
    }
    let futs = nodes.iter().map(|&n| {
        let ctx = &*ctx;
        async move { (n, ctx.ctrl(n, Q::ReloadNodesFile).await) }
    });
    let results = futures::future::join_all(futs).await;
    let mut failed = false;
    for (n, r) in results {
        if r.is_err() {
            eprintln!("Node {n} failed to reload nodes");
            failed = true;
        }
    }
    if failed {
        eprintln!("You MUST fix failed nodes manually!");
    }
    let r = disable_recoveries(ctx, 0, &nodes, srvid::DISABLE_RECOVERIES).await;
    if r != 0 {
        eprintln!("Failed to enable recoveries");
        return r;
    }
    0
}

pub async fn getreclock(ctx: &mut Ctx, args: &[String]) -> i32 {
    if !args.is_empty() {
        usage(Some("getreclock"));
    }
    match ctx.ctrl(ctx.cmd_pnn, Q::GetReclockFile).await {
        Ok(Some(R::GetReclockFile(Some(r)))) => {
            println!("{r}");
            0
        }
        Ok(_) => 0,
        Err(e) => e,
    }
}

pub async fn setrole(ctx: &mut Ctx, args: &[String], name: &str) -> i32 {
    if args.len() != 1 {
        usage(Some(name));
    }
    let on = match args[0].as_str() {
        "on" => 1,
        "off" => 0,
        _ => usage(Some(name)),
    };
    let req = if name == "setlmasterrole" {
        Q::SetLmasterRole(on)
    } else {
        Q::SetRecmasterRole(on)
    };
    match ctx.ctrl(ctx.cmd_pnn, req).await {
        Ok(_) => 0,
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(spec: &[(&str, u32)]) -> NodeMap {
        NodeMap {
            nodes: spec
                .iter()
                .enumerate()
                .map(|(i, (ip, f))| NodeAndFlags {
                    pnn: i as u32,
                    flags: *f,
                    addr: format::parse_addr(ip).unwrap(),
                })
                .collect(),
        }
    }

    #[test]
    fn nodes_file_changes() {
        let cur = map(&[("10.0.0.1", 0), ("10.0.0.2", 0)]);
        let same = map(&[("10.0.0.1", 0), ("10.0.0.2", 0)]);
        assert_eq!(check_node_file_changes(&cur, &same), Ok(false));
        let more = map(&[("10.0.0.1", 0), ("10.0.0.2", 0), ("10.0.0.3", 0)]);
        assert_eq!(check_node_file_changes(&cur, &more), Ok(true));
        let moved = map(&[("10.0.0.1", 0), ("10.0.0.9", 0)]);
        assert_eq!(check_node_file_changes(&cur, &moved), Err(1));
    }

    #[test]
    fn nodes_file_parsing() {
        let m = parse_nodes(b"10.0.0.1\n#10.0.0.2\n 10.0.0.3 \n\n").unwrap();
        assert_eq!(m.nodes.len(), 3);
        assert_eq!(m.nodes[1].flags, node_flags::DELETED);
        assert!(parse_nodes(b"bogus\n").is_none());
    }
}
