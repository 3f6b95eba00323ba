//! Comparing tool output with the reference outputs in
//! `tests/reference/ctdb-4.17/tool-output/`, allowing for what differs
//! from run to run: pids, times, dates, counters, generations, addresses
//! and the cluster directory.

use std::net::Ipv4Addr;

const NAMES: &[&str] = &[
    "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun", "Jan", "Feb", "Mar", "Apr", "May", "Jun",
    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Masks one whitespace-separated word.
fn mask_word(w: &str) -> String {
    if w.parse::<Ipv4Addr>().is_ok() {
        return "IP".into();
    }
    if NAMES.contains(&w) {
        return "DATE".into();
    }
    // Runs of digits (with embedded dots or colons) become N.
    let mut out = String::new();
    let mut in_num = false;
    let chars: Vec<char> = w.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let digit = c.is_ascii_digit();
        let joiner = (c == '.' || c == ':')
            && in_num
            && chars.get(i + 1).is_some_and(|n| n.is_ascii_digit());
        if digit || joiner {
            if !in_num {
                out.push('N');
                in_num = true;
            }
        } else {
            in_num = false;
            out.push(c);
        }
    }
    out
}

/// `text` with variable parts masked and blanks collapsed, line by line.
/// `cluster_dir` (the directory of the cluster that produced it) is shown
/// as the reference's `/srv/ct`.
pub fn mask(text: &str, cluster_dir: Option<&str>) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let line = match cluster_dir {
            Some(d) => line.replace(d, "/srv/ct"),
            None => line.to_owned(),
        };
        let words: Vec<String> = line.split_whitespace().map(mask_word).collect();
        out.push_str(&words.join(" "));
        out.push('\n');
    }
    out
}

/// The reference tool's output for `name` (`tool-output/<name>.out`).
pub fn reference_output(name: &str) -> String {
    let p = crate::reference_dir()
        .join("tool-output")
        .join(format!("{name}.out"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_what_varies() {
        assert_eq!(
            mask("pnn:0 127.0.0.1        OK (THIS NODE)", None),
            "pnn:N IP OK (THIS NODE)\n"
        );
        assert_eq!(
            mask(
                "Ctdbd start time : (000 00:03:16) Sun Nov 22 11:23:50 2026",
                None
            ),
            "Ctdbd start time : (N N) DATE DATE N N N\n"
        );
        assert_eq!(
            mask("/tmp/x/shared/cluster.lock", Some("/tmp/x")),
            "/srv/ct/shared/cluster.lock\n"
        );
        assert_eq!(mask("time=0.000194 sec", None), "time=N sec\n");
    }
}
