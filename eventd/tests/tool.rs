//! `ctdb event ...` and `ctdb scriptstatus` (which hand over to the
//! `ctdb-event` helper) from the reference tool and from ours, against the
//! reference event daemon and ours: all four transcripts equal.

mod common;

use common::{BOTH, Eventd, mask_times, write_script};

#[test]
fn ctdb_event_and_scriptstatus_from_both_tools() {
    let tools = [
        std::path::PathBuf::from("/usr/bin/ctdb"),
        ctdb_tests::our_bin("ctdb"),
    ];
    assert!(tools[0].exists(), "the reference ctdb tool is missing");
    let mut results = Vec::new();
    for (kind, tool) in BOTH.iter().flat_map(|k| tools.iter().map(move |t| (*k, t))) {
        // A fresh daemon for each pair: the first scriptstatus sees no run.
        let ev = Eventd::start(kind, |b| {
            let l = b.join("events/legacy");
            write_script(&l.join("01.ok.script"), "#!/bin/sh\nexit 0\n", true);
            write_script(
                &l.join("02.bad.script"),
                "#!/bin/sh\necho \"bad $1\"\nexit 2\n",
                true,
            );
            write_script(&l.join("03.off.script"), "#!/bin/sh\nexit 0\n", false);
        });
        {
            let mut t = String::new();
            for args in [
                &["scriptstatus"][..],
                &["event", "run", "10", "legacy", "monitor"],
                &["event", "status", "legacy", "monitor"],
                &["scriptstatus"],
                &["scriptstatus", "startup"],
                &["event", "script", "list", "legacy"],
            ] {
                let out = std::process::Command::new(tool)
                    .args(args)
                    .env("CTDB_TEST_MODE", "yes")
                    .env("CTDB_BASE", ev.base())
                    .output()
                    .unwrap();
                t += &format!(
                    "$ ctdb {}\n{}\n{}[rc={:?}]\n",
                    args.join(" "),
                    mask_times(&String::from_utf8_lossy(&out.stdout)),
                    String::from_utf8_lossy(&out.stderr),
                    out.status.code()
                );
            }
            results.push((kind, tool.clone(), t));
        }
    }
    let first = &results[0].2;
    assert!(
        first.contains("02.bad ERROR <time>\n  OUTPUT: bad monitor"),
        "{first}"
    );
    assert!(first.contains("* 02.bad\n  03.off\n"), "{first}");
    for (kind, tool, t) in &results[1..] {
        assert_eq!(
            first,
            t,
            "reference tool on the reference daemon (left) vs {} on {kind:?}",
            tool.display()
        );
    }
}
