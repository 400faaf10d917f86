//! The Debian package, end to end, on this machine (CI: a fresh Debian 12 as
//! root). Builds the .deb with `cargo deb` (a release build in the normal
//! target dir), lints it, installs it with apt, enables the `hello` example by
//! renaming its `.pyconf.disabled`, runs the installed `/usr/sbin/gmond` with a
//! copy of the installed `/etc/ganglia/gmond.conf` whose channels are moved to
//! free loopback ports (Debian's are multicast), finds hello's metrics, runs
//! it again daemonized and setuid to `ganglia` as the service does, with an
//! isolated module (`call_mode = isolated`) whose process must follow gmond
//! to `ganglia` and end with it, upgrades to a second build whose `modpython.conf` changed over a locally
//! edited one (`--force-confold`: the edit must survive), and purges,
//! checking that nothing is left behind.
//!
//! Needs root, `cargo deb` (cargo-deb) and lintian; `scripts/setup` installs
//! both. It fails, rather than skips, when any of that is missing. The package
//! is purged at the end, also when the test fails.

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use common::{GmondBuilder, TempDir, Xml, repo_path, secs};
use daemon::{DAEMON_INFO, Daemon};
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::Read;
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const PKG: &str = "modpython";
const SO: &str = "/usr/lib/x86_64-linux-gnu/ganglia/modpython.so";
const MODDIR: &str = "/usr/lib/x86_64-linux-gnu/ganglia/python_modules";
const CONFD: &str = "/etc/ganglia/conf.d";
const CONF: &str = "/etc/ganglia/conf.d/modpython.conf";
const CHECK_BIN: &str = "/usr/bin/modpython-check";
/// The program isolated modules run in; modpython.so runs the one beside it.
const HELPER: &str = "/usr/lib/x86_64-linux-gnu/ganglia/modpython-module";
const GMOND: &str = "/usr/sbin/gmond";
const DOC: &str = "/usr/share/doc/modpython";
const LOCK: &str = "/run/lock/modpython-package-deb-test.lock";

fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd`; returns its output whatever the exit status.
fn run_any(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", show(cmd)))
}

/// Runs `cmd` and panics with its output unless it exits 0.
#[track_caller]
fn run(cmd: &mut Command) -> String {
    let out = run_any(cmd);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "`{}` failed ({}):\n{text}",
        show(cmd),
        out.status
    );
    text
}

fn apt_get() -> Command {
    let mut c = Command::new("apt-get");
    c.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["-y", "-q", "--no-install-recommends"]);
    c
}

/// `dpkg-query`'s status and version for the package, or None if dpkg has
/// no record of it.
fn dpkg_status() -> Option<String> {
    let out = run_any(Command::new("dpkg-query").args(["-W", "-f=${Status} ${Version}", PKG]));
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !s.is_empty() && !s.starts_with("unknown ok not-installed"))
        .then_some(s)
}

fn purge_quietly() {
    let _ = run_any(
        Command::new("dpkg")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["--purge", PKG]),
    );
}

/// Purges the package when the test ends, however it ends.
struct PurgeOnDrop;

impl Drop for PurgeOnDrop {
    fn drop(&mut self) {
        if dpkg_status().is_some() {
            purge_quietly();
        }
    }
}

/// Serialises concurrent runs of this test (two checkouts on one machine).
struct Lock(#[allow(dead_code)] std::fs::File);

fn lock() -> Lock {
    let f = std::fs::File::create(LOCK).unwrap_or_else(|e| panic!("create {LOCK}: {e}"));
    // flock(1) from util-linux would need a child process holding the lock;
    // the file's own lock lives exactly as long as this handle.
    use std::os::fd::AsRawFd;
    // SAFETY: flock takes a file descriptor we own (kept open by `f`) and a
    // flag; it touches no memory.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {LOCK}: {}", std::io::Error::last_os_error());
    Lock(f)
}

#[track_caller]
fn require_tools() {
    let uid = std::fs::metadata("/proc/self")
        .expect("stat /proc/self")
        .uid();
    assert_eq!(
        uid, 0,
        "tests/package_deb.rs installs and purges a Debian package, so it must run as root \
         (CI does). Run `sudo -E cargo test --test package_deb`, or leave this test out \
         with `cargo test -- --skip deb_package`."
    );
    for (cmd, args, hint) in [
        (
            "cargo",
            &["deb", "--version"][..],
            "cargo-deb is missing: run scripts/setup (cargo install cargo-deb --locked)",
        ),
        (
            "lintian",
            &["--version"][..],
            "lintian is missing: run scripts/setup",
        ),
        ("apt-get", &["--version"][..], "apt-get is missing"),
        ("dpkg-deb", &["--version"][..], "dpkg-deb is missing"),
    ] {
        let ok = Command::new(cmd)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(ok, "`{cmd} {}` failed: {hint}", args.join(" "));
    }
}

/// Builds the package into `dir` and returns the .deb (not the -dbgsym .ddeb).
fn cargo_deb(dir: &Path, extra: &[&str]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    run(Command::new("cargo")
        .arg("deb")
        .arg("--manifest-path")
        .arg(repo_path("Cargo.toml"))
        .arg("-o")
        .arg(dir)
        .args(extra));
    let debs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read_dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    assert_eq!(
        debs.len(),
        1,
        "expected one .deb in {}: {debs:?}",
        dir.display()
    );
    debs[0].clone()
}

fn deb_field(deb: &Path, field: &str) -> String {
    run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(field))
        .trim()
        .to_string()
}

/// The example names: one directory per example under examples/.
fn example_names() -> BTreeSet<String> {
    std::fs::read_dir(repo_path("examples"))
        .expect("read examples/")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Checks the built package's metadata and file list.
fn check_contents(deb: &Path, tmp: &Path) {
    let depends = deb_field(deb, "Depends");
    for want in ["ganglia-monitor (>= 3.7.2)", "libpython3"] {
        assert!(depends.contains(want), "Depends lacks {want}: {depends}");
    }
    // cargo-deb's $auto lists each binary's library dependencies on its own,
    // so two binaries needing different versions of one library would name
    // it twice (libapr1 did): each package once, at the version that the
    // binaries together need.
    let mut seen = BTreeSet::new();
    let twice: Vec<&str> = depends
        .split([',', '|'])
        .filter_map(|d| d.split([' ', '(', ':']).find(|w| !w.is_empty()))
        .filter(|name| !seen.insert(*name))
        .collect();
    assert!(
        twice.is_empty(),
        "Depends names {twice:?} more than once: {depends}"
    );
    let unpacked = tmp.join("unpacked");
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&unpacked));
    let shlibs_dir = tmp.join("shlibdeps");
    std::fs::create_dir_all(shlibs_dir.join("debian")).expect("mkdir shlibdeps/debian");
    std::fs::write(shlibs_dir.join("debian/control"), "").expect("write debian/control");
    let together = run(Command::new("dpkg-shlibdeps")
        .args(["-O", "-xlibgcc"])
        .arg(unpacked.join(SO.trim_start_matches('/')))
        .arg(unpacked.join(CHECK_BIN.trim_start_matches('/')))
        .arg(unpacked.join(HELPER.trim_start_matches('/')))
        .current_dir(&shlibs_dir));
    let needed = together
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .unwrap_or_else(|| panic!("no shlibs:Depends from dpkg-shlibdeps:\n{together}"));
    for want in needed.split(',').map(str::trim) {
        assert!(
            depends.split(',').any(|d| d.trim() == want),
            "Depends lacks {want} (dpkg-shlibdeps for all three binaries: {needed}): {depends}"
        );
    }
    for field in ["Provides", "Replaces", "Conflicts"] {
        assert_eq!(deb_field(deb, field), "ganglia-monitor-python", "{field}");
    }

    let listing = run(Command::new("dpkg-deb").arg("-c").arg(deb));
    let files: BTreeSet<String> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').trim_end_matches('/').to_string())
        .collect();
    let mut want: Vec<String> = [SO, CONF, MODDIR, CHECK_BIN, HELPER]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for doc in [
        "README.md",
        "README.Debian",
        "install.md",
        "examples/README.md",
        "changelog.Debian.gz",
        "copyright",
    ] {
        want.push(format!("{DOC}/{doc}"));
    }
    let examples = example_names();
    assert!(!examples.is_empty(), "no examples/ directories found");
    for name in &examples {
        want.push(format!("{MODDIR}/{name}.py"));
        want.push(format!("{CONFD}/{name}.pyconf.disabled"));
    }
    let missing: Vec<&String> = want.iter().filter(|w| !files.contains(*w)).collect();
    assert!(
        missing.is_empty(),
        "the package lacks {missing:?}:\n{listing}"
    );
    // The helper as dpkg will install it: root's, executable, not setuid.
    let helper_line = listing
        .lines()
        .find(|l| l.ends_with(&format!(".{HELPER}")))
        .unwrap_or_else(|| panic!("no {HELPER} in:\n{listing}"));
    let cols: Vec<&str> = helper_line.split_whitespace().collect();
    assert_eq!(
        (cols[0], cols[1]),
        ("-rwxr-xr-x", "0/0"),
        "{HELPER} in the package: {helper_line}"
    );
    // Nothing that gmond would load without being asked to.
    let enabled: Vec<&String> = files
        .iter()
        .filter(|f| f.starts_with(CONFD) && f.ends_with(".pyconf"))
        .collect();
    assert!(
        enabled.is_empty(),
        "examples must ship disabled: {enabled:?}"
    );

    // postrm's list of examples (for purging enabled copies) must match.
    let ctl = tmp.join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&ctl));
    let postrm = std::fs::read_to_string(ctl.join("postrm")).expect("the package has a postrm");
    let line = postrm
        .lines()
        .find_map(|l| l.strip_prefix("EXAMPLES=\""))
        .expect("postrm sets EXAMPLES=\"...\"");
    let listed: BTreeSet<String> = line
        .trim_end_matches('"')
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(
        listed, examples,
        "packaging/debian/postrm EXAMPLES vs examples/"
    );
    let conffiles = std::fs::read_to_string(ctl.join("conffiles")).expect("conffiles");
    assert!(
        conffiles.lines().any(|l| l == CONF),
        "{CONF} is not a conffile:\n{conffiles}"
    );
    // The package must leave the service alone (README.Debian says why).
    for script in ["preinst", "postinst", "prerm", "postrm"] {
        if let Ok(text) = std::fs::read_to_string(ctl.join(script)) {
            for bad in ["invoke-rc.d", "systemctl", "deb-systemd-invoke", "service "] {
                let code: Vec<&str> = text
                    .lines()
                    .filter(|l| !l.trim_start().starts_with('#'))
                    .collect();
                assert!(
                    !code.iter().any(|l| l.contains(bad)),
                    "{script} must not touch services ({bad}):\n{text}"
                );
            }
        }
    }
}

/// A copy of the second package whose modpython.conf differs from the first
/// (a comment added), so the upgrade has to choose between two versions.
fn repack_with_changed_conffile(deb: &Path, tmp: &Path) -> PathBuf {
    let root = tmp.join("v2-root");
    run(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&root));
    let conf = root.join(CONF.trim_start_matches('/'));
    let mut text = std::fs::read_to_string(&conf).expect("read packaged conf");
    text.push_str("/* changed in the upgrade-test package */\n");
    std::fs::write(&conf, text).expect("write packaged conf");
    assert!(
        !root.join("DEBIAN/md5sums").exists(),
        "the package now has md5sums: update them here"
    );
    let out = tmp.join("v2-changed.deb");
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-b"])
        .arg(&root)
        .arg(&out));
    out
}

/// Removes the `udp_send_channel`, `udp_recv_channel` and
/// `tcp_accept_channel` blocks of a gmond config.
fn strip_channels(conf: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    let mut skipping = false;
    for line in conf.lines() {
        let t = line.trim_start();
        if !skipping
            && ["udp_send_channel", "udp_recv_channel", "tcp_accept_channel"]
                .iter()
                .any(|k| t.starts_with(k) && t[k.len()..].trim_start().starts_with('{'))
        {
            skipping = true;
            depth = 0;
        }
        if skipping {
            depth += line.matches('{').count();
            depth -= line.matches('}').count().min(depth);
            if depth == 0 && line.contains('}') {
                skipping = false;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The installed gmond.conf with its channels moved to loopback.
fn loopback_config() -> String {
    let installed =
        std::fs::read_to_string("/etc/ganglia/gmond.conf").expect("read /etc/ganglia/gmond.conf");
    let mut c = strip_channels(&installed);
    for word in [
        "mcast_join",
        "239.2.11.71",
        "udp_send_channel",
        "udp_recv_channel",
        "tcp_accept_channel",
    ] {
        let live = c
            .lines()
            .filter(|l| !l.trim_start().starts_with("/*") && !l.trim_start().starts_with('#'))
            .any(|l| l.contains(word) && !l.contains("*/"));
        assert!(!live, "channel rewrite left `{word}` in the config:\n{c}");
    }
    assert!(
        c.contains("include ('/etc/ganglia/conf.d/*.conf')"),
        "the installed gmond.conf no longer includes conf.d/*.conf:\n{c}"
    );
    c.push_str(
        "/* package_deb test: loopback only */\n\
         udp_send_channel { host = 127.0.0.1 port = {udp_port} }\n\
         udp_recv_channel { bind = 127.0.0.1 port = {udp_port} }\n\
         tcp_accept_channel { bind = 127.0.0.1 port = {tcp_port} }\n",
    );
    c
}

/// Runs the installed gmond with the installed configuration (channels on
/// loopback) and waits for the enabled hello example's metrics.
fn run_installed_gmond(stage: &str) {
    let g = GmondBuilder::new()
        .without_python_module()
        .config_template(&loopback_config())
        .start();
    let greeting = g.wait_metric("hello_greeting", secs(40));
    gmond_assert_eq!(
        g,
        greeting.val,
        "Hello from gmond",
        "{stage}: hello_greeting"
    );
    let uptime = g.wait_metric("hello_uptime", secs(20));
    let positive = uptime.val_f64() > 0.0;
    gmond_assert!(g, positive, "{stage}: hello_uptime {}", uptime.val);
    gmond_assert_eq!(g, uptime.units, "seconds");
    gmond_assert!(
        g,
        greeting.extras("GROUP").contains(&"examples"),
        "{stage}: GROUP of hello_greeting"
    );
    gmond_assert_eq!(
        g,
        g.log_count("[modpython] error"),
        0,
        "{stage}: modpython errors"
    );
    // The shipped modpython.conf collects the host's own metrics.
    let loaded = g.wait_metric("modpython_modules_loaded", secs(20));
    gmond_assert_eq!(g, loaded.val, "1", "{stage}: modpython_modules_loaded");
    gmond_assert!(
        g,
        loaded.extras("GROUP").contains(&"modpython"),
        "{stage}: GROUP of modpython_modules_loaded"
    );
    // The other examples stay disabled.
    gmond_assert!(
        g,
        g.metric("bg_load_one").is_none(),
        "{stage}: background_thread loaded"
    );
}

/// The isolated module's name; its processes are found by it.
const ISO: &str = "pkg_iso_uid";

/// The isolated module: its metric is the uid its handler runs as, and it
/// logs that uid at its first call.
const ISO_PY: &str = r#"
import logging
import os

_called = []

def uid(name):
    if not _called:
        _called.append(True)
        logging.info("first call as uid %d", os.getuid())
    return os.getuid()

def metric_init(params):
    return [{"name": "pkg_iso_uid", "call_back": uid, "time_max": 60,
             "value_type": "uint", "format": "%u", "units": "", "slope": "both",
             "description": "uid of the isolated module's handler",
             "groups": "package_test"}]
"#;

/// Its configuration, as an operator would write it: isolated by its own
/// setting, collected every second.
const ISO_PYCONF: &str = r#"modules {
  module {
    name = "pkg_iso_uid"
    language = "python"
    param "modpython.call_mode" { value = "isolated" }
  }
}
collection_group {
  collect_every = 1
  time_threshold = 1
  metric { name = "pkg_iso_uid" }
}
"#;

/// Files the test put into the installed directories, removed when it ends
/// however it ends (before the purge, which must find only its own files).
struct Placed(Vec<PathBuf>);

impl Drop for Placed {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// `getpwnam`: a user's uid and primary gid.
fn user_ids(name: &str) -> (u32, u32) {
    let c = std::ffi::CString::new(name).expect("user name");
    // SAFETY: getpwnam takes a NUL-terminated name and returns null or a
    // pointer into static storage, read at once, before any other call.
    unsafe {
        let pw = libc::getpwnam(c.as_ptr());
        assert!(!pw.is_null(), "no user {name} (ganglia-monitor creates it)");
        ((*pw).pw_uid, (*pw).pw_gid)
    }
}

/// The values of one `Key:\t...` line of /proc/PID/status, as numbers.
fn status_ids(pid: u32, key: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key}: line in /proc/{pid}/status:\n{status}"))
        .split_whitespace()
        .map(|n| n.parse().expect("number in /proc/PID/status"))
        .collect()
}

/// Live processes (zombies excluded) whose command line is exactly
/// `HELPER NAME`: the module processes of module `name`.
fn module_processes(name: &str) -> Vec<u32> {
    let wanted = format!("{HELPER}\0{name}\0");
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted.as_bytes())
                && daemon::pid_alive(*pid)
        })
        .collect()
}

/// gmond's XML from its TCP port on loopback.
fn read_xml(port: u16) -> Result<Xml, String> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(secs(10)))
        .map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    Xml::parse(common::decode(bytes))
}

/// The installed gmond as the Debian service runs it (`gmond -c CONF`, no
/// `-f`: it daemonizes, then drops to `ganglia`; logs go to syslog), with
/// the installed configuration on loopback plus an isolated module. The
/// module's process must run the installed helper, as `ganglia` once its
/// handler is called, as a child of the daemon, and be gone once the daemon
/// has stopped.
fn run_installed_gmond_daemonized_with_an_isolated_module() {
    let (ganglia_uid, ganglia_gid) = user_ids("ganglia");
    let py = PathBuf::from(format!("{MODDIR}/{ISO}.py"));
    let pyconf = PathBuf::from(format!("{CONFD}/{ISO}.pyconf"));
    let _placed = Placed(vec![py.clone(), pyconf.clone()]);
    std::fs::write(&py, ISO_PY).expect("write the isolated module");
    std::fs::write(&pyconf, ISO_PYCONF).expect("write its pyconf");
    assert!(
        module_processes(ISO).is_empty(),
        "a process of module {ISO} runs before the test started gmond"
    );

    let dir = TempDir::new();
    // gmond, once it is `ganglia`, may reconnect to the syslog socket in it.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let config = loopback_config();
    let globals: Vec<String> = config
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for want in ["daemonize = yes", "setuid = yes", "user = ganglia"] {
        assert!(
            globals.iter().any(|l| l == want),
            "the installed gmond.conf no longer says `{want}`:\n{config}"
        );
    }
    let tcp_port = common::free_tcp_port();
    let conf = dir.path().join("gmond.conf");
    std::fs::write(
        &conf,
        config
            .replace("{udp_port}", &common::free_udp_port().to_string())
            .replace("{tcp_port}", &tcp_port.to_string()),
    )
    .expect("write gmond.conf");
    // systemd gives a service no environment but PATH (this one).
    let d = Daemon::start(
        dir.path(),
        GMOND,
        &conf,
        &[("PATH", OsStr::new(common::DEFAULT_PATH))],
    );
    if !runs_program(d.pid, GMOND) {
        d.fail(&format!("pid {} does not run {GMOND}", d.pid));
    }

    // (a) The module's metric. Its first published value must already be
    // ganglia's uid: a handler call made as root would give 0.
    let deadline = Instant::now() + secs(40);
    let first = loop {
        if !d.alive() {
            d.fail("the daemonized gmond ended");
        }
        if let Some(m) = read_xml(tcp_port).ok().and_then(|x| x.metric(ISO).cloned()) {
            break m;
        }
        if Instant::now() > deadline {
            d.fail(&format!("no {ISO} in the XML within 40s"));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if first.val != ganglia_uid.to_string() {
        d.fail(&format!(
            "{ISO}'s handler ran as uid {}, not ganglia's {ganglia_uid}",
            first.val
        ));
    }

    // (b) One module process, the installed helper, entirely `ganglia`.
    let procs = module_processes(ISO);
    if procs.len() != 1 {
        d.fail(&format!("one process of {ISO} expected, found {procs:?}"));
    }
    let child = procs[0];
    if !runs_program(child, HELPER) {
        let exe = std::fs::read_link(format!("/proc/{child}/exe"));
        d.fail(&format!(
            "module process {child} runs {exe:?}, not {HELPER}"
        ));
    }
    let (uids, gids) = (status_ids(child, "Uid"), status_ids(child, "Gid"));
    if uids != [ganglia_uid; 4] || gids != [ganglia_gid; 4] {
        d.fail(&format!(
            "module process {child}: Uid {uids:?}, Gid {gids:?}; expected ganglia's \
             {ganglia_uid} and {ganglia_gid} in all four (real, effective, saved, fs)"
        ));
    }

    // (c) Its parent is the daemon, itself `ganglia` and in a session of its
    // own (detached from the test's).
    let ppid = status_ids(child, "PPid");
    if ppid != [d.pid] {
        d.fail(&format!(
            "module process {child} has parent {ppid:?}, not the daemon {}",
            d.pid
        ));
    }
    if status_ids(d.pid, "Uid") != [ganglia_uid; 4] {
        d.fail("the daemon did not drop to ganglia");
    }
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", d.pid)).expect("daemon's stat");
    // Fields after the command's ")": state, ppid, pgrp, session.
    let session = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.split_whitespace().nth(3))
        .and_then(|s| s.parse::<u32>().ok());
    if session != Some(d.pid) {
        d.fail(&format!(
            "the daemon {} is not a session leader (session {session:?}): {stat}",
            d.pid
        ));
    }

    // Its log line reached syslog through gmond: gmond's ident and pid.
    let said = format!("[modpython] [{ISO}] first call as uid {ganglia_uid}");
    d.wait_message(&said, secs(10));
    for line in d.lines_saying(&said) {
        if line.priority != DAEMON_INFO || line.ident != GMOND || line.pid != d.pid {
            d.fail(&format!("{said:?} came as {line:?}"));
        }
    }
    let errors: Vec<String> = d
        .datagrams()
        .into_iter()
        .filter(|l| l.contains("[modpython] error"))
        .collect();
    if !errors.is_empty() {
        d.fail(&format!("modpython errors in syslog: {errors:?}"));
    }

    // (d) SIGTERM ends the daemon and, with it, the module process.
    if !d.stop(libc::SIGTERM, secs(15)) {
        d.fail("the daemon did not end within 15s of SIGTERM");
    }
    let deadline = Instant::now() + secs(5);
    while !module_processes(ISO).is_empty() {
        if Instant::now() > deadline {
            d.fail(&format!(
                "module processes left after gmond ended: {:?}",
                module_processes(ISO)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn conf_d_listing() -> Option<BTreeSet<String>> {
    std::fs::read_dir(CONFD).ok().map(|d| {
        d.filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    })
}

#[test]
fn deb_package_install_enable_upgrade_purge() {
    require_tools();
    let _lock = lock();
    if let Some(status) = dpkg_status() {
        eprintln!("note: {PKG} is already known to dpkg ({status}); purging it first");
        purge_quietly();
        assert_eq!(dpkg_status(), None, "could not purge the installed {PKG}");
    }
    let confd_before = conf_d_listing();
    let tmp = TempDir::new();
    // apt reads local .debs as user _apt; keep the path readable.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");

    // Build: the package as `cargo deb` makes it, and a later version.
    let v1 = cargo_deb(&tmp.path().join("v1"), &[]);
    let version1 = deb_field(&v1, "Version");
    let version2 = format!("{version1}+upgradetest");
    let v2 = cargo_deb(
        &tmp.path().join("v2"),
        &["--no-build", "--deb-version", &version2],
    );
    let v2 = repack_with_changed_conffile(&v2, tmp.path());
    check_contents(&v1, tmp.path());

    let lint = run_any(
        Command::new("lintian")
            .args(["--fail-on", "error"])
            .arg(&v1),
    );
    let lint_text =
        String::from_utf8_lossy(&lint.stdout).into_owned() + &String::from_utf8_lossy(&lint.stderr);
    eprintln!("lintian {}:\n{lint_text}", v1.display());
    assert!(
        lint.status.success() && !lint_text.lines().any(|l| l.starts_with("E:")),
        "lintian reports errors ({}):\n{lint_text}",
        lint.status
    );

    // Install.
    let _purge = PurgeOnDrop;
    run(apt_get().arg("install").arg(&v1));
    let status = dpkg_status().unwrap_or_default();
    assert_eq!(status, format!("install ok installed {version1}"));
    let so = std::fs::metadata(SO).expect("modpython.so installed");
    assert_eq!(
        (so.uid(), so.mode() & 0o7777),
        (0, 0o644),
        "{SO} owner/mode"
    );
    // Not setuid (0755 exactly): gmond starts it as root, and it drops to
    // gmond's user itself.
    let helper = std::fs::metadata(HELPER).expect("modpython-module installed");
    assert_eq!(
        (helper.uid(), helper.gid(), helper.mode() & 0o7777),
        (0, 0, 0o755),
        "{HELPER} owner/group/mode"
    );
    let owner = run(Command::new("dpkg-query").args(["-S", HELPER]));
    assert_eq!(owner.trim(), format!("{PKG}: {HELPER}"), "dpkg-query -S");
    let check = run_any(Command::new(CHECK_BIN).arg("--help"));
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("usage")
            || String::from_utf8_lossy(&check.stderr).contains("usage"),
        "{CHECK_BIN} --help: {check:?}"
    );

    // Enable the hello example and run the installed gmond with it.
    std::fs::rename(
        format!("{CONFD}/hello.pyconf.disabled"),
        format!("{CONFD}/hello.pyconf"),
    )
    .expect("enable hello");
    let hello = std::fs::read_to_string(format!("{CONFD}/hello.pyconf")).expect("hello.pyconf");
    run_installed_gmond("after install");
    run_installed_gmond_daemonized_with_an_isolated_module();

    // Upgrade over a locally edited conffile that the new version changed too.
    let mut edited = std::fs::read_to_string(CONF).expect("read modpython.conf");
    edited.push_str("/* local edit: must survive upgrades */\n");
    std::fs::write(CONF, &edited).expect("edit modpython.conf");
    let out = run(apt_get()
        .args(["-o", "Dpkg::Options::=--force-confold", "install"])
        .arg(&v2));
    assert_eq!(
        dpkg_status().unwrap_or_default(),
        format!("install ok installed {version2}"),
        "upgrade output:\n{out}"
    );
    assert_eq!(
        std::fs::read_to_string(CONF).expect("modpython.conf after upgrade"),
        edited,
        "the local edit of {CONF} did not survive the upgrade:\n{out}"
    );
    assert!(
        Path::new(&format!("{CONF}.dpkg-dist")).exists(),
        "dpkg should have put the new version beside the kept one:\n{out}"
    );
    assert_eq!(
        std::fs::read_to_string(format!("{CONFD}/hello.pyconf")).ok(),
        Some(hello),
        "the enabled example changed in the upgrade"
    );
    run_installed_gmond("after upgrade");

    // Purge: nothing may be left.
    run(apt_get().args(["purge", PKG]));
    assert_eq!(dpkg_status(), None, "dpkg still knows {PKG} after purge");
    let mut left: Vec<String> = [SO, MODDIR, CONF, CHECK_BIN, HELPER, DOC]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("{CONF}.dpkg-dist"), format!("{CONF}.dpkg-old")])
        .chain(example_names().into_iter().flat_map(|n| {
            [
                format!("{CONFD}/{n}.pyconf"),
                format!("{CONFD}/{n}.pyconf.disabled"),
            ]
        }))
        .filter(|p| Path::new(p).exists())
        .collect();
    if conf_d_listing() != confd_before {
        left.push(format!(
            "{CONFD}: before {confd_before:?}, after {:?}",
            conf_d_listing()
        ));
    }
    assert!(left.is_empty(), "left behind after purge: {left:?}");
}

/// Whether process `pid` runs the program at `path`. Compared by file
/// identity, not by the link's text, which inside a chroot (a fresh-machine
/// run) names the file as seen from outside it.
fn runs_program(pid: u32, path: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata(format!("/proc/{pid}/exe")),
        std::fs::metadata(path),
    ) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}
