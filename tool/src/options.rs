//! Command-line options, parsed the way CTDB's tool parses them with popt:
//! options may appear anywhere before `--`, short options bundle (`-Yv`),
//! take their value attached or as the next word (`-n1`, `-n 1`,
//! `--node=1`, `--node 1`), and errors are reported as
//! `Invalid option <what>: <why>` with exit code 1.

use ctdb_protocol::stdio::check_output;
use std::io::Write;

/// The global options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub debuglevel: Option<String>,
    /// Control timeout in seconds (`-t`).
    pub timelimit: i64,
    /// Node to run the command on (`-n`), -1 for the current node.
    pub pnn: i64,
    pub machinereadable: bool,
    pub sep: String,
    pub machineparsable: bool,
    pub verbose: bool,
    /// Seconds before the tool gives up entirely (`-T`), 0 for default.
    pub maxruntime: i64,
    /// The command and its arguments.
    pub args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            debuglevel: None,
            timelimit: 10,
            pnn: -1,
            machinereadable: false,
            sep: "|".into(),
            machineparsable: false,
            verbose: false,
            maxruntime: 0,
            args: Vec::new(),
        }
    }
}

/// The full help text (`-?`, `--help`).
pub const HELP: &str = "Usage: [OPTION...]
  -d, --debug=STRING       debug level
  -t, --timelimit=INT      timelimit (in seconds)
  -n, --node=INT           node specification - integer
  -Y                       enable machine readable output
  -x, --separator=CHAR     specify separator for machine readable output
  -X                       enable machine parsable output with separator |
  -v, --verbose            enable verbose output
  -T, --maxruntime=INT     die if runtime exceeds this limit (in seconds)

Help options:
  -?, --help               Show this help message
      --usage              Display brief usage message
";

/// The brief usage text (`--usage`, and before a command's usage line).
pub const USAGE: &str = "Usage: [-?YXv] [-?|--help] [--usage] [-d|--debug=STRING]
        [-t|--timelimit=INT] [-n|--node=INT] [-Y] [-x|--separator=CHAR]
        [-X] [-v|--verbose] [-T|--maxruntime=INT]
";

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Flag,
}

/// (short, long, kind)
const TABLE: &[(char, &str, Kind)] = &[
    ('d', "debug", Kind::Str),
    ('t', "timelimit", Kind::Int),
    ('n', "node", Kind::Int),
    ('Y', "", Kind::Flag),
    ('x', "separator", Kind::Str),
    ('X', "", Kind::Flag),
    ('v', "verbose", Kind::Flag),
    ('T', "maxruntime", Kind::Int),
];

/// Why parsing stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseOutcome {
    /// Print this to stdout and exit 0 (`--help`, `--usage`).
    Info(&'static str),
    /// Print this to stderr and exit 1.
    Error(String),
}

/// Parses an integer as popt does (`strtol` base 0, whole word, within an
/// `int`).
fn parse_int(s: &str) -> Result<i64, &'static str> {
    let t = s.trim_start();
    let (neg, body) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (radix, digits) =
        if let Some(r) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
            (16, r)
        } else if body.len() > 1 && body.starts_with('0') {
            (8, &body[1..])
        } else {
            (10, body)
        };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err("invalid numeric value");
    }
    let v = i128::from_str_radix(digits, radix).map_err(|_| "number too large or too small")?;
    let v = if neg { -v } else { v };
    if v > i32::MAX as i128 || v < i32::MIN as i128 {
        return Err("number too large or too small");
    }
    Ok(v as i64)
}

impl Options {
    /// Sets option `short`; `shown` is what an error message quotes.
    fn set(&mut self, short: char, value: Option<&str>, shown: &str) -> Result<(), ParseOutcome> {
        let int = |v: &str| -> Result<i64, ParseOutcome> {
            parse_int(v)
                .map_err(|why| ParseOutcome::Error(format!("Invalid option {shown}: {why}")))
        };
        match short {
            'd' => self.debuglevel = value.map(str::to_owned),
            't' => self.timelimit = int(value.unwrap_or_default())?,
            'n' => self.pnn = int(value.unwrap_or_default())?,
            'Y' => self.machinereadable = true,
            'x' => self.sep = value.unwrap_or_default().to_owned(),
            'X' => self.machineparsable = true,
            'v' => self.verbose = true,
            'T' => self.maxruntime = int(value.unwrap_or_default())?,
            _ => {
                return Err(ParseOutcome::Error(format!(
                    "Invalid option {shown}: unknown option"
                )));
            }
        }
        Ok(())
    }

