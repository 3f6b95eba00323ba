//! Our ctdb-eventd and the reference's on the raw event protocol (our
//! `ctdb_protocol::event` client) and as processes: SCRIPT results, status
//! replies field by field, bad packets, megabytes of output, a script that
//! leaves a daemon behind, the parent going away, a second daemon, SIGTERM.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BOTH, Eventd, wait_for, write_script};
use ctdb_protocol::event::{
    EventCommand, EventRequestData, RunRequest, ScriptAction, ScriptRequest, StatusRequest, errno,
};

fn run(ev: &Eventd, event: &str, timeout: u32) -> i32 {
    let r = ev.request(EventRequestData::Run(RunRequest {
        component: Some("legacy".into()),
        event: Some(event.into()),
        args: None,
        timeout,
        flags: 0,
    }));
    assert_eq!(r.command, EventCommand::Run);
    assert_eq!(r.reqid, 7);
    r.result
}

fn script(ev: &Eventd, component: &str, name: &str, enable: bool) -> i32 {
    ev.request(EventRequestData::Script(ScriptRequest {
        component: Some(component.into()),
        script: Some(name.into()),
        action: if enable {
            ScriptAction::Enable
        } else {
            ScriptAction::Disable
        },
    }))
    .result
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn script_command_results_and_modes() {
    let mut results = Vec::new();
    for kind in BOTH {
        let ev = Eventd::start(kind, |b| {
            let l = b.join("events/legacy");
            write_script(&l.join("10.a.script"), "#!/bin/sh\nexit 0\n", false);
            write_script(&l.join("ab.script"), "#!/bin/sh\nexit 0\n", true);
            std::os::unix::fs::symlink(l.join("10.a.script"), l.join("20.link.script")).unwrap();
        });
        let l = ev.legacy();
        let mut r = vec![
            script(&ev, "legacy", "10.a", true),
            mode(&l.join("10.a.script")) as i32,
        ];
        r.push(script(&ev, "legacy", "10.a.script", false));
        r.push(mode(&l.join("10.a.script")) as i32);
        r.push(script(&ev, "legacy", "20.link", true));
        r.push(script(&ev, "legacy", "30.none", true));
        r.push(script(&ev, "legacy", "ab", true));
        r.push(script(&ev, "nosuch", "10.a", true));
        results.push(r);
    }
    assert_eq!(
        results[1],
        [
            0,
            0o755,
            0,
            0o644,
            errno::EINVAL,
            errno::ENOENT,
            errno::EINVAL,
            errno::ENOENT
        ]
    );
    assert_eq!(results[0], results[1]);
}

#[test]
fn status_replies_field_by_field() {
    let mut results = Vec::new();
    for kind in BOTH {
        let ev = Eventd::start(kind, |b| {
            let l = b.join("events/legacy");
            write_script(&l.join("01.a.script"), "#!/bin/sh\necho one\n", true);
            write_script(&l.join("02.off.script"), "#!/bin/sh\n", false);
            write_script(&l.join("03.sig.script"), "#!/bin/sh\nkill -9 $$\n", true);
        });
        let rr = run(&ev, "monitor", 10);
        let st = ev.request(EventRequestData::Status(StatusRequest {
            component: Some("legacy".into()),
            event: Some("monitor".into()),
        }));
        assert_eq!(st.version, 0);
        let s = st.status.expect("status data");
        for sc in &s.scripts {
            assert!(sc.begin <= sc.end, "{sc:?}");
            assert!(sc.begin.sec > 1_700_000_000, "{sc:?}");
        }
        let fields: Vec<_> = s
            .scripts
            .iter()
            .map(|x| (x.name.clone(), x.result, x.output.clone()))
            .collect();
        results.push((rr, st.result, s.summary, fields));
    }
    let r = &results[1];
    assert_eq!(r.0, errno::ENOEXEC);
    assert_eq!(r.2, -errno::EINTR);
    assert_eq!(r.3[0], (Some("01.a".into()), 0, Some(b"one\n".to_vec())));
    assert_eq!(r.3[1], (Some("02.off".into()), -errno::ENOEXEC, None));
    assert_eq!(r.3[2].1, -errno::EINTR);
    assert_eq!(results[0], results[1]);
}

#[test]
fn bad_packets_close_the_connection_only() {
    for kind in BOTH {
        let ev = Eventd::start(kind, |_| {});
        let sock = ev.base().join("run/eventd.socket");
        // A well-framed packet with command 9.
        let mut bad = Vec::new();
        for v in [20u32, 0, 1, 9, 0] {
            bad.extend_from_slice(&v.to_ne_bytes());
        }
        let mut s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(&bad).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(
            s.read(&mut buf).unwrap(),
            0,
            "{kind:?}: connection not closed"
        );
        // A RUN whose string runs past the packet.
        let mut bad = Vec::new();
        for v in [24u32, 0, 1, 1, 1000, 0] {
            bad.extend_from_slice(&v.to_ne_bytes());
        }
        let mut s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(&bad).unwrap();
        assert_eq!(
            s.read(&mut buf).unwrap(),
            0,
            "{kind:?}: connection not closed"
        );
        // Still serving.
        assert_eq!(run(&ev, "monitor", 10), 0, "{kind:?}");
    }
}

#[test]
fn megabytes_of_output_are_kept_whole() {
    let mut lens = Vec::new();
    for kind in BOTH {
        let ev = Eventd::start(kind, |b| {
            write_script(
                &b.join("events/legacy/01.big.script"),
                "#!/bin/sh\nhead -c 3000000 /dev/zero | tr '\\0' x\nexit 1\n",
                true,
            );
        });
        assert_eq!(run(&ev, "monitor", 30), errno::ENOEXEC, "{kind:?}");
        let st = ev.request(EventRequestData::Status(StatusRequest {
            component: Some("legacy".into()),
            event: Some("monitor".into()),
        }));
        let out = st.status.unwrap().scripts[0].output.clone().unwrap();
        assert!(out.iter().all(|&c| c == b'x'));
        lens.push(out.len());
    }
    assert_eq!(lens, [3_000_000, 3_000_000]);
}

#[test]
fn a_script_that_leaves_a_daemon_behind_still_finishes() {
    for kind in BOTH {
        let ev = Eventd::start(kind, |b| {
            write_script(
                &b.join("events/legacy/01.fork.script"),
                "#!/bin/sh\necho $$ > \"$CTDB_BASE/var/pgid\"\nsleep 60 &\necho forked\nexit 0\n",
                true,
            );
        });
        let t0 = Instant::now();
        assert_eq!(run(&ev, "monitor", 30), 0, "{kind:?}");
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{kind:?} waited for the daemon"
        );
        let pgid: i32 = std::fs::read_to_string(ev.base().join("var/pgid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The left-behind process is in the script's own process group.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pgid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[test]
fn exits_when_the_parent_goes_away_and_on_sigterm() {
    let mut results = Vec::new();
    for kind in BOTH {
        let mut parent = Command::new("sleep")
            .arg("1000")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut ev = Eventd::start_watching(kind, parent.id() as i32, |_| {});
        // A second daemon for the same directory refuses to start.
        let second = Command::new(kind.binary())
            .env("CTDB_TEST_MODE", "yes")
            .env("CTDB_BASE", ev.base())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        parent.kill().unwrap();
        parent.wait().unwrap();
        let mut child = ev.child.take().unwrap();
        let mut code = None;
        wait_for(30, "the daemon to exit after its parent", || {
            code = child.try_wait().unwrap().map(|s| s.code());
            code.is_some()
        });
        // End-of-file on the start-up pipe, files removed.
        assert_eq!(ev.read_startup(Duration::from_secs(10)), None);
        let leftovers = (
            ev.base().join("run/eventd.socket").exists(),
            ev.base().join("run/eventd.pid").exists(),
        );
        // SIGTERM on a fresh daemon.
        let mut ev2 = Eventd::start(kind, |_| {});
        let term = ev2.stop();
        results.push((second.code(), code.flatten(), leftovers, term));
    }
    assert_eq!(
        results[1],
        (
            Some(libc::EEXIST),
            Some(libc::ESRCH),
            (false, false),
            Some(0)
        )
    );
    assert_eq!(results[0], results[1]);
}

#[test]
fn a_client_that_goes_away_takes_its_run_with_it() {
    for kind in BOTH {
        let ev = Eventd::start(kind, |b| {
            write_script(
                &b.join("events/legacy/01.slow.script"),
                "#!/bin/sh\necho $$ > \"$CTDB_BASE/var/pid.tmp\"\n\
                 mv \"$CTDB_BASE/var/pid.tmp\" \"$CTDB_BASE/var/pid.$1\"\nsleep 60\n",
                true,
            );
        });
        let mut s = UnixStream::connect(ev.base().join("run/eventd.socket")).unwrap();
        let req = ctdb_protocol::event::EventRequest {
            version: 0,
            reqid: 1,
            data: EventRequestData::Run(RunRequest {
                component: Some("legacy".into()),
                event: Some("startup".into()),
                args: None,
                timeout: 120,
                flags: 0,
            }),
        };
        s.write_all(&ctdb_protocol::Marshal::to_bytes(&req))
            .unwrap();
        let pidfile = ev.base().join("var/pid.startup");
        wait_for(20, "the script to start", || pidfile.exists());
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        drop(s);
        // Killed and reaped (a zombie would still answer kill -0).
        wait_for(20, "the script to be killed and reaped", || {
            matches!(
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
                Err(nix::errno::Errno::ESRCH)
            )
        });
        // Nothing was kept of the abandoned run.
        let st = ev.request(EventRequestData::Status(StatusRequest {
            component: Some("legacy".into()),
            event: Some("startup".into()),
        }));
        assert_eq!(st.result, errno::EINVAL, "{kind:?}");
        if kind == common::Kind::Ours {
            // 4.17 keeps the abandoned run as "running" (a dangling
            // pointer) and refuses every later monitor with ECANCELED; we
            // do not copy that.
            std::fs::remove_file(ev.legacy().join("01.slow.script")).unwrap();
            assert_eq!(run(&ev, "monitor", 10), 0);
        }
    }
}

/// Random packets (well framed, random content) on many connections: our
/// daemon closes each bad one and keeps serving.
#[test]
fn random_packets_do_not_hurt_our_daemon() {
    let mut ev = Eventd::start(common::Kind::Ours, |_| {});
    let sock = ev.base().join("run/eventd.socket");
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..300 {
        let body_len = (next() % 64) as usize;
        let mut pkt = Vec::with_capacity(12 + body_len);
        pkt.extend_from_slice(&((12 + body_len) as u32).to_ne_bytes());
        pkt.extend_from_slice(&0u32.to_ne_bytes());
        pkt.extend_from_slice(&(i as u32).to_ne_bytes());
        // Mostly real commands, so the string and action parsers are hit.
        let mut body: Vec<u8> = (0..body_len).map(|_| next() as u8).collect();
        if body.len() >= 4 && i % 4 != 0 {
            body[..4].copy_from_slice(&(1 + (next() % 3) as u32).to_ne_bytes());
        }
        pkt.extend_from_slice(&body);
        let mut s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(&pkt).unwrap();
        // Either a reply or the connection closed; never a hang.
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
    }
    assert_eq!(run(&ev, "monitor", 10), 0);
    let mut child = ev.child.take().unwrap();
    assert!(child.try_wait().unwrap().is_none(), "the daemon died");
    ev.child = Some(child);
}
