//! Public addresses, interfaces and TCP tickles.

use std::collections::BTreeMap;
use std::io::Read;

use ctdb_protocol::header::{CTDB_BROADCAST_CONNECTED, CTDB_UNKNOWN_PNN};
use ctdb_protocol::message::srvid;
use ctdb_protocol::types::{
    AddrInfo, Connection, Iface, PublicIp, PublicIpInfo, PublicIpList, SockAddr,
};
use ctdb_protocol::{ControlReply as R, ControlRequest as Q};

use crate::cmd_node;
use crate::ctx::{Ctx, active_nodes, connected_nodes};
use crate::format::{self, addr_str};
use crate::options::usage;

/// Sort key matching CTDB's address comparison (family, then bytes).
fn addr_key(a: &SockAddr) -> (u8, Vec<u8>, u16) {
    match a {
        SockAddr::Unspec => (0, Vec::new(), 0),
        SockAddr::V4(v) => (2, v.ip().octets().to_vec(), v.port()),
        SockAddr::V6(v) => (10, v.ip().octets().to_vec(), v.port()),
    }
}

async fn public_ips(ctx: &Ctx, pnn: u32) -> Result<PublicIpList, i32> {
    match ctx.ctrl(pnn, Q::GetPublicIps).await {
        Ok(Some(R::GetPublicIps(l))) => Ok(l),
        Ok(_) => Err(1),
        Err(e) => Err(e),
    }
}

/// Whether node `pnn` lists `addr` among its public addresses. When the
/// list cannot be had, says so and gives the control's error.
async fn node_has_public_ip(ctx: &Ctx, pnn: u32, addr: &SockAddr) -> Result<bool, i32> {
    match public_ips(ctx, pnn).await {
        Ok(l) => Ok(l.ips.iter().any(|ip| ip.addr.ip() == addr.ip())),
        Err(e) => {
            eprintln!("Failed to get Public IPs from node {pnn}");
            Err(e)
        }
    }
}

/// Every public address of the cluster and who hosts it, as the hosting
/// nodes themselves claim.
async fn all_public_ips(ctx: &mut Ctx) -> Result<Vec<PublicIp>, i32> {
    let Some(m) = ctx.get_nodemap(false).await else {
        return Err(1);
    };
    let nodes = active_nodes(&m, CTDB_UNKNOWN_PNN);
    if nodes.is_empty() {
        return Err(1);
    }
    let mut ips: BTreeMap<(u8, Vec<u8>, u16), PublicIp> = BTreeMap::new();
    for n in nodes {
        let list = public_ips(ctx, n).await.map_err(|_| 1)?;
        for ip in list.ips {
            let k = addr_key(&ip.addr);
            if ip.pnn == n {
                ips.insert(k, ip);
            } else {
                ips.entry(k).or_insert(PublicIp {
                    pnn: CTDB_UNKNOWN_PNN,
                    addr: ip.addr,
                });
            }
        }
    }
    Ok(ips.into_values().collect())
}

