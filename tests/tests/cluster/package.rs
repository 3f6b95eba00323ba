//! Installing ctdb-rs: `scripts/build-deb.sh` builds a Debian package from
//! what `scripts/install.sh` installs, with this build's binaries. The
//! package puts every file where Debian's `ctdb` package puts it, conflicts
//! with and replaces that package, ships a systemd unit that
//! `systemd-analyze verify` accepts (pointed at the package's own
//! binaries), a `ctdb.conf` CTDB's own config checker accepts, and a
//! logrotate snippet. Nothing is installed on this machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ctdb_tests::{our_bin, require_reference, workspace_root};

fn show(o: &Output) -> String {
    format!(
        "{:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}: {}", show(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn bin_dir() -> PathBuf {
    our_bin("ctdbd").parent().unwrap().to_path_buf()
}

/// Builds the package into `out` and returns its path.
fn build_deb(out: &Path) -> PathBuf {
    let path = run(Command::new(workspace_root().join("scripts/build-deb.sh"))
        .arg(out)
        .env("CTDB_RS_BIN", bin_dir()));
    PathBuf::from(path.trim())
}

/// The files installed (no directories), as absolute paths.
fn files(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches('.').to_owned())
        .collect()
}

#[test]
fn the_package_installs_where_debian_installs_ctdb() {
    require_reference();
    let tmp = tempfile::tempdir().unwrap();
    let deb = build_deb(tmp.path());
    assert!(deb.is_file(), "{}", deb.display());

    let field = |f: &str| {
        run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(f))
            .trim()
            .to_owned()
    };
    assert_eq!(field("Package"), "ctdb-rs");
    assert_eq!(field("Conflicts"), "ctdb");
    assert_eq!(field("Replaces"), "ctdb");
    assert_eq!(
        field("Architecture"),
        run(Command::new("dpkg").arg("--print-architecture")).trim()
    );

    let listed = files(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)));
    let debian = run(Command::new("dpkg").args(["-L", "ctdb"]));
    let debian: Vec<&str> = debian.lines().collect();
    for f in [
        "/usr/sbin/ctdbd",
        "/usr/bin/ctdb",
        "/usr/libexec/ctdb/ctdb_recovery_helper",
        "/usr/libexec/ctdb/ctdb_takeover_helper",
        "/usr/libexec/ctdb/ctdb_mutex_fcntl_helper",
        "/usr/libexec/ctdb/ctdb-eventd",
        "/lib/systemd/system/ctdb.service",
        "/etc/ctdb/ctdb.conf",
        "/etc/logrotate.d/ctdb",
    ] {
        assert!(listed.iter().any(|l| l == f), "{f} not in {listed:?}");
    }
    // Every file is where Debian's package has the same file.
    for f in &listed {
        assert!(
            debian.contains(&f.as_str()),
            "{f} is not a path of Debian's ctdb package"
        );
    }
    let conffiles = tmp.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&conffiles));
    assert_eq!(
        std::fs::read_to_string(conffiles.join("conffiles")).unwrap(),
        "/etc/ctdb/ctdb.conf\n/etc/logrotate.d/ctdb\n"
    );

    // The binaries are this build's.
    let root = tmp.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    for (inside, name) in [
        ("usr/sbin/ctdbd", "ctdbd"),
        ("usr/bin/ctdb", "ctdb"),
        (
            "usr/libexec/ctdb/ctdb_recovery_helper",
            "ctdb_recovery_helper",
        ),
        (
            "usr/libexec/ctdb/ctdb_takeover_helper",
            "ctdb_takeover_helper",
        ),
        (
            "usr/libexec/ctdb/ctdb_mutex_fcntl_helper",
            "ctdb_mutex_fcntl_helper",
        ),
        ("usr/libexec/ctdb/ctdb-eventd", "ctdb-eventd"),
    ] {
        assert!(
            std::fs::read(root.join(inside)).unwrap() == std::fs::read(our_bin(name)).unwrap(),
            "{inside} is not this build's {name}"
        );
    }

    // The unit: forking with CTDB's pid file, reload reopens the logs,
    // restarted on failure.
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/ctdb.service")).unwrap();
    for line in [
        "Type=forking",
        "PIDFile=/run/ctdb/ctdbd.pid",
        "ExecStart=/usr/sbin/ctdbd",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ExecStop=/usr/bin/ctdb shutdown",
        "Restart=on-failure",
        "Environment=CTDB_RECOVERY_HELPER=/usr/libexec/ctdb/ctdb_recovery_helper",
        "Environment=CTDB_TAKEOVER_HELPER=/usr/libexec/ctdb/ctdb_takeover_helper",
        "WantedBy=multi-user.target",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} not in:\n{unit}");
    }
    // systemd-analyze verify checks the unit and that its commands exist:
    // pointed at the package's binaries (not the reference's, installed
    // here at the same paths).
    let unitdir = tmp.path().join("unit");
    std::fs::create_dir_all(&unitdir).unwrap();
    let r = root.display().to_string();
    let local = unit.replace("=/usr/", &format!("={r}/usr/"));
    assert!(local.contains(&format!("ExecStart={r}/usr/sbin/ctdbd")));
    std::fs::write(unitdir.join("ctdb.service"), &local).unwrap();
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unitdir.join("ctdb.service"))
        .output()
        .unwrap();
    assert!(
        o.status.success() && !String::from_utf8_lossy(&o.stderr).contains("ctdb.service"),
        "systemd-analyze verify: {}",
        show(&o)
    );
    // And it would catch a missing binary.
    std::fs::write(
        unitdir.join("ctdb.service"),
        local.replace(
            &format!("{r}/usr/sbin/ctdbd"),
            &format!("{r}/usr/sbin/nosuch"),
        ),
    )
    .unwrap();
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unitdir.join("ctdb.service"))
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", show(&o));

    // ctdb.conf passes CTDB's own checker.
    let o = Command::new("/usr/libexec/ctdb/ctdb-config")
        .arg("validate")
        .env("CTDB_TEST_MODE", "yes")
        .env("CTDB_BASE", root.join("etc/ctdb"))
        .output()
        .unwrap();
    assert!(o.status.success(), "ctdb-config validate: {}", show(&o));

    // logrotate: the daemon's log, reopened through its pid file.
    let lr = std::fs::read_to_string(root.join("etc/logrotate.d/ctdb")).unwrap();
    assert!(lr.starts_with("/var/log/ctdb/log.ctdb {"), "{lr}");
    assert!(
        lr.contains("kill -HUP \"$(cat /run/ctdb/ctdbd.pid)\""),
        "{lr}"
    );
    let conf = std::fs::read_to_string(root.join("etc/ctdb/ctdb.conf")).unwrap();
    assert!(
        conf.contains("location = file:/var/log/ctdb/log.ctdb"),
        "{conf}"
    );
}

