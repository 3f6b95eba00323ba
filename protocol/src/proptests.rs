//! Property tests for every wire type: random values round-trip, `push`
//! writes exactly `len()` bytes, and `pull` on truncated or random bytes
//! returns an error (or a shorter value) without panicking or reading past
//! the end.

use proptest::prelude::*;

use crate::backup::{BackupChunk, BackupHeader};
use crate::call::*;
use crate::control::{ReplyControl, ReqControl, TunableName};
use crate::keepalive::{ReqKeepalive, ReqTunnel};
use crate::marshal::Marshal;
use crate::message::ReqMessage;
use crate::packet::{Body, Packet};
use crate::random::{Random, Rng};
use crate::types::*;

fn round_trip<T: Marshal + Random + PartialEq + std::fmt::Debug>(
    seed: u64,
) -> Result<(), TestCaseError> {
    let v = T::random(&mut Rng::new(seed));
    let mut buf = vec![0xAAu8; v.len() + 16];
    let n = v.push(&mut buf);
    prop_assert_eq!(n, v.len(), "push wrote a different size than len");
    prop_assert!(buf[n..].iter().all(|&b| b == 0xAA), "push wrote past len");
    let (back, m) =
        T::pull(&buf[..n]).map_err(|e| TestCaseError::fail(format!("pull failed: {e}")))?;
    prop_assert_eq!(m, n, "pull consumed a different size");
    prop_assert_eq!(&back, &v);
    Ok(())
}

fn hostile<T: Marshal + Random>(seed: u64, noise: &[u8]) -> Result<(), TestCaseError> {
    // Every truncation of a valid encoding.
    let v = T::random(&mut Rng::new(seed));
    let full = v.to_bytes();
    for cut in 0..full.len() {
        if let Ok((_, n)) = T::pull(&full[..cut]) {
            prop_assert!(n <= cut, "pull consumed {n} bytes of {cut}");
        }
    }
    // Arbitrary bytes, and a valid prefix followed by arbitrary bytes.
    if let Ok((_, n)) = T::pull(noise) {
        prop_assert!(n <= noise.len());
    }
    let mut mixed = full[..full.len() / 2].to_vec();
    mixed.extend_from_slice(noise);
    if let Ok((_, n)) = T::pull(&mixed) {
        prop_assert!(n <= mixed.len());
    }
    Ok(())
}

/// Runs `check` as `proptest!` would (the same default configuration,
/// `cases` if given, failures persisted to and replayed from
/// `proptest-regressions/proptests.txt`), through one runner for every
/// wire type: a `proptest!` block per type compiled the runner and its
/// shrinking machinery again for each of ~60 types, which was most of this
/// crate's test build time.
fn run<S: Strategy>(
    cases: Option<u32>,
    strategy: S,
    check: fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let mut config = ProptestConfig {
        source_file: Some(file!()),
        ..ProptestConfig::default()
    };
    if let Some(cases) = cases {
        config.cases = cases;
    }
    let mut runner = proptest::test_runner::TestRunner::new(config);
    if let Err(e) = runner.run(&strategy, check) {
        panic!("{e}\n{runner}");
    }
}

/// Random values of one type round-trip.
fn run_round_trip(check: fn(u64) -> Result<(), TestCaseError>) {
    run(None, any::<u64>(), check);
}

/// Truncations of one type's encodings and noise are errors, never panics.
fn run_hostile(check: fn((u64, Vec<u8>)) -> Result<(), TestCaseError>) {
    run(
        Some(64),
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..256)),
        check,
    );
}

macro_rules! wire_type_tests {
    ($($name:ident: $ty:ty,)*) => {
        mod round_trips {
            use super::*;
            $(#[test] fn $name() { run_round_trip(round_trip::<$ty>); })*
        }
        mod hostile_input {
            use super::*;
            $(#[test] fn $name() {
                run_hostile(|(seed, noise)| hostile::<$ty>(seed, &noise));
            })*
        }
    };
}