pub async fn ip(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() > 1 {
        usage(Some("ip"));
    }
    let all = match args.first().map(String::as_str) {
        None => false,
        Some("all") => true,
        Some(_) => usage(Some("ip")),
    };
    let mut ips = if all {
        match all_public_ips(ctx).await {
            Ok(v) => v,
            Err(e) => return e,
        }
    } else {
        match public_ips(ctx, ctx.cmd_pnn).await {
            Ok(l) => l.ips,
            Err(e) => return e,
        }
    };
    ips.sort_by_key(|ip| addr_key(&ip.addr));
    let mut infos: Vec<Option<PublicIpInfo>> = Vec::new();
    for ip in &ips {
        let pnn = if all { ip.pnn } else { ctx.cmd_pnn };
        if pnn == CTDB_UNKNOWN_PNN {
            infos.push(None);
            continue;
        }
        match ctx.ctrl(pnn, Q::GetPublicIpInfo(ip.addr)).await {
            Ok(Some(R::GetPublicIpInfo(i))) => infos.push(Some(i)),
            Ok(_) => return 1,
            Err(e) => return e,
        }
    }
    let s = ctx.opts.sep.clone();
    let verbose = ctx.opts.verbose;
    if ctx.opts.machinereadable {
        print!("{s}Public IP{s}Node{s}");
        if verbose {
            println!("ActiveInterfaces{s}AvailableInterfaces{s}ConfiguredInterfaces{s}");
        } else {
            println!();
        }
    } else if all {
        println!("Public IPs on ALL nodes");
    } else {
        println!("Public IPs on node {}", ctx.cmd_pnn);
    }
    for (ip, info) in ips.iter().zip(&infos) {
        if ctx.opts.machinereadable {
            print!("{s}{}{s}{}{s}", addr_str(&ip.addr, false), ip.pnn as i32);
        } else {
            print!("{}", addr_str(&ip.addr, false));
        }
        if !verbose {
            if ctx.opts.machinereadable {
                println!();
            } else {
                println!(" {}", ip.pnn as i32);
            }
            continue;
        }
        let mut conf: Vec<&str> = Vec::new();
        let mut avail: Vec<&str> = Vec::new();
        let mut active = "";
        if let Some(info) = info {
            for (j, i) in info.ifaces.ifaces.iter().enumerate() {
                conf.push(&i.name);
                if info.active_idx as usize == j {
                    active = &i.name;
                }
                if i.link_state != 0 {
                    avail.push(&i.name);
                }
            }
        }
        if ctx.opts.machinereadable {
            println!("{active}{s}{}{s}{}{s}", avail.join(","), conf.join(","));
        } else {
            println!(
                " node[{}] active[{active}] available[{}] configured[{}]",
                ip.pnn as i32,
                avail.join(","),
                conf.join(",")
            );
        }
    }
    0
}

pub async fn ipinfo(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() != 1 {
        usage(Some("ipinfo"));
    }
    let Some(addr) = format::parse_addr(&args[0]) else {
        eprintln!("Invalid IP address {}", args[0]);
        return 1;
    };
    let info = match ctx.ctrl(ctx.cmd_pnn, Q::GetPublicIpInfo(addr)).await {
        Ok(Some(R::GetPublicIpInfo(i))) => i,
        Ok(_) => return 1,
        Err(e) => {
            if e == -1 {
                println!("Node {} does not know about IP {}", ctx.cmd_pnn, args[0]);
            }
            return e;
        }
    };
    let a = addr_str(&info.ip.addr, false);
    println!("Public IP[{a}] info on node {}", ctx.cmd_pnn);
    println!(
        "IP:{a}\nCurrentNode:{}\nNumInterfaces:{}",
        info.ip.pnn,
        info.ifaces.ifaces.len()
    );
    for (i, iface) in info.ifaces.ifaces.iter().enumerate() {
        println!(
            "Interface[{}]: Name:{} Link:{} References:{}{}",
            i + 1,
            iface.name,
            if iface.link_state == 0 { "down" } else { "up" },
            iface.references,
            if i as u32 == info.active_idx {
                " (active)"
            } else {
                ""
            }
        );
    }
    0
}

async fn get_ifaces(ctx: &Ctx) -> Result<Vec<Iface>, i32> {
    match ctx.ctrl(ctx.cmd_pnn, Q::GetIfaces).await {
        Ok(Some(R::GetIfaces(l))) => Ok(l.ifaces),
        Ok(_) => Err(1),
        Err(e) => Err(e),
    }
}

pub async fn ifaces(ctx: &mut Ctx, args: &[String]) -> i32 {
    if !args.is_empty() {
        usage(Some("ifaces"));
    }
    let list = match get_ifaces(ctx).await {
        Ok(l) => l,
        Err(e) => return e,
    };
    if list.is_empty() {
        println!("No interfaces configured on node {}", ctx.cmd_pnn);
        return 0;
    }
    let s = &ctx.opts.sep;
    if ctx.opts.machinereadable {
        println!("{s}Name{s}LinkStatus{s}References{s}");
    } else {
        println!("Interfaces on node {}", ctx.cmd_pnn);
    }
    for i in &list {
        if ctx.opts.machinereadable {
            println!("{s}{}{s}{}{s}{}{s}", i.name, i.link_state, i.references);
        } else {
            println!(
                "name:{} link:{} references:{}",
                i.name,
                if i.link_state != 0 { "up" } else { "down" },
                i.references
            );
        }
    }
    0
}

