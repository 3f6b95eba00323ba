//! Our ctdb-eventd and the reference's, driven by the reference
//! `ctdb-event` tool with the same scripts: outputs and exit codes must be
//! equal (times masked), and each must be what CTDB 4.17 gives.

mod common;

use common::{BOTH, Eventd, mask_times, wait_for, write_script};
use std::path::Path;

fn basic_scripts(base: &Path) {
    let l = base.join("events/legacy");
    write_script(
        &l.join("01.ok.script"),
        "#!/bin/sh\necho \"ok $*\" >> \"$CTDB_BASE/var/ok.log\"\nexit 0\n",
        true,
    );
    write_script(
        &l.join("02.fail.script"),
        "#!/bin/sh\n[ -e \"$CTDB_BASE/var/fail\" ] || exit 0\necho \"failing $1 args=$2,$3\"\necho to-stderr >&2\nexit 3\n",
        true,
    );
    write_script(&l.join("03.off.script"), "#!/bin/sh\nexit 1\n", false);
    write_script(&l.join("04.last.script"), "#!/bin/sh\nexit 0\n", true);
    // Not scripts: ignored.
    write_script(&l.join("README"), "#!/bin/sh\nexit 1\n", true);
    write_script(&l.join("5.short.script"), "#!/bin/sh\nexit 1\n", true);
    write_script(&l.join("06.x.script~"), "#!/bin/sh\nexit 1\n", true);
}

/// Runs the tool commands of a scenario; returns the transcript.
fn transcript(ev: &Eventd, steps: &[&[&str]]) -> String {
    let mut out = String::new();
    for args in steps {
        let (text, code) = ev.tool(args);
        out.push_str(&format!(
            "$ {}\n{}\n[rc={code}]\n",
            args.join(" "),
            mask_times(&text)
        ));
    }
    out
}

#[test]
fn run_status_failure_and_two_events() {
    let mut results = Vec::new();
    for kind in BOTH {
        let ev = Eventd::start(kind, basic_scripts);
        let mut t = transcript(
            &ev,
            &[
                &["status", "legacy", "monitor"],
                &["status", "nosuch", "monitor"],
                &["run", "10", "nosuch", "monitor"],
                &["run", "10", "legacy", "monitor", "a", "b"],
                &["status", "legacy", "monitor"],
            ],
        );
        std::fs::write(ev.base().join("var/fail"), "").unwrap();
        t += &transcript(
            &ev,
            &[
                &["run", "10", "legacy", "startrecovery", "x", "y"],
                &["status", "legacy", "startrecovery"],
                // The earlier monitor result is kept apart.
                &["status", "legacy", "monitor"],
                &["run", "10", "legacy", "monitor"],
                &["status", "legacy", "monitor"],
            ],
        );
        let log = std::fs::read_to_string(ev.base().join("var/ok.log")).unwrap();
        t += &format!("ok.log:\n{log}");
        results.push(t);
    }
    let t = &results[1];
    assert!(
        t.contains("Event monitor has never run in legacy\n[rc=22]"),
        "{t}"
    );
    assert!(t.contains("Event dir for nosuch does not exist"), "{t}");
    assert!(
        t.contains("02.fail ERROR <time>\n  OUTPUT: failing startrecovery args=x,y\nto-stderr"),
        "{t}"
    );
    assert!(t.contains("03.off               DISABLED"), "{t}");
    assert!(
        t.contains("ok.log:\nok monitor a b\nok startrecovery x y\nok monitor\n"),
        "{t}"
    );
    assert_eq!(
        results[0], results[1],
        "reference (left) and ours (right) differ"
    );
}

#[test]
fn run_all_continues_after_a_failure() {
    let mut results = Vec::new();
    for kind in BOTH {
        let ev = Eventd::start(kind, basic_scripts);
        std::fs::write(ev.base().join("var/fail"), "").unwrap();
        let env = [("CTDB_EVENT_RUN_ALL", "1")];
        let (a, ra) = ev.tool_env(&["run", "10", "legacy", "ipreallocated"], &env);
        let (b, rb) = ev.tool(&["status", "legacy", "ipreallocated"]);
        results.push(format!("{a}[{ra}]\n{}[{rb}]", mask_times(&b)));
    }
    assert!(results[1].contains("04.last OK"), "{}", results[1]);
    assert_eq!(results[0], results[1]);
}

