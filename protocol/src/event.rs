//! The event daemon's protocol (`ctdb-eventd`'s unix socket), as CTDB 4.17
//! speaks it.
//!
//! A packet is a 12-byte header (`length`, `version`, `reqid`, all u32; the
//! length counts the whole packet) followed by a u32 command and the
//! command's data. A reply carries the request's reqid, the command and an
//! `i32` result (an errno value, 0 for success); only a successful `STATUS`
//! reply has data after that. Strings are CTDB `stringn`s (a u32 length that
//! includes the NUL, or 0 for an absent string). 4.17's client and daemon
//! both leave the header's version at 0.
//!
//! Results the daemon gives (errno values):
//!
//! * `RUN`: 0, `ENOENT` (no such component directory), `ETIMEDOUT`,
//!   `ECANCELED` (a monitor event cancelled by another event, or refused
//!   while another event runs), `ENOEXEC` (a script failed), `EIO`;
//! * `STATUS`: 0, `ENOENT`, `EINVAL` (the event has never run);
//! * `SCRIPT`: 0, `ENOENT`, `EINVAL` (not a script, or a symlink), or the
//!   error of `open`/`fchmod`.
//!
//! Per-script results in a status are 0, a positive exit status, or a
//! negative errno: `-ENOEXEC` for a disabled script, `-ETIMEDOUT`, `-EINTR`
//! for a script killed by a signal, `-ECANCELED` for the summary of a
//! cancelled run.

use crate::error::{Error, Result};
use crate::marshal::{Marshal, Reader, Writer, cstrn_len, wire_u32};
use crate::types::Timeval;

/// `CTDB_EVENT_PROTOCOL_VERSION` (defined by 4.17, but never sent: both
/// sides put 0 in the header).
pub const EVENT_PROTOCOL_VERSION: u32 = 1;

/// `CTDB_EVENT_RUN_ALL`: keep running the remaining scripts after one fails.
pub const RUN_ALL: u32 = 1;

/// Size of the packet header.
pub const HEADER_SIZE: usize = 12;

/// errno values the protocol carries (Linux numbers).
pub mod errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EINTR: i32 = 4;
    pub const EIO: i32 = 5;
    pub const ENOEXEC: i32 = 8;
    pub const ENOMEM: i32 = 12;
    pub const EACCES: i32 = 13;
    pub const EINVAL: i32 = 22;
    pub const EPROTO: i32 = 71;
    pub const ETIMEDOUT: i32 = 110;
    pub const ECANCELED: i32 = 125;
}

/// `enum ctdb_event_command`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventCommand {
    Run,
    Status,
    Script,
}

impl EventCommand {
    pub fn to_u32(self) -> u32 {
        match self {
            EventCommand::Run => 1,
            EventCommand::Status => 2,
            EventCommand::Script => 3,
        }
    }

    pub fn from_u32(v: u32) -> Result<Self> {
        Ok(match v {
            1 => EventCommand::Run,
            2 => EventCommand::Status,
            3 => EventCommand::Script,
            _ => {
                return Err(Error::Invalid {
                    what: "event command",
                    why: "not RUN, STATUS or SCRIPT",
                });
            }
        })
    }

    /// The name 4.17 logs for the command.
    pub fn name(self) -> &'static str {
        match self {
            EventCommand::Run => "RUN",
            EventCommand::Status => "STATUS",
            EventCommand::Script => "SCRIPT",
        }
    }
}

/// `enum ctdb_event_script_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScriptAction {
    Disable,
    Enable,
}

impl ScriptAction {
    fn to_u32(self) -> u32 {
        match self {
            ScriptAction::Disable => 0,
            ScriptAction::Enable => 1,
        }
    }

    fn from_u32(v: u32) -> Result<Self> {
        match v {
            0 => Ok(ScriptAction::Disable),
            1 => Ok(ScriptAction::Enable),
            _ => Err(Error::Invalid {
                what: "script action",
                why: "not ENABLE or DISABLE",
            }),
        }
    }
}

/// `ctdb_event_request_run`: run `event` of `component` with `args`
/// (space-separated), within `timeout` seconds for the whole event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunRequest {
    pub component: Option<String>,
    pub event: Option<String>,
    pub args: Option<String>,
    pub timeout: u32,
    pub flags: u32,
}

/// `ctdb_event_request_status`: the last result of `event` in `component`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatusRequest {
    pub component: Option<String>,
    pub event: Option<String>,
}

/// `ctdb_event_request_script`: set or clear a script's execute bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptRequest {
    pub component: Option<String>,
    pub script: Option<String>,
    pub action: ScriptAction,
}

