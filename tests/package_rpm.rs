//! The RPM for EL9 / Fedora, inspected on Debian: packaging/rpm/modpython.spec
//! is built with rpmbuild from this machine's release build (`--define
//! modpython_prebuilt`, no %prep/%build), then `rpm -qp` checks its file
//! list, config files, requires, provides, conflicts and scriptlets.
//! Such an RPM is only for inspection: its automatic library requirements
//! name this machine's libraries. Real RPMs are built on the target with
//! packaging/rpm/build-rpm (docs/install.md).
//!
//! Needs `rpmbuild` (Debian package `rpm`; scripts/setup installs it). It
//! fails, rather than skips, without it. Needs no root.

mod common;

use common::{TempDir, repo_path};
use std::path::PathBuf;
use std::process::Command;

#[track_caller]
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (rpmbuild: run scripts/setup)"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn rpm_q(rpm: &PathBuf, args: &[&str]) -> Vec<String> {
    run(Command::new("rpm").arg("-qp").args(args).arg(rpm))
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn rpm_spec_builds_a_package_with_the_promised_metadata() {
    // The release artifacts the spec packages (a no-op when up to date).
    run(Command::new("cargo")
        .args(["build", "--release", "--manifest-path"])
        .arg(repo_path("Cargo.toml")));
    // Cargo's target directory, wherever CARGO_TARGET_DIR put it: this test
    // runs as <target>/<profile>/deps/package_rpm-<hash>.
    let exe = std::env::current_exe().expect("current_exe");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test binary is three levels below the target directory");
    let top = TempDir::new();
    let version = env!("CARGO_PKG_VERSION");
    run(Command::new("rpmbuild")
        .args(["-bb", "--nodeps", "--quiet"])
        .arg("--define")
        .arg(format!("_topdir {}", top.path().display()))
        .arg("--define")
        .arg(format!("modpython_prebuilt {}", repo_path("").display()))
        .arg("--define")
        .arg(format!("modpython_target {}", target.display()))
        .arg("--define")
        .arg(format!("modpython_version {version}"))
        .arg(repo_path("packaging/rpm/modpython.spec")));
    let rpm = top
        .path()
        .join(format!("RPMS/x86_64/modpython-{version}-1.x86_64.rpm"));
    assert!(rpm.is_file(), "rpmbuild did not write {}", rpm.display());

    let files = rpm_q(&rpm, &["-l"]);
    let mut want = vec![
        "/usr/lib64/ganglia/modpython.so".to_string(),
        "/usr/lib64/ganglia/modpython-module".to_string(),
        "/usr/bin/modpython-check".to_string(),
        "/etc/ganglia/conf.d/modpython.conf".to_string(),
        "/usr/lib64/ganglia/python_modules".to_string(),
        "/usr/share/doc/modpython/install.md".to_string(),
    ];
    for e in std::fs::read_dir(repo_path("examples")).expect("examples/") {
        let e = e.expect("examples/ entry");
        if e.path().is_dir() {
            let n = e.file_name().to_string_lossy().into_owned();
            want.push(format!("/usr/lib64/ganglia/python_modules/{n}.py"));
            want.push(format!("/etc/ganglia/conf.d/{n}.pyconf.disabled"));
        }
    }
    for w in &want {
        assert!(files.contains(w), "the RPM lacks {w}: {files:#?}");
    }

    // The isolated-module program beside modpython.so (which runs the one
    // in its own directory): root's, executable, not setuid.
    let modes = rpm_q(
        &rpm,
        &[
            "--qf",
            "[%{FILENAMES} %{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME}\\n]",
        ],
    );
    let helper = "/usr/lib64/ganglia/modpython-module";
    assert!(
        modes
            .iter()
            .any(|l| *l == format!("{helper} -rwxr-xr-x root root")),
        "{helper} is not -rwxr-xr-x root root: {modes:#?}"
    );

    // %config(noreplace) ("cn") for every file in conf.d.
    let flags = rpm_q(&rpm, &["--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\\n]"]);
    let confd: Vec<&String> = flags
        .iter()
        .filter(|l| l.starts_with("/etc/ganglia/conf.d/"))
        .collect();
    assert_eq!(
        confd.len(),
        want.iter().filter(|w| w.starts_with("/etc/")).count()
    );
    for f in confd {
        assert!(f.ends_with(" cn"), "not %config(noreplace): {f}");
    }

    let requires = rpm_q(&rpm, &["--requires"]);
    for w in ["ganglia-gmond", "python3-libs(x86-64)"] {
        assert!(
            requires.iter().any(|r| r == w),
            "Requires lacks {w}: {requires:#?}"
        );
    }
    // The automatic soname requirement that pins the Python ABI.
    assert!(
        requires
            .iter()
            .any(|r| r.starts_with("libpython3.") && r.ends_with(".so.1.0()(64bit)")),
        "no libpython soname in Requires: {requires:#?}"
    );
    let provides = rpm_q(&rpm, &["--provides"]);
    assert!(
        provides.iter().any(|p| p.starts_with("gmond-python")),
        "Provides lacks gmond-python: {provides:#?}"
    );
    let conflicts = rpm_q(&rpm, &["--conflicts"]);
    assert!(
        conflicts.iter().any(|c| c == "python3-gmond"),
        "Conflicts lacks python3-gmond: {conflicts:#?}"
    );

    // Scriptlets: bytecode clean-up on erase only, no service handling.
    let scripts = rpm_q(&rpm, &["--scripts"]).join("\n");
    assert!(scripts.contains("__pycache__"), "{scripts}");
    for bad in ["systemctl", "service ", "condrestart", "try-restart"] {
        assert!(
            !scripts.contains(bad),
            "scriptlets touch services ({bad}):\n{scripts}"
        );
    }
}
