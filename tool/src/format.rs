//! How things print: node flags, addresses, times, records, and the parsing
//! of addresses, keys and numbers as the reference tool accepts them.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ctdb_protocol::types::{LtdbHeader, SockAddr, node_flags, record_flags};

/// A flag only the tool uses: the node's state is not known yet.
pub const NODE_FLAGS_UNKNOWN: u32 = 0x0000_0040;

/// Node flags as words (`BANNED|INACTIVE`), or `OK`.
pub fn pretty_flags(flags: u32) -> String {
    const NAMES: &[(u32, &str)] = &[
        (node_flags::DISCONNECTED, "DISCONNECTED"),
        (NODE_FLAGS_UNKNOWN, "UNKNOWN"),
        (node_flags::PERMANENTLY_DISABLED, "DISABLED"),
        (node_flags::BANNED, "BANNED"),
        (node_flags::UNHEALTHY, "UNHEALTHY"),
        (node_flags::DELETED, "DELETED"),
        (node_flags::STOPPED, "STOPPED"),
        (node_flags::INACTIVE, "INACTIVE"),
    ];
    let words: Vec<&str> = NAMES
        .iter()
        .filter(|(f, _)| flags & f != 0)
        .map(|(_, n)| *n)
        .collect();
    if words.is_empty() {
        "OK".into()
    } else {
        words.join("|")
    }
}

/// An address as the reference prints it: the IP, or with the port
/// (`1.2.3.4:80`, `[::1]:80`).
pub fn addr_str(a: &SockAddr, with_port: bool) -> String {
    match (a, with_port) {
        (SockAddr::Unspec, _) => "(null)".into(),
        (SockAddr::V4(v), false) => v.ip().to_string(),
        (SockAddr::V4(v), true) => format!("{}:{}", v.ip(), v.port()),
        (SockAddr::V6(v), false) => v.ip().to_string(),
        (SockAddr::V6(v), true) => format!("[{}]:{}", v.ip(), v.port()),
    }
}

/// Parses an IP address (v4, v6, `[v6]`, v4-mapped v6 becomes v4).
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    if !s.contains(':') {
        return s.parse::<Ipv4Addr>().ok().map(IpAddr::V4);
    }
    let inner = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    let v6: Ipv6Addr = inner.parse().ok()?;
    match v6.to_ipv4_mapped() {
        Some(v4) => Some(IpAddr::V4(v4)),
        None => Some(IpAddr::V6(v6)),
    }
}

/// Parses an address without a port.
pub fn parse_addr(s: &str) -> Option<SockAddr> {
    parse_ip(s).map(|ip| SocketAddr::new(ip, 0).into())
}

/// Parses `ip:port` (`[v6]:port` too).
pub fn parse_addr_port(s: &str) -> Option<SockAddr> {
    if s.len() >= 64 {
        return None;
    }
    let (ip, port) = s.rsplit_once(':')?;
    let port: u16 = parse_full_ulong(port, 10)?.try_into().ok()?;
    parse_ip(ip).map(|ip| SocketAddr::new(ip, port).into())
}

/// Parses `ip/mask`.
pub fn parse_addr_mask(s: &str) -> Option<(SockAddr, u32)> {
    let (ip, mask) = s.rsplit_once('/')?;
    let mask = parse_full_ulong(mask, 10)? as u32;
    Some((parse_addr(ip)?, mask))
}

