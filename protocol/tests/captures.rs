//! Every packet captured from a real CTDB 4.17.12 cluster decodes into typed
//! values and encodes back to the identical bytes.
//!
//! A `REPLY_CONTROL` does not name its opcode, so each reply is matched to
//! its request first. The captures are grouped by socket and direction, not
//! in time order, and a socket may be reused by a later client whose reqids
//! start over; so requests are queued per (stream, reqid) and each reply
//! takes the oldest unanswered request with its reqid. A daemon receives a
//! node's request on one TCP connection and replies on another, so requests
//! are also queued by the routing fields of their headers.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;

use ctdb_protocol::message::srvid;
use ctdb_protocol::types::RecData;
use ctdb_protocol::{
    Body, ControlRequest, Header, Marshal, MessageData, Opcode, Operation, Packet,
};

fn captures_dir() -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/ctdb-4.17/captures");
    assert!(
        dir.is_dir(),
        "reference captures not found at {} (they are part of the repository)",
        dir.display()
    );
    dir
}

struct Line {
    /// The capturing process (or the node-to-node capture as a whole).
    process: String,
    /// The stream ends the packet went from and to.
    from: String,
    to: String,
    bytes: Vec<u8>,
}

fn parse_line(file: &str, v: &serde_json::Value) -> Line {
    let bytes = hex::decode(v["hex"].as_str().expect("hex field")).unwrap();
    if let Some(src) = v.get("src") {
        let ip = |s: &serde_json::Value| s.as_str().unwrap().rsplit_once(':').unwrap().0.to_owned();
        Line {
            process: file.to_owned(),
            from: ip(src),
            to: ip(&v["dst"]),
            bytes,
        }
    } else {
        let process = format!("{file}:{}", v["pid"]);
        let end = format!("{process}:{}", v["fd"]);
        let peer = format!("{end}:peer");
        let (from, to) = match v["dir"].as_str().unwrap() {
            "sent" => (end, peer),
            "received" => (peer, end),
            d => panic!("unknown direction {d}"),
        };
        Line {
            process,
            from,
            to,
            bytes,
        }
    }
}

#[derive(Hash, PartialEq, Eq, Clone)]
enum Key {
    Stream(String, String, u32),
    Route(String, u32, u32, u32),
}

/// Outstanding requests, matched to replies oldest first.
#[derive(Default)]
struct Requests {
    queues: HashMap<Key, VecDeque<usize>>,
    opcodes: Vec<Opcode>,
    answered: HashSet<usize>,
}

impl Requests {
    fn add(&mut self, line: &Line, h: &Header, op: Opcode) {
        let id = self.opcodes.len();
        self.opcodes.push(op);
        for k in [
            Key::Stream(line.from.clone(), line.to.clone(), h.reqid),
            Key::Route(line.process.clone(), h.srcnode, h.destnode, h.reqid),
        ] {
            self.queues.entry(k).or_default().push_back(id);
        }
    }

    fn answer(&mut self, line: &Line, h: &Header) -> Option<Opcode> {
        for k in [
            Key::Stream(line.to.clone(), line.from.clone(), h.reqid),
            Key::Route(line.process.clone(), h.destnode, h.srcnode, h.reqid),
        ] {
            if let Some(q) = self.queues.get_mut(&k) {
                while let Some(id) = q.pop_front() {
                    if self.answered.insert(id) {
                        return Some(self.opcodes[id]);
                    }
                }
            }
        }
        None
    }
}

