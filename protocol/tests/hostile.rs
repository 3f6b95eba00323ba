//! Specific hostile inputs: each must be a typed error, without panicking
//! and without allocating what a lying count asks for.

use ctdb_protocol::header::{CTDB_MAGIC, HEADER_LEN};
use ctdb_protocol::types::{NodeMap, RecBuffer, VnnMap};
use ctdb_protocol::{
    ControlRequest, Error, Header, Marshal, Opcode, Operation, Packet, ReqControl,
};

fn header(op: u32, len: u32) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [len, CTDB_MAGIC, 1, 0, op, 0, 0, 7] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

#[test]
fn huge_counts_are_refused_before_allocating() {
    let mut b = vec![];
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(VnnMap::pull(&b), Err(Error::Truncated { .. })));
    assert!(matches!(
        NodeMap::pull(&u32::MAX.to_le_bytes()),
        Err(Error::Truncated { .. })
    ));
    let mut rb = vec![];
    rb.extend_from_slice(&1u32.to_le_bytes());
    rb.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(RecBuffer::pull(&rb), Err(Error::Truncated { .. })));
}

#[test]
fn lengths_beyond_the_data_are_errors() {
    // A control whose data length is larger than the packet.
    let mut b = header(Operation::ReqControl as u32, 0);
    b.extend_from_slice(&(Opcode::GetDbPath as u32).to_le_bytes());
    b.extend_from_slice(&[0; 20]);
    b.extend_from_slice(&1000u32.to_le_bytes());
    b.extend_from_slice(&[1, 2, 3, 4]);
    let len = b.len() as u32;
    b[..4].copy_from_slice(&len.to_le_bytes());
    assert!(matches!(
        Packet::decode_request(&b),
        Err(Error::Truncated { .. })
    ));

    // A header claiming more bytes than were received.
    let h = header(Operation::ReqKeepalive as u32, 4096);
    assert!(matches!(
        Packet::decode_request(&h),
        Err(Error::BadLength { .. })
    ));
}

#[test]
fn wrong_magic_version_operation_and_opcode() {
    let mut b = header(Operation::ReqKeepalive as u32, HEADER_LEN as u32);
    b[4] ^= 0xff;
    assert!(matches!(Header::pull(&b), Err(Error::BadMagic(_))));

    let mut b = header(Operation::ReqKeepalive as u32, HEADER_LEN as u32);
    b[8] = 2;
    assert!(matches!(Header::pull(&b), Err(Error::BadVersion(2))));

    let b = header(6, HEADER_LEN as u32);
    assert!(matches!(Header::pull(&b), Err(Error::UnknownOperation(6))));

    // Control 10 (GET_NODEMAPv4) is obsolete.
    let mut b = header(Operation::ReqControl as u32, 0);
    b.extend_from_slice(&10u32.to_le_bytes());
    b.extend_from_slice(&[0; 24]);
    let len = b.len() as u32;
    b[..4].copy_from_slice(&len.to_le_bytes());
    assert!(matches!(
        Packet::decode_request(&b),
        Err(Error::UnknownOpcode(10))
    ));
}

#[test]
fn strings_must_be_terminated_and_utf8() {
    let req = ReqControl::new(ControlRequest::DbAttach("x".into()));
    let mut b = req.to_bytes();
    let last = b.len() - 1;
    b[last] = b'y'; // overwrite the NUL
    assert!(matches!(ReqControl::pull(&b), Err(Error::Invalid { .. })));
    b[last - 1] = 0xff;
    b[last] = 0;
    assert!(matches!(ReqControl::pull(&b), Err(Error::Invalid { .. })));
}

/// Found by the fuzzer: a REPLY_DMASTER whose length left no room for the
/// trailing record flags re-encoded with them (padding made room), and the
/// second decode differed from the first.
#[test]
fn dmaster_without_record_flags_decodes_stably() {
    let input: &[u8] = &[
        63, 0, 0, 0, 66, 68, 84, 67, 1, 0, 0, 0, 0, 128, 64, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 78, 78,
        78, 59, 41, 78, 78, 78, 78, 78, 78, 78, 78, 78, 78, 78, 78, 78, 78, 0, 0, 0, 1, 4, 0, 0, 0,
        0, 0, 0, 0, 39, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let p = Packet::decode_request(input).unwrap();
    let again = Packet::decode_request(&p.encode()).unwrap();
    assert_eq!(again.body, p.body);
}

/// CTDB's daemon sends control error messages without a terminating NUL;
/// its client library sends them with one. Both read as the same text.
#[test]
fn reply_error_messages_with_and_without_nul() {
    use ctdb_protocol::ReplyControl;
    for msg in [&b"no such db"[..], &b"no such db\0"[..]] {
        let mut b = Vec::new();
        b.extend_from_slice(&(-1i32).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&(msg.len() as u32).to_le_bytes());
        b.extend_from_slice(msg);
        let (r, n) = ReplyControl::pull_for(Opcode::GetDbName, &b).unwrap();
        assert_eq!(n, b.len());
        assert_eq!(r.errmsg.as_deref(), Some("no such db"));
    }
    // We send the daemon's form.
    let r = ReplyControl::error(-1, "no such db");
    let mut b = vec![0u8; r.len()];
    r.push(&mut b);
    assert_eq!(&b[12..], b"no such db");
}