pub async fn setifacelink(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() != 2 {
        usage(Some("setifacelink"));
    }
    if args[0].len() > ctdb_protocol::types::CTDB_IFACE_NAME_SIZE - 2 {
        eprintln!("Interface name '{}' too long", args[0]);
        return 1;
    }
    let list = match get_ifaces(ctx).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "Failed to get interface information from node {}",
                ctx.cmd_pnn
            );
            return e;
        }
    };
    let Some(mut iface) = list.into_iter().find(|i| i.name == args[0]) else {
        println!(
            "Interface {} not configured on node {}",
            args[0], ctx.cmd_pnn
        );
        return 1;
    };
    iface.link_state = match args[1].as_str() {
        "up" => 1,
        "down" => 0,
        _ => usage(Some("setifacelink")),
    };
    iface.references = 0;
    match ctx.ctrl(ctx.cmd_pnn, Q::SetIfaceLinkState(iface)).await {
        Ok(_) => 0,
        Err(e) => e,
    }
}

pub async fn gratarp(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() != 2 {
        usage(Some("gratarp"));
    }
    let Some(addr) = format::parse_addr(&args[0]) else {
        eprintln!("Invalid IP address {}", args[0]);
        return 1;
    };
    let info = AddrInfo {
        addr,
        mask: 0,
        iface: Some(args[1].clone()),
    };
    match ctx.ctrl(ctx.cmd_pnn, Q::SendGratuitousArp(info)).await {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("Unable to send gratuitous arp from node {}", ctx.cmd_pnn);
            e
        }
    }
}

/// Reads a connection list (`src:port dst:port` a line) from stdin.
fn read_connections() -> Result<Vec<Connection>, i32> {
    let mut text = String::new();
    if std::io::stdin().read_to_string(&mut text).is_err() {
        return Err(5);
    }
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut toks = line.split([' ', '\t']).filter(|t| !t.is_empty());
        let (Some(a), Some(b)) = (toks.next(), toks.next()) else {
            return Err(22);
        };
        let (Some(src), Some(dst)) = (format::parse_addr_port(a), format::parse_addr_port(b))
        else {
            return Err(22);
        };
        if addr_key(&src).0 != addr_key(&dst).0 {
            return Err(22);
        }
        out.push(Connection { src, dst });
    }
    Ok(out)
}

/// The connections a tickle command (`tickle`, `addtickle`, `deltickle`)
/// works on.
enum TickleArgs {
    /// No arguments: the list read from stdin.
    Stdin(Vec<Connection>),
    /// `<src:port> <dst:port>` on the command line.
    One(Connection),
}

/// Parses a tickle command's arguments (`name` is the command, for its
/// usage): none reads the connections from stdin, two name one. An error
/// is the exit status, said on stderr already.
fn tickle_args(name: &str, args: &[String]) -> Result<TickleArgs, i32> {
    if !args.is_empty() && args.len() != 2 {
        usage(Some(name));
    }
    if args.is_empty() {
        return read_connections().map(TickleArgs::Stdin);
    }
    let Some(src) = format::parse_addr_port(&args[0]) else {
        eprintln!("Invalid IP address {}", args[0]);
        return Err(1);
    };
    let Some(dst) = format::parse_addr_port(&args[1]) else {
        eprintln!("Invalid IP address {}", args[1]);
        return Err(1);
    };
    Ok(TickleArgs::One(Connection { src, dst }))
}

pub fn tickle(args: &[String]) -> i32 {
    let conn = match tickle_args("tickle", args) {
        Ok(TickleArgs::One(c)) => c,
        Ok(TickleArgs::Stdin(conns)) => {
            let failed = conns
                .iter()
                .filter(|c| crate::tickle::send_tickle(&c.src, &c.dst).is_err())
                .count();
            if failed > 0 {
                eprintln!("Failed to send {failed} tickles");
                return 1;
            }
            return 0;
        }
        Err(e) => return e,
    };
    match crate::tickle::send_tickle(&conn.src, &conn.dst) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Failed to send tickle ack");
            e
        }
    }
}