#[test]
fn install_sh_honours_prefix_and_destdir_and_keeps_a_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("stage");
    let install = || {
        run(Command::new(workspace_root().join("scripts/install.sh"))
            .env("PREFIX", "/opt/ctdb-rs")
            .env("DESTDIR", &dest)
            .env("CTDB_RS_BIN", bin_dir()))
    };
    install();
    for f in [
        "opt/ctdb-rs/sbin/ctdbd",
        "opt/ctdb-rs/bin/ctdb",
        "opt/ctdb-rs/libexec/ctdb/ctdb_recovery_helper",
        "opt/ctdb-rs/libexec/ctdb/ctdb_takeover_helper",
        "opt/ctdb-rs/libexec/ctdb/ctdb_mutex_fcntl_helper",
        "opt/ctdb-rs/libexec/ctdb/ctdb-eventd",
        "opt/ctdb-rs/lib/systemd/system/ctdb.service",
        "etc/ctdb/ctdb.conf",
        "etc/logrotate.d/ctdb",
    ] {
        assert!(dest.join(f).is_file(), "{f} missing");
    }
    let unit =
        std::fs::read_to_string(dest.join("opt/ctdb-rs/lib/systemd/system/ctdb.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/opt/ctdb-rs/sbin/ctdbd\n"),
        "{unit}"
    );
    assert!(
        unit.contains("ExecStop=/opt/ctdb-rs/bin/ctdb shutdown\n"),
        "{unit}"
    );
    assert!(
        unit.contains("CTDB_RECOVERY_HELPER=/opt/ctdb-rs/libexec/ctdb/ctdb_recovery_helper\n"),
        "{unit}"
    );
    assert!(
        unit.contains("CTDB_TAKEOVER_HELPER=/opt/ctdb-rs/libexec/ctdb/ctdb_takeover_helper\n"),
        "{unit}"
    );
    assert!(!unit.contains('@'), "unfilled placeholder:\n{unit}");
    // An admin's ctdb.conf survives a second install.
    std::fs::write(dest.join("etc/ctdb/ctdb.conf"), "# mine\n").unwrap();
    install();
    assert_eq!(
        std::fs::read_to_string(dest.join("etc/ctdb/ctdb.conf")).unwrap(),
        "# mine\n"
    );
}