/// A request's command and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventRequestData {
    Run(RunRequest),
    Status(StatusRequest),
    Script(ScriptRequest),
}

impl EventRequestData {
    pub fn command(&self) -> EventCommand {
        match self {
            EventRequestData::Run(_) => EventCommand::Run,
            EventRequestData::Status(_) => EventCommand::Status,
            EventRequestData::Script(_) => EventCommand::Script,
        }
    }
}

/// A whole request packet. `push` writes `len()` as the header's length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRequest {
    pub version: u32,
    pub reqid: u32,
    pub data: EventRequestData,
}

/// `ctdb_event_script`: one script's part of an event's result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventScript {
    pub name: Option<String>,
    pub begin: Timeval,
    pub end: Timeval,
    /// 0, the exit status, or a negative errno (see the module docs).
    pub result: i32,
    /// What the script wrote to stdout and stderr (up to its first NUL).
    pub output: Option<Vec<u8>>,
}

/// `ctdb_event_reply_status`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatusReply {
    /// 0, or the result of the script that failed (the last failing one when
    /// all scripts were run), `-ETIMEDOUT`, ...
    pub summary: i32,
    pub scripts: Vec<EventScript>,
}

/// A whole reply packet. `status` is present exactly when the command is
/// `STATUS` and the result is 0 (the wire has no room for it otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventReply {
    pub version: u32,
    pub reqid: u32,
    pub command: EventCommand,
    pub result: i32,
    pub status: Option<StatusReply>,
}

/// The total length a buffer starting with a packet header announces, once
/// at least 4 bytes are there.
pub fn packet_length(buf: &[u8]) -> Option<u32> {
    let b: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    Some(u32::from_ne_bytes(b))
}

fn bytesn_len(b: Option<&[u8]>) -> usize {
    4 + b.map_or(0, |b| b.len() + 1)
}

/// A `stringn` holding arbitrary bytes (script output need not be UTF-8).
fn push_bytesn(w: &mut Writer<'_>, b: Option<&[u8]>) {
    match b {
        None => w.u32(0),
        Some(b) => {
            w.u32(wire_u32(b.len() + 1));
            w.bytes(b);
            w.u8(0);
        }
    }
}

fn pull_bytesn(r: &mut Reader<'_>, what: &'static str) -> Result<Option<Vec<u8>>> {
    let len = r.u32(what)? as usize;
    if len == 0 {
        return Ok(None);
    }
    let b = r.bytes(len, what)?;
    match b.iter().position(|&c| c == 0) {
        Some(nul) if nul == len - 1 => Ok(Some(b[..nul].to_vec())),
        Some(nul) => Err(Error::Inconsistent {
            what,
            declared: len,
            actual: nul + 1,
        }),
        None => Err(Error::Invalid {
            what,
            why: "string is not NUL-terminated",
        }),
    }
}

fn header_push(w: &mut Writer<'_>, length: usize, version: u32, reqid: u32) {
    w.u32(wire_u32(length));
    w.u32(version);
    w.u32(reqid);
}

/// Reads the header; returns (version, reqid). The length must cover at
/// least the header and fit the buffer.
fn header_pull(r: &mut Reader<'_>, buflen: usize) -> Result<(u32, u32)> {
    let length = r.u32("event header length")?;
    let version = r.u32("event header version")?;
    let reqid = r.u32("event header reqid")?;
    if (length as usize) < HEADER_SIZE || length as usize > buflen {
        return Err(Error::BadLength {
            length,
            why: "event packet length outside the buffer",
        });
    }
    Ok((version, reqid))
}

impl Marshal for EventScript {
    fn len(&self) -> usize {
        cstrn_len(self.name.as_deref()) + 16 + 16 + 4 + bytesn_len(self.output.as_deref())
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.cstrn(self.name.as_deref());
        w.put(&self.begin);
        w.put(&self.end);
        w.i32(self.result);
        push_bytesn(&mut w, self.output.as_deref());
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let name = r.cstrn("event script name")?;
        let begin = r.get()?;
        let end = r.get()?;
        let result = r.i32("event script result")?;
        let output = pull_bytesn(&mut r, "event script output")?;
        Ok((
            EventScript {
                name,
                begin,
                end,
                result,
                output,
            },
            r.pos(),
        ))
    }
}

/// Smallest encoding of one [`EventScript`].
const SCRIPT_MIN: usize = 4 + 16 + 16 + 4 + 4;