pub async fn gettickles(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.is_empty() || args.len() > 2 {
        usage(Some("gettickles"));
    }
    let mut port = 0u16;
    if args.len() == 2 {
        match format::parse_standard_ulong(&args[1], 10) {
            Some(p) => port = p as u16,
            None => return 22,
        }
    }
    let Some(ip) = format::parse_ip(&args[0]) else {
        eprintln!("Invalid IP address {}", args[0]);
        return 1;
    };
    let addr: SockAddr = std::net::SocketAddr::new(ip, port).into();
    let t = match ctx.ctrl(ctx.cmd_pnn, Q::GetTcpTickleList(addr)).await {
        Ok(Some(R::GetTcpTickleList(t))) => t,
        Ok(_) => return 1,
        Err(e) => {
            eprintln!("Failed to get list of connections");
            return e;
        }
    };
    if ctx.opts.machinereadable {
        let s = &ctx.opts.sep;
        println!("{s}Source IP{s}Port{s}Destiation IP{s}Port{s}");
        for c in &t.conns {
            println!(
                "{s}{}{s}{}{s}{}{s}{}{s}",
                addr_str(&c.src, false),
                c.src.port(),
                addr_str(&c.dst, false),
                c.dst.port()
            );
        }
    } else {
        println!("Connections for IP: {}", addr_str(&t.addr, false));
        println!("Num connections: {}", t.conns.len());
        for c in &t.conns {
            println!(
                "SRC: {}   DST: {}",
                addr_str(&c.src, true),
                addr_str(&c.dst, true)
            );
        }
    }
    0
}

/// `addtickle` (add) and `deltickle` (remove).
pub async fn addtickle(ctx: &mut Ctx, args: &[String], add: bool) -> i32 {
    let name = if add { "addtickle" } else { "deltickle" };
    let req = |c: Connection| {
        if add {
            Q::TcpAddDelayedUpdate(c)
        } else {
            Q::TcpRemove(c)
        }
    };
    let conn = match tickle_args(name, args) {
        Ok(TickleArgs::One(c)) => c,
        Ok(TickleArgs::Stdin(conns)) => {
            if conns.is_empty() {
                return 0;
            }
            let futs = conns.iter().map(|c| ctx.ctrl(ctx.cmd_pnn, req(*c)));
            let failed = futures::future::join_all(futs)
                .await
                .iter()
                .filter(|r| r.is_err())
                .count();
            if failed > 0 {
                if add {
                    eprintln!("Failed to add {failed} tickles");
                } else {
                    eprintln!("Failed to remove {failed} tickles");
                }
                return 1;
            }
            return 0;
        }
        Err(e) => return e,
    };
    match ctx.ctrl(ctx.cmd_pnn, req(conn)).await {
        Ok(_) => 0,
        Err(e) => {
            if add {
                eprintln!("Failed to register connection");
            } else {
                eprintln!("Failed to unregister connection");
            }
            e
        }
    }
}

async fn moveip_once(ctx: &mut Ctx, addr: &SockAddr, pnn: u32) -> i32 {
    let t = (2 * ctx.opts.timelimit) as u32;
    if ctx
        .client
        .send_message(
            CTDB_BROADCAST_CONNECTED,
            srvid::DISABLE_IP_CHECK,
            &t.to_le_bytes(),
        )
        .is_err()
    {
        eprintln!("Failed to disable IP check");
        return 1;
    }
    match node_has_public_ip(ctx, pnn, addr).await {
        Ok(true) => {}
        Ok(false) => {
            eprintln!(
                "Node {pnn} CANNOT host IP address {}",
                addr_str(addr, false)
            );
            return 1;
        }
        Err(e) => return e,
    }
    let Some(m) = ctx.get_nodemap(false).await else {
        return 1;
    };
    let nodes = active_nodes(&m, pnn);
    let pubip = PublicIp { pnn, addr: *addr };
    if let Err(e) = ctx.ctrl_multi(&nodes, Q::ReleaseIp(pubip)).await {
        eprintln!("Failed to release IP on nodes");
        return e;
    }
    if let Err(e) = ctx.ctrl(pnn, Q::TakeoverIp(pubip)).await {
        eprintln!("Failed to takeover IP on node {pnn}");
        return e;
    }
    0
}

pub async fn moveip(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() != 2 {
        usage(Some("moveip"));
    }
    let Some(addr) = format::parse_addr(&args[0]) else {
        eprintln!("Invalid IP address {}", args[0]);
        return 1;
    };
    let pnn = match format::parse_standard_ulong(&args[1], 10) {
        Some(p) if p as u32 != CTDB_UNKNOWN_PNN => p as u32,
        _ => {
            eprintln!("Invalid PNN {}", args[1]);
            return 1;
        }
    };
    let mut ret = 0;
    for _ in 0..5 {
        ret = moveip_once(ctx, &addr, pnn).await;
        if ret == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    }
    if ret != 0 {
        eprintln!("Failed to move IP {} to node {pnn}", args[0]);
    }
    ret
}