wire_type_tests! {
    timeval: Timeval,
    sock_addr: SockAddr,
    connection: Connection,
    connection_list: ConnectionList,
    tickle_list: TickleList,
    addr_info: AddrInfo,
    public_ip: PublicIp,
    public_ip_list: PublicIpList,
    iface: Iface,
    iface_list: IfaceList,
    public_ip_info: PublicIpInfo,
    node_and_flags: NodeAndFlags,
    node_map: NodeMap,
    node_flag_change: NodeFlagChange,
    vnn_map: VnnMap,
    ban_state: BanState,
    runstate: Runstate,
    dbid: Dbid,
    dbid_map: DbidMap,
    pulldb: PullDb,
    pulldb_ext: PullDbExt,
    transdb: TransDb,
    db_seqnum_request: DbSeqnumRequest,
    db_vacuum: DbVacuum,
    ltdb_header: LtdbHeader,
    rec_data: RecData,
    rec_buffer: RecBuffer,
    key_data: KeyData,
    traverse_start: TraverseStart,
    traverse_all: TraverseAll,
    traverse_start_ext: TraverseStartExt,
    traverse_all_ext: TraverseAllExt,
    latency_counter: LatencyCounter,
    statistics: Statistics,
    statistics_list: StatisticsList,
    db_statistics: DbStatistics,
    uptime: Uptime,
    tunable: Tunable,
    tunable_name: TunableName,
    var_list: VarList,
    tunable_list: TunableList,
    notify_data: NotifyData,
    echo_data: EchoData,
    pid_srvid: PidSrvid,
    script: Script,
    script_list: ScriptList,
    server_id: ServerId,
    g_lock: GLock,
    g_lock_list: GLockList,
    election_message: ElectionMessage,
    srvid_message: SrvidMessage,
    disable_message: DisableMessage,
    backup_header: BackupHeader,
    backup_chunk: BackupChunk,
    req_call: ReqCall,
    reply_call: ReplyCall,
    reply_error: ReplyError,
    req_dmaster: ReqDmaster,
    reply_dmaster: ReplyDmaster,
    req_keepalive: ReqKeepalive,
    req_tunnel: ReqTunnel,
    req_control: ReqControl,
    req_message: ReqMessage,
}

/// The opcode a reply answers, as its requester would know it.
fn reply_opcode(p: &Packet) -> Option<crate::Opcode> {
    match &p.body {
        Body::ReplyControl(r) => Some(r.data.as_ref().map_or(crate::Opcode::Ping, |d| d.opcode())),
        _ => None,
    }
}

proptest! {
    #[test]
    fn every_control_request_round_trips(seed in any::<u64>()) {
        let mut r = Rng::new(seed);
        for &op in crate::Opcode::ALL {
            let req = ReqControl { srvid: r.u64(), client_id: r.u32(), flags: r.u32(), data: crate::ControlRequest::random_for(op, &mut r) };
            let b = req.to_bytes();
            prop_assert_eq!(b.len(), req.len());
            prop_assert_eq!(ReqControl::pull(&b).unwrap(), (req, b.len()));
        }
    }

    #[test]
    fn every_control_reply_round_trips(seed in any::<u64>()) {
        let mut r = Rng::new(seed);
        for &op in crate::Opcode::ALL {
            let rep = ReplyControl::ok(crate::ControlReply::random_for(op, &mut r));
            let mut b = vec![0u8; rep.len()];
            prop_assert_eq!(rep.push(&mut b), b.len());
            prop_assert_eq!(ReplyControl::pull_for(op, &b).unwrap(), (rep, b.len()));
        }
    }

    #[test]
    fn reply_control_round_trips(seed in any::<u64>()) {
        let rep = ReplyControl::random(&mut Rng::new(seed));
        let op = rep.data.as_ref().map_or(crate::Opcode::Ping, |d| d.opcode());
        let mut b = vec![0u8; rep.len()];
        prop_assert_eq!(rep.push(&mut b), b.len());
        prop_assert_eq!(ReplyControl::pull_for(op, &b).unwrap(), (rep, b.len()));
    }

    #[test]
    fn packets_round_trip(seed in any::<u64>()) {
        let p = Packet::random(&mut Rng::new(seed));
        let b = p.encode();
        prop_assert_eq!(b.len() % 8, 0);
        prop_assert_eq!(b.len(), p.encoded_len());
        let back = Packet::decode(&b, |_| reply_opcode(&p)).unwrap();
        prop_assert_eq!(&back.body, &p.body);
        prop_assert_eq!(back.header.reqid, p.header.reqid);
        prop_assert_eq!(back.header.length as usize, b.len());
        // Re-encoding a decoded packet is byte-identical.
        prop_assert_eq!(Packet::decode(&b, |_| reply_opcode(&p)).unwrap().encode(), b);
    }

    #[test]
    fn packets_from_noise_never_panic(noise in proptest::collection::vec(any::<u8>(), 0..512), op in 0u32..200) {
        let _ = Packet::decode(&noise, |_| crate::Opcode::from_u32(op).ok());
        // With a valid header in front of the noise.
        let mut b = vec![0u8; 32];
        let len = (32 + noise.len()) as u32;
        b[0..4].copy_from_slice(&len.to_le_bytes());
        b[4..8].copy_from_slice(&crate::header::CTDB_MAGIC.to_le_bytes());
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[16..20].copy_from_slice(&(op % 11).to_le_bytes());
        b.extend_from_slice(&noise);
        let _ = Packet::decode(&b, |_| crate::Opcode::from_u32(op).ok());
    }

    #[test]
    fn truncated_packets_are_errors(seed in any::<u64>()) {
        let p = Packet::random(&mut Rng::new(seed));
        let b = p.encode();
        for cut in 0..b.len() {
            // The header's length now exceeds what is there.
            prop_assert!(Packet::decode(&b[..cut], |_| reply_opcode(&p)).is_err());
        }
    }
}