/// `smb_strtoul` with full-string conversion: the whole string must be a
/// number in `radix` (0 means C's auto-detection).
pub fn parse_full_ulong(s: &str, radix: u32) -> Option<u64> {
    let (radix, digits) = if radix == 0 {
        if let Some(r) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            (16, r)
        } else if s.len() > 1 && s.starts_with('0') {
            (8, &s[1..])
        } else {
            (10, s)
        }
    } else {
        (radix, s)
    };
    if digits.is_empty() {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// `smb_strtoul(s, NULL, base, &err, SMB_STR_STANDARD)`: leading digits
/// (trailing garbage allowed), an error if there are none or the value is
/// negative.
pub fn parse_standard_ulong(s: &str, radix: u32) -> Option<u64> {
    let t = s.trim_start();
    if t.starts_with('-') {
        return None;
    }
    let t = t.strip_prefix('+').unwrap_or(t);
    let (radix, digits) = if radix == 0 || radix == 16 {
        if let Some(r) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            (16, r)
        } else if radix == 0 && t.len() > 1 && t.starts_with('0') {
            (8, &t[1..])
        } else {
            (if radix == 0 { 10 } else { radix }, t)
        }
    } else {
        (radix, t)
    };
    let end = digits
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(digits.len());
    if end == 0 {
        // "0" alone (octal prefix with nothing after) is a valid zero.
        return if t == "0" || digits.is_empty() && t.starts_with('0') {
            Some(0)
        } else {
            None
        };
    }
    u64::from_str_radix(&digits[..end], radix).ok()
}

/// C's `atoi`: leading digits with an optional sign, 0 when there are none.
pub fn atoi(s: &str) -> i64 {
    let t = s.trim_start();
    let (neg, t) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let v = t[..end].parse::<i64>().unwrap_or(0);
    if neg { -v } else { v }
}

/// A key or value argument: `0x...` is hex, anything else the bytes.
pub fn str_to_data(s: &[u8]) -> Result<Vec<u8>, String> {
    str_to_data_in(s, s)
}

/// [`str_to_data`] for `s` at the start of `rest`: error messages quote
/// from `s` to the end of `rest`, as the reference's do (it prints the
/// rest of its C string).
pub fn str_to_data_in(s: &[u8], rest: &[u8]) -> Result<Vec<u8>, String> {
    if let Some(hex) = s.strip_prefix(b"0x") {
        let rest = &rest[2.min(rest.len())..];
        if hex.len() % 2 == 1 {
            return Err(format!(
                "Key ({}) contains odd number of hex digits",
                String::from_utf8_lossy(rest)
            ));
        }
        let mut out = Vec::with_capacity(hex.len() / 2);
        for (i, pair) in hex.chunks(2).enumerate() {
            let v = std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok());
            match v {
                Some(b) => out.push(b),
                None => {
                    return Err(format!(
                        "Invalid hex: {}",
                        String::from_utf8_lossy(&rest[(i * 2).min(rest.len())..])
                    ));
                }
            }
        }
        Ok(out)
    } else {
        Ok(s.to_vec())
    }
}

/// `name(len) = "escaped"` as the reference dumps keys and values.
pub fn tdb_data(out: &mut String, name: &str, d: &[u8]) {
    let _ = write!(out, "{name}({}) = \"", d.len());
    for &c in d {
        if (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\' {
            out.push(c as char);
        } else {
            let _ = write!(out, "\\{c:02X}");
        }
    }
    out.push_str("\"\n");
}

/// The record header lines of a dump.
pub fn ltdb_header(out: &mut String, h: &LtdbHeader) {
    let _ = writeln!(out, "dmaster: {}", h.dmaster);
    let _ = writeln!(out, "rsn: {}", h.rsn);
    let _ = write!(out, "flags: 0x{:08x}", h.flags);
    const NAMES: &[(u32, &str)] = &[
        (record_flags::MIGRATED_WITH_DATA, " MIGRATED_WITH_DATA"),
        (record_flags::VACUUM_MIGRATED, " VACUUM_MIGRATED"),
        (record_flags::AUTOMATIC, " AUTOMATIC"),
        (record_flags::RO_HAVE_DELEGATIONS, " RO_HAVE_DELEGATIONS"),
        (record_flags::RO_HAVE_READONLY, " RO_HAVE_READONLY"),
        (record_flags::RO_REVOKING_READONLY, " RO_REVOKING_READONLY"),
        (record_flags::RO_REVOKE_COMPLETE, " RO_REVOKE_COMPLETE"),
    ];
    for (f, n) in NAMES {
        if h.flags & f != 0 {
            out.push_str(n);
        }
    }
    out.push('\n');
}