pub async fn addip(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() != 2 {
        usage(Some("addip"));
    }
    let Some((addr, mask)) = format::parse_addr_mask(&args[0]) else {
        eprintln!("Invalid IP/Mask {}", args[0]);
        return 1;
    };
    match node_has_public_ip(ctx, ctx.cmd_pnn, &addr).await {
        Ok(false) => {}
        Ok(true) => {
            eprintln!("Node already knows about IP {}", addr_str(&addr, false));
            return 0;
        }
        Err(_) => return 1,
    }
    let info = AddrInfo {
        addr,
        mask,
        iface: Some(args[1].clone()),
    };
    let mut ret = 0;
    for _ in 0..5 {
        match ctx.ctrl(ctx.cmd_pnn, Q::AddPublicIp(info.clone())).await {
            Ok(_) => {
                ret = 0;
                break;
            }
            Err(e) => ret = e,
        }
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    }
    if ret != 0 {
        eprintln!("Failed to add public IP to node {}. Giving up", ctx.cmd_pnn);
        return ret;
    }
    if ctx
        .client
        .send_message(
            CTDB_BROADCAST_CONNECTED,
            srvid::REBALANCE_NODE,
            &ctx.cmd_pnn.to_le_bytes(),
        )
        .is_err()
    {
        eprintln!("Failed to ask leader to distribute IPs");
        return 1;
    }
    0
}

pub async fn delip(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() != 1 {
        usage(Some("delip"));
    }
    let Some(addr) = format::parse_addr(&args[0]) else {
        eprintln!("Invalid IP address {}", args[0]);
        return 1;
    };
    match node_has_public_ip(ctx, ctx.cmd_pnn, &addr).await {
        Ok(true) => {}
        Ok(false) => {
            eprintln!(
                "Node does not know about IP address {}",
                addr_str(&addr, false)
            );
            return 0;
        }
        Err(_) => return 1,
    }
    let info = AddrInfo {
        addr,
        mask: 0,
        iface: None,
    };
    match ctx.ctrl(ctx.cmd_pnn, Q::DelPublicIp(info)).await {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("Failed to delete public IP from node {}", ctx.cmd_pnn);
            e
        }
    }
}

pub async fn reloadips(ctx: &mut Ctx, args: &[String]) -> i32 {
    if args.len() > 1 {
        usage(Some("reloadips"));
    }
    let Some(m) = ctx.get_nodemap(false).await else {
        return 1;
    };
    let targets: Vec<u32> = match args.first().map(String::as_str) {
        None => m
            .nodes
            .iter()
            .filter(|n| n.pnn == ctx.cmd_pnn)
            .map(|n| n.pnn)
            .collect(),
        Some("all") => m.nodes.iter().map(|n| n.pnn).collect(),
        Some(list) => {
            let mut v = Vec::new();
            for tok in list.split(',').filter(|t| !t.is_empty()) {
                let Some(p) = format::parse_standard_ulong(tok, 0) else {
                    eprintln!("Invalid node {tok}");
                    return 1;
                };
                if !m.nodes.iter().any(|n| n.pnn == p as u32) {
                    eprintln!("Node {p} does not exist");
                    return 1;
                }
                v.push(p as u32);
            }
            v
        }
    };
    let connected = connected_nodes(&m, CTDB_UNKNOWN_PNN);
    if connected.is_empty() {
        eprintln!("Memory allocation error");
        return 1;
    }
    let active: Vec<u32> = targets
        .into_iter()
        .filter(|p| {
            m.nodes
                .iter()
                .any(|n| n.pnn == *p && n.flags & ctdb_protocol::types::node_flags::INACTIVE == 0)
        })
        .collect();
    if active.is_empty() {
        eprintln!("Memory allocation error");
        return 1;
    }
    let t = (2 * ctx.opts.timelimit) as u32;
    let r = cmd_node::disable_takeover_runs(ctx, t, &connected).await;
    if r != 0 {
        eprintln!("Failed to disable takeover runs");
        return r;
    }
    if ctx.ctrl_multi(&active, Q::ReloadPublicIps).await.is_err() {
        eprintln!("Failed to reload IPs on some nodes.");
    }
    let r = cmd_node::disable_takeover_runs(ctx, 0, &connected).await;
    if r != 0 {
        eprintln!("Failed to enable takeover runs");
        return r;
    }
    cmd_node::ipreallocate(ctx).await
}