#[test]
fn captures_round_trip() {
    let mut files: Vec<_> = std::fs::read_dir(captures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 40,
        "expected the whole capture set, found {} files",
        files.len()
    );

    let mut checked = 0usize;
    let mut orphans = 0usize;
    let mut by_kind: HashMap<String, usize> = HashMap::new();
    let mut failures = Vec::new();
    for path in &files {
        let fname = path.file_name().unwrap().to_string_lossy().into_owned();
        let lines: Vec<Line> = std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|t| parse_line(&fname, &serde_json::from_str(t).unwrap()))
            .collect();

        // First pass: every request, and the srvids traverses send records to.
        let mut requests = Requests::default();
        let mut traverse_srvids = HashSet::new();
        for line in &lines {
            let Ok((h, _)) = Header::pull(&line.bytes) else {
                continue;
            };
            if h.operation != Operation::ReqControl {
                continue;
            }
            if let Ok(Packet {
                body: Body::ReqControl(c),
                ..
            }) = Packet::decode_request(&line.bytes)
            {
                requests.add(line, &h, c.opcode());
                match &c.data {
                    ControlRequest::TraverseStartExt(t) => drop(traverse_srvids.insert(t.srvid)),
                    ControlRequest::TraverseAllExt(t) => drop(traverse_srvids.insert(t.srvid)),
                    _ => {}
                }
            }
        }

        for (i, line) in lines.iter().enumerate() {
            let where_ = format!("{fname}:{}", i + 1);
            let opcode = match Header::pull(&line.bytes) {
                Ok((h, _)) if h.operation == Operation::ReplyControl => {
                    match requests.answer(line, &h) {
                        Some(op) => Some(op),
                        None => {
                            check_orphan_reply(&where_, &line.bytes, &mut failures);
                            orphans += 1;
                            checked += 1;
                            continue;
                        }
                    }
                }
                _ => None,
            };
            let pkt = match Packet::decode(&line.bytes, |_| opcode) {
                Ok(p) => p,
                Err(e) => {
                    failures.push(format!("{where_}: decode failed: {e}"));
                    continue;
                }
            };
            let kind = match &pkt.body {
                Body::ReqControl(c) => format!("control {}", c.opcode().name()),
                Body::ReplyControl(r) => {
                    if r.status == 0 && r.data.is_none() {
                        failures.push(format!("{where_}: successful reply without typed data"));
                    }
                    format!("reply {}", opcode.unwrap().name())
                }
                Body::ReqMessage(m) => match &m.data {
                    MessageData::Data(d) if traverse_srvids.contains(&m.srvid) => {
                        match RecData::pull(d) {
                            Ok((_, n)) if n == d.len() => {}
                            _ => failures.push(format!("{where_}: traverse record did not decode")),
                        }
                        "message traverse record".to_owned()
                    }
                    MessageData::Data(_) => {
                        format!("message data srvid prefix 0x{:x}", m.srvid >> 48)
                    }
                    d => format!("message {}", format!("{d:?}").split('(').next().unwrap()),
                },
                b => format!("{:?}", b.operation()),
            };
            *by_kind.entry(kind).or_default() += 1;
            let again = pkt.encode();
            if again != line.bytes {
                let at = again.iter().zip(&line.bytes).position(|(a, b)| a != b);
                failures.push(format!(
                    "{where_}: re-encoding differs (ours {} bytes, theirs {}, first difference at {:?}): {:?}",
                    again.len(),
                    line.bytes.len(),
                    at,
                    pkt.header
                ));
            }
            checked += 1;
        }
    }
    let mut kinds: Vec<_> = by_kind.into_iter().collect();
    kinds.sort();
    for (k, n) in &kinds {
        println!("{n:6}  {k}");
    }
    println!(
        "checked {checked} packets from {} capture files ({orphans} replies whose request the capture lacks)",
        files.len()
    );
    if !failures.is_empty() {
        for f in failures.iter().take(50) {
            eprintln!("{f}");
        }
        panic!("{} of the captured packets failed", failures.len());
    }
    assert!(checked > 2000);
}

/// A reply whose request is missing from the capture (the capture tool
/// lost some packets) cannot be matched to one opcode. It must still decode,
/// as the reply to every control whose reply carries no data, and re-encode
/// to the same bytes; and there must be such controls for it to be one of.
fn check_orphan_reply(where_: &str, bytes: &[u8], failures: &mut Vec<String>) {
    let mut fits = 0;
    for &op in Opcode::ALL {
        if Packet::decode(bytes, |_| Some(op)).is_ok_and(|p| p.encode() == bytes) {
            fits += 1;
        }
    }
    if fits == 0 {
        failures.push(format!("{where_}: reply without request fits no control"));
    }
}

#[test]
fn traverse_srvid_prefix_is_client_range() {
    // The tool's traverses register srvids in the client range.
    assert_eq!(srvid::CLIENT_RANGE >> 56, 0xBE);
}