/// One record of `catdb`, `cattdb` and `dumpdbbackup`.
pub fn record(out: &mut String, h: &LtdbHeader, key: &[u8], data: &[u8]) {
    tdb_data(out, "key", key);
    ltdb_header(out, h);
    tdb_data(out, "data", data);
    out.push('\n');
}

/// Broken-down local time of `secs`.
fn local_tm(secs: i64) -> libc::tm {
    let t = secs as libc::time_t;
    // SAFETY: localtime_r only writes the tm we own; a zeroed tm is a valid
    // value to start from.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&t, &mut tm);
        tm
    }
}

/// C's `ctime()`: `Wed Jun 30 21:49:08 1993\n`.
pub fn ctime(secs: i64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let tm = local_tm(secs);
    format!(
        "{} {} {:2} {:02}:{:02}:{:02} {}\n",
        DAYS[tm.tm_wday.rem_euclid(7) as usize],
        MONS[tm.tm_mon.rem_euclid(12) as usize],
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        tm.tm_year as i64 + 1900
    )
}

/// `%Y/%m/%d %H:%M:%S` in local time.
pub fn timestamp(secs: i64) -> String {
    let tm = local_tm(secs);
    format!(
        "{}/{:02}/{:02} {:02}:{:02}:{:02}",
        tm.tm_year as i64 + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// `(DDD HH:MM:SS)` for a duration in seconds.
pub fn duration(secs: i64) -> String {
    let mut t = secs as i32;
    let s = t % 60;
    t /= 60;
    let m = t % 60;
    t /= 60;
    let h = t % 24;
    t /= 24;
    format!("({t:03} {h:02}:{m:02}:{s:02})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_words() {
        assert_eq!(pretty_flags(0), "OK");
        assert_eq!(pretty_flags(0x24), "DISABLED|STOPPED|INACTIVE");
        assert_eq!(pretty_flags(0x8 | 0x20), "BANNED|STOPPED|INACTIVE");
        assert_eq!(pretty_flags(NODE_FLAGS_UNKNOWN), "UNKNOWN");
    }

    #[test]
    fn addresses() {
        let a = parse_addr_port("10.1.2.3:445").unwrap();
        assert_eq!(addr_str(&a, true), "10.1.2.3:445");
        assert_eq!(addr_str(&a, false), "10.1.2.3");
        let b = parse_addr_port("[fd00::1]:80").unwrap();
        assert_eq!(addr_str(&b, true), "[fd00::1]:80");
        assert_eq!(
            addr_str(&parse_addr("::ffff:1.2.3.4").unwrap(), false),
            "1.2.3.4"
        );
        assert!(parse_addr("1.2.3").is_none());
        assert_eq!(parse_addr_mask("10.0.0.1/24").unwrap().1, 24);
    }

    #[test]
    fn keys_and_dumps() {
        assert_eq!(str_to_data(b"0x6162").unwrap(), b"ab");
        assert!(str_to_data(b"0x616").is_err());
        assert_eq!(str_to_data(b"0xzz").unwrap_err(), "Invalid hex: zz");
        let mut s = String::new();
        tdb_data(&mut s, "key", b"a\"\\\x00b");
        assert_eq!(s, "key(5) = \"a\\22\\5C\\00b\"\n");
    }

    #[test]
    fn numbers_like_c() {
        assert_eq!(parse_standard_ulong("60", 0), Some(60));
        assert_eq!(parse_standard_ulong("0x10", 0), Some(16));
        assert_eq!(parse_standard_ulong("12ab", 0), Some(12));
        assert_eq!(parse_standard_ulong("ab", 0), None);
        assert_eq!(parse_standard_ulong("0", 0), Some(0));
        assert_eq!(parse_standard_ulong("-3", 0), None);
        assert_eq!(atoi("12x"), 12);
        assert_eq!(duration(3 * 86400 + 3661), "(003 01:01:01)");
    }
}
