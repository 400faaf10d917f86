//! A gmond that daemonizes (no `-f`), as the Debian service runs it, and
//! what it sends to syslog.
//!
//! A daemonized gmond logs through syslog(3), to `/dev/log`. Test machines
//! (containers) often run no syslog daemon, and a test must not take the
//! machine's `/dev/log` anyway, so [`Daemon`] runs gmond in a mount
//! namespace of its own whose `/dev` is a copy of the real one plus a
//! datagram socket of the test's at `/dev/log` ([`Syslog`]): what the test
//! reads there is exactly what journald or rsyslogd would receive.
//!
//! Used by tests/module_output.rs and tests/package_deb.rs through
//! `#[path = "common/daemon.rs"] mod daemon;`.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// `LOG_DAEMON | LOG_INFO`, as the `<PRI>` at the head of a syslog datagram.
pub const DAEMON_INFO: u32 = 3 * 8 + 6;

/// One datagram as syslog(3) sends it: `<PRI>Mmm dd hh:mm:ss IDENT[PID]: MESSAGE`.
#[derive(Debug, Clone)]
pub struct SyslogLine {
    pub priority: u32,
    pub ident: String,
    pub pid: u32,
    pub message: String,
}

pub fn parse_syslog(datagram: &str) -> Option<SyslogLine> {
    let rest = datagram.strip_prefix('<')?;
    let (priority, rest) = rest.split_once('>')?;
    // The timestamp is always 15 characters ("Dec  2 17:00:00") and a space.
    let rest = rest.get(16..)?;
    let (head, message) = rest.split_once(": ")?;
    let (ident, pid) = head.strip_suffix(']')?.rsplit_once('[')?;
    Some(SyslogLine {
        priority: priority.parse().ok()?,
        ident: ident.to_owned(),
        pid: pid.parse().ok()?,
        message: message.trim_end_matches('\n').to_owned(),
    })
}