impl Marshal for StatusReply {
    fn len(&self) -> usize {
        4 + 4 + self.scripts.iter().map(Marshal::len).sum::<usize>()
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        w.i32(self.summary);
        w.i32(i32::try_from(self.scripts.len()).unwrap_or(i32::MAX));
        for s in &self.scripts {
            w.put(s);
        }
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let summary = r.i32("event status summary")?;
        let n = r.i32("event script count")?;
        let n = usize::try_from(n).map_err(|_| Error::Invalid {
            what: "event script count",
            why: "negative",
        })?;
        r.check_count(n, SCRIPT_MIN, "event script list")?;
        let mut scripts = Vec::with_capacity(n);
        for _ in 0..n {
            scripts.push(r.get()?);
        }
        Ok((StatusReply { summary, scripts }, r.pos()))
    }
}

impl EventRequestData {
    fn data_len(&self) -> usize {
        4 + match self {
            EventRequestData::Run(d) => {
                cstrn_len(d.component.as_deref())
                    + cstrn_len(d.event.as_deref())
                    + cstrn_len(d.args.as_deref())
                    + 8
            }
            EventRequestData::Status(d) => {
                cstrn_len(d.component.as_deref()) + cstrn_len(d.event.as_deref())
            }
            EventRequestData::Script(d) => {
                cstrn_len(d.component.as_deref()) + cstrn_len(d.script.as_deref()) + 4
            }
        }
    }
}

impl Marshal for EventRequest {
    fn len(&self) -> usize {
        HEADER_SIZE + self.data.data_len()
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        header_push(&mut w, self.len(), self.version, self.reqid);
        w.u32(self.data.command().to_u32());
        match &self.data {
            EventRequestData::Run(d) => {
                w.cstrn(d.component.as_deref());
                w.cstrn(d.event.as_deref());
                w.cstrn(d.args.as_deref());
                w.u32(d.timeout);
                w.u32(d.flags);
            }
            EventRequestData::Status(d) => {
                w.cstrn(d.component.as_deref());
                w.cstrn(d.event.as_deref());
            }
            EventRequestData::Script(d) => {
                w.cstrn(d.component.as_deref());
                w.cstrn(d.script.as_deref());
                w.u32(d.action.to_u32());
            }
        }
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let (version, reqid) = header_pull(&mut r, buf.len())?;
        let command = EventCommand::from_u32(r.u32("event command")?)?;
        let data = match command {
            EventCommand::Run => EventRequestData::Run(RunRequest {
                component: r.cstrn("run component")?,
                event: r.cstrn("run event")?,
                args: r.cstrn("run args")?,
                timeout: r.u32("run timeout")?,
                flags: r.u32("run flags")?,
            }),
            EventCommand::Status => EventRequestData::Status(StatusRequest {
                component: r.cstrn("status component")?,
                event: r.cstrn("status event")?,
            }),
            EventCommand::Script => EventRequestData::Script(ScriptRequest {
                component: r.cstrn("script component")?,
                script: r.cstrn("script name")?,
                action: ScriptAction::from_u32(r.u32("script action")?)?,
            }),
        };
        Ok((
            EventRequest {
                version,
                reqid,
                data,
            },
            r.pos(),
        ))
    }
}

impl EventReply {
    /// A reply without status data (any command, or a failed `STATUS`).
    pub fn result(reqid: u32, command: EventCommand, result: i32) -> Self {
        EventReply {
            version: 0,
            reqid,
            command,
            result,
            status: None,
        }
    }

    /// Whether the wire carries status data for this reply.
    fn has_status(&self) -> bool {
        self.command == EventCommand::Status && self.result == 0
    }
}