    /// Parses the arguments after the program name.
    pub fn parse(argv: &[String]) -> Result<Options, ParseOutcome> {
        let mut o = Options::default();
        let mut i = 0;
        let missing =
            |shown: &str| ParseOutcome::Error(format!("Invalid option {shown}: missing argument"));
        while i < argv.len() {
            let a = &argv[i];
            i += 1;
            if a == "--" {
                o.args.extend(argv[i..].iter().cloned());
                break;
            }
            if let Some(long) = a.strip_prefix("--") {
                let (name, inline) = match long.split_once('=') {
                    Some((n, v)) => (n, Some(v)),
                    None => (long, None),
                };
                match name {
                    "help" => return Err(ParseOutcome::Info(HELP)),
                    "usage" => return Err(ParseOutcome::Info(USAGE)),
                    _ => {}
                }
                let Some(&(short, _, kind)) =
                    TABLE.iter().find(|(_, l, _)| !l.is_empty() && *l == name)
                else {
                    return Err(ParseOutcome::Error(format!(
                        "Invalid option {a}: unknown option"
                    )));
                };
                let (value, shown) = match kind {
                    Kind::Flag => (None, a.clone()),
                    _ => match inline {
                        Some(v) => (Some(v.to_owned()), a.clone()),
                        None if i < argv.len() => {
                            i += 1;
                            (Some(argv[i - 1].clone()), argv[i - 1].clone())
                        }
                        None => return Err(missing(a)),
                    },
                };
                o.set(short, value.as_deref(), &shown)?;
                continue;
            }
            if a.len() > 1 && a.starts_with('-') {
                let chars: Vec<char> = a[1..].chars().collect();
                let mut j = 0;
                while j < chars.len() {
                    let c = chars[j];
                    j += 1;
                    if c == '?' {
                        return Err(ParseOutcome::Info(HELP));
                    }
                    let Some(&(_, _, kind)) = TABLE.iter().find(|(s, _, _)| *s == c) else {
                        return Err(ParseOutcome::Error(format!(
                            "Invalid option {a}: unknown option"
                        )));
                    };
                    match kind {
                        Kind::Flag => o.set(c, None, a)?,
                        _ => {
                            let rest: String = chars[j..].iter().collect();
                            let (value, shown) = if !rest.is_empty() {
                                (rest, a.clone())
                            } else if i < argv.len() {
                                i += 1;
                                (argv[i - 1].clone(), argv[i - 1].clone())
                            } else {
                                return Err(missing(a));
                            };
                            o.set(c, Some(&value), &shown)?;
                            break;
                        }
                    }
                }
                continue;
            }
            o.args.push(a.clone());
        }
        if o.machineparsable {
            o.machinereadable = true;
        }
        Ok(o)
    }
}

/// Prints the usage of `command` (or the full help) to stdout and exits 1,
/// as the reference tool does for a bad command line.
pub fn usage(command: Option<&str>) -> ! {
    let mut out = std::io::stdout().lock();
    match command.and_then(crate::commands::find) {
        Some(cmd) => {
            let _ = check_output(out.write_all(USAGE.as_bytes()));
            let _ = check_output(writeln!(out, "\nCommands:"));
            let _ = check_output(writeln!(out, "{}", crate::commands::usage_line(cmd)));
        }
        None => {
            let _ = check_output(out.write_all(HELP.as_bytes()));
            let _ = check_output(writeln!(out, "\nCommands:"));
            for cmd in crate::commands::COMMANDS {
                let _ = check_output(writeln!(out, "{}", crate::commands::usage_line(cmd)));
            }
        }
    }
    let _ = check_output(out.flush());
    std::process::exit(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Options, ParseOutcome> {
        let v: Vec<String> = s.split_whitespace().map(str::to_owned).collect();
        Options::parse(&v)
    }

    #[test]
    fn options_anywhere_and_bundled() {
        let o = p("status -n 1 -Xv").unwrap();
        assert_eq!(o.args, vec!["status"]);
        assert_eq!(o.pnn, 1);
        assert!(o.machinereadable && o.machineparsable && o.verbose);
        let o = p("-n1 --timelimit=3 -x, getvar a -- -n 2").unwrap();
        assert_eq!((o.pnn, o.timelimit, o.sep.as_str()), (1, 3, ","));
        assert_eq!(o.args, vec!["getvar", "a", "-n", "2"]);
        assert_eq!(p("-n 0x10 status").unwrap().pnn, 16);
    }

    #[test]
    fn errors_as_popt_words_them() {
        let e = |s| match p(s) {
            Err(ParseOutcome::Error(m)) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(e("-n"), "Invalid option -n: missing argument");
        assert_eq!(
            e("-n all status"),
            "Invalid option all: invalid numeric value"
        );
        assert_eq!(
            e("--node=abc"),
            "Invalid option --node=abc: invalid numeric value"
        );
        assert_eq!(e("-Yn1x"), "Invalid option -Yn1x: invalid numeric value");
        assert_eq!(e("-Xn"), "Invalid option -Xn: missing argument");
        assert_eq!(e("-q"), "Invalid option -q: unknown option");
        assert_eq!(e("--bogus"), "Invalid option --bogus: unknown option");
        assert_eq!(
            e("-n 99999999999"),
            "Invalid option 99999999999: number too large or too small"
        );
        assert_eq!(p("--usage"), Err(ParseOutcome::Info(USAGE)));
        assert_eq!(p("-?"), Err(ParseOutcome::Info(HELP)));
    }
}