fn hang_scripts(base: &Path) {
    let l = base.join("events/legacy");
    write_script(&l.join("01.ok.script"), "#!/bin/sh\nexit 0\n", true);
    write_script(
        &l.join("02.hang.script"),
        "#!/bin/sh\necho started\n[ \"$1\" = monitor ] && sleep 1000\nexit 0\n",
        true,
    );
    write_script(&l.join("03.after.script"), "#!/bin/sh\nexit 0\n", true);
    write_script(
        &base.join("debug.sh"),
        "#!/bin/sh\necho \"debugging $1 $2\"\necho \"$1 $2\" > \"$CTDB_BASE/var/debug.out\"\n",
        true,
    );
    std::fs::write(
        base.join("ctdb.conf"),
        "[logging]\n\tlog level = NOTICE\n[event]\n\tdebug script = debug.sh\n",
    )
    .unwrap();
}

fn gone(pid: i32) -> bool {
    matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

#[test]
fn timeout_runs_the_debug_hook_and_kills_the_script() {
    let mut results = Vec::new();
    for kind in BOTH {
        let ev = Eventd::start(kind, hang_scripts);
        let mut t = transcript(
            &ev,
            &[
                // 01.ok must finish well within the timeout, even on a
                // loaded machine: the hang is 02's.
                &["run", "5", "legacy", "monitor"],
                &["status", "legacy", "monitor"],
            ],
        );
        let out = ev.base().join("var/debug.out");
        wait_for(20, "the debug hook", || {
            std::fs::read_to_string(&out).is_ok_and(|s| s.ends_with('\n'))
        });
        let dbg = std::fs::read_to_string(&out).unwrap();
        let (pid, event) = dbg.trim().split_once(' ').unwrap();
        let pid: i32 = pid.parse().unwrap();
        t += &format!("debug hook event: {event}\n");
        // SIGTERM to the hung script's group after the hook.
        wait_for(20, "the hung script to be killed", || gone(pid));
        // Still serving.
        t += &transcript(
            &ev,
            &[
                &["run", "10", "legacy", "startup"],
                &["status", "legacy", "startup"],
            ],
        );
        results.push(t);
    }
    let t = &results[1];
    assert!(
        t.contains("Event monitor in legacy timed out\n[rc=110]"),
        "{t}"
    );
    assert!(
        t.contains("02.hang TIMEDOUT <time>\n  OUTPUT: started"),
        "{t}"
    );
    assert!(t.contains("debug hook event: monitor"), "{t}");
    // The event stopped at the hung script.
    assert!(
        t.contains("  OUTPUT: started\n\n[rc=110]\ndebug hook"),
        "{t}"
    );
    assert_eq!(results[0], results[1]);
}

fn slow_scripts(base: &Path) {
    let l = base.join("events/legacy");
    write_script(
        &l.join("01.slow.script"),
        "#!/bin/sh\necho $$ > \"$CTDB_BASE/var/started.$1\"\n\
         case \"$1\" in monitor|startrecovery) sleep 3 ;; esac\nexit 0\n",
        true,
    );
}

#[test]
fn monitor_is_cancelled_by_other_events_and_refused_during_them() {
    let mut results = Vec::new();
    for kind in BOTH {
        let ev = Eventd::start(kind, slow_scripts);
        let var = ev.base().join("var");
        // A new event cancels a running monitor.
        let (mon, other) = std::thread::scope(|s| {
            let m = s.spawn(|| ev.tool(&["run", "30", "legacy", "monitor"]));
            wait_for(20, "monitor to start", || {
                var.join("started.monitor").exists()
            });
            let o = ev.tool(&["run", "30", "legacy", "startup"]);
            (m.join().unwrap(), o)
        });
        let mut t = format!("monitor: {mon:?}\nstartup: {other:?}\n");
        // The cancelled monitor's script was killed.
        let pid: i32 = std::fs::read_to_string(var.join("started.monitor"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        wait_for(20, "the cancelled monitor script to be killed", || {
            gone(pid)
        });
        t += &transcript(&ev, &[&["status", "legacy", "monitor"]]);
        // A monitor during another event is refused at once.
        let (rec, mon2) = std::thread::scope(|s| {
            let r = s.spawn(|| ev.tool(&["run", "30", "legacy", "startrecovery"]));
            wait_for(20, "startrecovery to start", || {
                var.join("started.startrecovery").exists()
            });
            let m = ev.tool(&["run", "30", "legacy", "monitor"]);
            (r.join().unwrap(), m)
        });
        t += &format!("startrecovery: {rec:?}\nmonitor: {mon2:?}\n");
        t += &transcript(&ev, &[&["status", "legacy", "startrecovery"]]);
        results.push(t);
    }
    let t = &results[1];
    assert!(
        t.contains("monitor: (\"Event monitor in legacy got cancelled\\n\", 125)"),
        "{t}"
    );
    assert!(t.contains("startup: (\"\", 0)"), "{t}");
    assert!(t.contains("Event monitor has never run in legacy"), "{t}");
    assert!(t.contains("startrecovery: (\"\", 0)"), "{t}");
    assert_eq!(results[0], results[1]);
}

/// The reference's own scripts: a share directory with all of them, a few
/// enabled by symlinks as Debian installs them, one local script.
fn reference_scripts(base: &Path) {
    let share = base.join("share/events/legacy");
    for e in std::fs::read_dir("/usr/share/ctdb/events/legacy").unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), share.join(e.file_name())).unwrap();
    }
    let etc = base.join("events/legacy");
    for s in ["00.ctdb.script", "01.reclock.script", "05.system.script"] {
        let target = std::fs::canonicalize(share.join(s)).unwrap();
        std::os::unix::fs::symlink(target, etc.join(s)).unwrap();
    }
    write_script(&etc.join("99.local.script"), "#!/bin/sh\nexit 0\n", true);
}