/// Mounts a copy of `/dev` with the test's socket at `/dev/log` over `/dev`
/// (in gmond's private mount namespace: nothing of it is seen outside),
/// then runs gmond. `$1` is the prepared directory, which already holds
/// the socket; the rest is gmond's command line.
const PRIVATE_DEV: &str = r#"
set -e
d="$1"; shift
for e in /dev/*; do
    n="${e#/dev/}"
    [ "$n" = log ] && continue
    if [ -L "$e" ]; then
        ln -s "$(readlink "$e")" "$d/$n"
    elif [ -d "$e" ]; then
        mkdir "$d/$n" && mount --rbind "$e" "$d/$n" || true
    else
        touch "$d/$n" && mount --bind "$e" "$d/$n" || true
    fi
done
mount --rbind "$d" /dev
exec "$@"
"#;

/// The test's `/dev/log`, and every datagram sent to it so far.
pub struct Syslog {
    dev: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl Syslog {
    /// Creates `dir/dev` (which must not exist yet) with the socket in it,
    /// and starts reading it.
    pub fn bind(dir: &Path) -> Syslog {
        let dev = dir.join("dev");
        std::fs::create_dir(&dev).unwrap_or_else(|e| panic!("mkdir {}: {e}", dev.display()));
        let socket = UnixDatagram::bind(dev.join("log")).expect("bind the syslog socket");
        // As the real /dev/log: a gmond that dropped to its user may have to
        // connect again after a failed send.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dev.join("log"), std::fs::Permissions::from_mode(0o666))
                .expect("chmod the syslog socket");
        }
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("socket read timeout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let lines = Arc::clone(&lines);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = socket.recv(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        lines.lock().unwrap_or_else(|e| e.into_inner()).push(text);
                    }
                }
            })
        };
        Syslog {
            dev,
            lines,
            stop,
            reader: Some(reader),
        }
    }

    /// A command that runs `program` with `args` in a mount namespace of
    /// its own, where `/dev/log` is this socket. The caller sets the
    /// environment, directory and standard streams.
    pub fn command(&self, program: impl AsRef<OsStr>, args: &[&OsStr]) -> Command {
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "/bin/sh", "-c"])
            .arg(PRIVATE_DEV)
            .arg("sh")
            .arg(&self.dev)
            .arg(program)
            .args(args);
        c
    }

    /// Every datagram received so far.
    pub fn datagrams(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The parsed syslog lines whose message is exactly `message`.
    pub fn lines_saying(&self, message: &str) -> Vec<SyslogLine> {
        self.datagrams()
            .iter()
            .filter_map(|d| parse_syslog(d))
            .filter(|l| l.message == message)
            .collect()
    }
}

impl Drop for Syslog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// A daemonized gmond, found by the pid file it was told to write, and its
/// syslog. SIGTERM (then SIGKILL) when dropped, if still alive.
pub struct Daemon {
    pub pid: u32,
    pub syslog: Syslog,
}

impl Daemon {
    /// Runs `gmond -c CONF -p DIR/gmond.pid` (plus `args`) in `dir`, with
    /// only the environment in `env`, and waits for the daemon's pid file.
    /// `dir/dev` is made for the syslog socket. The `-p` only tells the test
    /// which process is the daemon; the service runs gmond without it.
    pub fn start(
        dir: &Path,
        gmond: impl AsRef<OsStr>,
        conf: &Path,
        env: &[(&str, &OsStr)],
    ) -> Daemon {
        let syslog = Syslog::bind(dir);
        let pidfile = dir.join("gmond.pid");
        let mut cmd = syslog.command(
            gmond,
            &[
                OsStr::new("-c"),
                conf.as_os_str(),
                OsStr::new("-p"),
                pidfile.as_os_str(),
            ],
        );
        cmd.current_dir(dir).env_clear().stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run unshare");
        let mut daemon = Daemon { pid: 0, syslog };
        // The parent gmond exits 0 once it has forked the daemon.
        if !out.status.success() {
            daemon.fail(&format!(
                "gmond did not daemonize: {}\nstdout: {}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while daemon.pid == 0 {
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                daemon.pid = pid;
            } else if Instant::now() > deadline {
                daemon.fail("no pid file from the daemonized gmond");
            } else {
                thread::sleep(Duration::from_millis(50));
            }
        }
        daemon
    }

    /// Every syslog datagram received so far.
    pub fn datagrams(&self) -> Vec<String> {
        self.syslog.datagrams()
    }

    /// The parsed syslog lines whose message is exactly `message`.
    pub fn lines_saying(&self, message: &str) -> Vec<SyslogLine> {
        self.syslog.lines_saying(message)
    }

    /// Waits for a syslog line whose message is exactly `message`.
    #[track_caller]
    pub fn wait_message(&self, message: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.lines_saying(message).is_empty() {
            if Instant::now() > deadline {
                self.fail(&format!("no syslog line {message:?} within {timeout:?}"));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Panics with `why` and everything syslog received.
    #[track_caller]
    pub fn fail(&self, why: &str) -> ! {
        panic!(
            "{why}\nsyslog datagrams received:\n{}",
            self.datagrams().join("\n")
        );
    }

    pub fn alive(&self) -> bool {
        pid_alive(self.pid)
    }

    /// Sends `signal` and waits up to `timeout` for the daemon to end;
    /// true if it did.
    pub fn stop(&self, signal: libc::c_int, timeout: Duration) -> bool {
        let pid = libc::pid_t::try_from(self.pid).expect("pid fits pid_t");
        // SAFETY: kill(2) with plain integers; the pid is the daemon's, read
        // from the pid file it wrote, and checked alive first.
        if self.alive() && unsafe { libc::kill(pid, signal) } != 0 {
            return !self.alive();
        }
        let deadline = Instant::now() + timeout;
        while self.alive() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        !self.alive()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.pid > 0 && !self.stop(libc::SIGTERM, Duration::from_secs(10)) {
            self.stop(libc::SIGKILL, Duration::from_secs(10));
        }
    }
}

/// Whether `pid` runs. Reparented to the machine's init, a daemon is not
/// the test's to reap: a zombie counts as gone.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

use crate::common::{self, TempDir, free_tcp_port, free_udp_port, modpython_so};

/// The gmond the daemon tests run (as in the harness, `GMOND` overrides it).
pub fn gmond_binary() -> String {
    std::env::var("GMOND").unwrap_or_else(|_| common::DEFAULT_GMOND.to_owned())
}

/// A test's own daemonized gmond (no `-f`, `daemonize = yes`, debug level
/// 0) in a directory of its own, with `modules` and one `.pyconf`.
pub struct TestDaemon {
    // Declared first, so it is dropped (gmond stopped) before its directory.
    daemon: Daemon,
    dir: TempDir,
}

impl std::ops::Deref for TestDaemon {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

impl TestDaemon {
    pub fn start(modules: &[(&str, &str)], pyconf: &str) -> TestDaemon {
        let dir = TempDir::new();
        let root = dir.path();
        for sub in ["modules", "conf.d"] {
            std::fs::create_dir(root.join(sub)).unwrap();
        }
        for (name, text) in modules {
            std::fs::write(root.join("modules").join(name), text).unwrap();
        }
        std::fs::write(root.join("conf.d/test.pyconf"), pyconf).unwrap();
        let udp = free_udp_port();
        let tcp = free_tcp_port();
        let conf = root.join("gmond.conf");
        std::fs::write(
            &conf,
            format!(
                "globals {{ daemonize = yes setuid = no user = nobody debug_level = 0 \
                 host_dmax = 0 send_metadata_interval = 0 }}\n\
                 cluster {{ name = \"modpython-test\" }}\nhost {{ location = \"test\" }}\n\
                 udp_send_channel {{ host = 127.0.0.1 port = {udp} }}\n\
                 udp_recv_channel {{ bind = 127.0.0.1 port = {udp} }}\n\
                 tcp_accept_channel {{ bind = 127.0.0.1 port = {tcp} }}\n\
                 modules {{ module {{ name = \"python_module\" path = \"{}\" params = \"{}\" }} }}\n\
                 include ('{}/*.pyconf')\n",
                modpython_so().display(),
                root.join("modules").display(),
                root.join("conf.d").display(),
            ),
        )
        .unwrap();
        let daemon = Daemon::start(
            root,
            gmond_binary(),
            &conf,
            &[
                ("PATH", OsStr::new(common::DEFAULT_PATH)),
                ("LANG", OsStr::new("C.UTF-8")),
                ("TMPDIR", root.as_os_str()),
            ],
        );
        TestDaemon { daemon, dir }
    }
}

impl TestDaemon {
    /// The test's directory (modules in `modules/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if thread::panicking() {
            self.dir.keep();
            eprintln!("daemon test directory kept: {}", self.dir.path().display());
        }
    }
}
