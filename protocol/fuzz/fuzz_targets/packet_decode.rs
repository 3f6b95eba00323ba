//! Feeds arbitrary bytes to the stream framing and the packet decoder, the
//! way a daemon receives them from a socket. Any decoded packet must
//! re-encode and decode again to the same value.
#![no_main]

use ctdb_protocol::framing::Framer;
use ctdb_protocol::{Opcode, Packet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the opcode a reply is decoded for.
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let opcode = Opcode::ALL[sel as usize % Opcode::ALL.len()];
    let mut framer = Framer::new(1 << 20);
    framer.push(rest);
    while let Ok(Some(frame)) = framer.next_packet() {
        if let Ok(p) = Packet::decode(&frame, |_| Some(opcode)) {
            let again = p.encode();
            let back = Packet::decode(&again, |_| Some(opcode)).expect("re-encoded packet decodes");
            assert_eq!(back.encode(), again);
        }
    }
});