#[test]
fn reference_scripts_listed_enabled_and_disabled_alike() {
    assert!(
        Path::new("/usr/share/ctdb/events/legacy/00.ctdb.script").exists(),
        "Debian's ctdb event scripts are missing"
    );
    let mut results = Vec::new();
    for kind in BOTH {
        let ev = Eventd::start(kind, reference_scripts);
        let t = transcript(
            &ev,
            &[
                &["script", "list", "legacy"],
                &["script", "enable", "legacy", "10.interface"],
                &["script", "disable", "legacy", "01.reclock"],
                &["script", "disable", "legacy", "99.local"],
                &["script", "enable", "legacy", "77.nosuch"],
                &["script", "list", "legacy"],
                &["script", "enable", "legacy", "99.local"],
                &["script", "list", "legacy"],
            ],
        );
        results.push(t);
    }
    let t = &results[1];
    assert!(t.contains("* 00.ctdb\n"), "{t}");
    assert!(t.contains("* 10.interface\n"), "{t}");
    assert!(t.contains("  01.reclock\n"), "{t}");
    assert!(
        t.contains("Script 77.nosuch does not exist in legacy"),
        "{t}"
    );
    assert_eq!(results[0], results[1]);
}

#[test]
fn without_a_debug_script_a_hung_script_is_left_running() {
    let mut results = Vec::new();
    for kind in BOTH {
        let ev = Eventd::start(kind, |b| {
            write_script(
                &b.join("events/legacy/01.hang.script"),
                "#!/bin/sh\necho $$ > \"$CTDB_BASE/var/hang.pid\"\nsleep 1000\n",
                true,
            );
        });
        let mut t = transcript(&ev, &[&["run", "3", "legacy", "monitor"]]);
        let pidfile = ev.base().join("var/hang.pid");
        wait_for(20, "the hung script's pid", || {
            std::fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n'))
        });
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Another round trip, then the script is still there (4.17 signals
        // a hung script only after running the debug script).
        t += &transcript(&ev, &[&["status", "legacy", "monitor"]]);
        t += &format!("alive: {}\n", !gone(pid));
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        results.push(t);
    }
    assert!(results[1].ends_with("alive: true\n"), "{}", results[1]);
    assert_eq!(results[0], results[1]);
}

#[test]
fn an_empty_component_runs_nothing_and_succeeds() {
    let mut results = Vec::new();
    for kind in BOTH {
        let ev = Eventd::start(kind, |_| {});
        results.push(transcript(
            &ev,
            &[
                &["run", "10", "legacy", "monitor"],
                &["status", "legacy", "monitor"],
            ],
        ));
    }
    assert_eq!(
        results[1],
        "$ run 10 legacy monitor\n\n[rc=0]\n$ status legacy monitor\n\n[rc=0]\n"
    );
    assert_eq!(results[0], results[1]);
}