impl Marshal for EventReply {
    fn len(&self) -> usize {
        let data = if self.has_status() {
            self.status.as_ref().map_or(8, Marshal::len)
        } else {
            0
        };
        HEADER_SIZE + 8 + data
    }
    fn push(&self, buf: &mut [u8]) -> usize {
        let mut w = Writer::new(buf);
        header_push(&mut w, self.len(), self.version, self.reqid);
        w.u32(self.command.to_u32());
        w.i32(self.result);
        if self.has_status() {
            match &self.status {
                Some(s) => w.put(s),
                None => w.put(&StatusReply::default()),
            }
        }
        w.pos()
    }
    fn pull(buf: &[u8]) -> Result<(Self, usize)> {
        let mut r = Reader::new(buf);
        let (version, reqid) = header_pull(&mut r, buf.len())?;
        let command = EventCommand::from_u32(r.u32("event command")?)?;
        let result = r.i32("event result")?;
        let mut reply = EventReply {
            version,
            reqid,
            command,
            result,
            status: None,
        };
        if reply.has_status() {
            reply.status = Some(r.get()?);
        }
        Ok((reply, r.pos()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn opt_string() -> impl Strategy<Value = Option<String>> {
        proptest::option::of("[a-zA-Z0-9. _-]{0,20}")
    }

    fn script() -> impl Strategy<Value = EventScript> {
        (
            opt_string(),
            any::<(i64, i64, i64, i64)>(),
            any::<i32>(),
            proptest::option::of(proptest::collection::vec(1u8..=255, 0..64)),
        )
            .prop_map(|(name, (a, b, c, d), result, output)| EventScript {
                name,
                begin: Timeval { sec: a, usec: b },
                end: Timeval { sec: c, usec: d },
                result,
                output,
            })
    }

    fn request() -> impl Strategy<Value = EventRequest> {
        let run = (
            opt_string(),
            opt_string(),
            opt_string(),
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(|(component, event, args, timeout, flags)| {
                EventRequestData::Run(RunRequest {
                    component,
                    event,
                    args,
                    timeout,
                    flags,
                })
            });
        let status = (opt_string(), opt_string()).prop_map(|(component, event)| {
            EventRequestData::Status(StatusRequest { component, event })
        });
        let script = (opt_string(), opt_string(), any::<bool>()).prop_map(|(c, s, en)| {
            EventRequestData::Script(ScriptRequest {
                component: c,
                script: s,
                action: if en {
                    ScriptAction::Enable
                } else {
                    ScriptAction::Disable
                },
            })
        });
        (any::<u32>(), any::<u32>(), prop_oneof![run, status, script]).prop_map(
            |(version, reqid, data)| EventRequest {
                version,
                reqid,
                data,
            },
        )
    }

    fn reply() -> impl Strategy<Value = EventReply> {
        (
            any::<u32>(),
            0u32..3,
            prop_oneof![Just(0i32), any::<i32>()],
            any::<i32>(),
            proptest::collection::vec(script(), 0..5),
        )
            .prop_map(|(reqid, cmd, result, summary, scripts)| {
                let command = EventCommand::from_u32(cmd + 1).unwrap();
                let mut r = EventReply::result(reqid, command, result);
                if r.has_status() {
                    r.status = Some(StatusReply { summary, scripts });
                }
                r
            })
    }

    fn check<T: Marshal + PartialEq + std::fmt::Debug>(
        v: &T,
    ) -> std::result::Result<(), TestCaseError> {
        let mut buf = vec![0xAAu8; v.len() + 8];
        let n = v.push(&mut buf);
        prop_assert_eq!(n, v.len());
        prop_assert!(buf[n..].iter().all(|&b| b == 0xAA));
        let (back, m) = T::pull(&buf[..n]).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(m, n);
        prop_assert_eq!(&back, v);
        for cut in 0..n {
            if let Ok((_, k)) = T::pull(&buf[..cut]) {
                prop_assert!(k <= cut);
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn requests_round_trip(r in request()) { check(&r)?; }

        #[test]
        fn replies_round_trip(r in reply()) { check(&r)?; }

        #[test]
        fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = EventRequest::pull(&b);
            let _ = EventReply::pull(&b);
        }
    }

    /// A `STATUS` request for legacy/monitor, reqid 1, byte for byte as
    /// 4.17's client builds it.
    #[test]
    fn status_request_layout() {
        let r = EventRequest {
            version: 0,
            reqid: 1,
            data: EventRequestData::Status(StatusRequest {
                component: Some("legacy".into()),
                event: Some("monitor".into()),
            }),
        };
        let b = r.to_bytes();
        let mut want = Vec::new();
        for v in [39u32, 0, 1, 2, 7] {
            want.extend_from_slice(&v.to_ne_bytes());
        }
        want.extend_from_slice(b"legacy\0");
        want.extend_from_slice(&8u32.to_ne_bytes());
        want.extend_from_slice(b"monitor\0");
        assert_eq!(b, want);
    }

    #[test]
    fn lying_lengths_are_errors() {
        let mut b = EventRequest {
            version: 0,
            reqid: 1,
            data: EventRequestData::Status(StatusRequest::default()),
        }
        .to_bytes();
        b[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(EventRequest::pull(&b).is_err());
        let mut st = EventReply::result(1, EventCommand::Status, 0).to_bytes();
        // A script count far past the data.
        st[24..28].copy_from_slice(&i32::MAX.to_ne_bytes());
        assert!(EventReply::pull(&st).is_err());
        st[24..28].copy_from_slice(&(-1i32).to_ne_bytes());
        assert!(EventReply::pull(&st).is_err());
    }
}
