//! A gmond that daemonizes, as the Debian service runs it, and the syslog
//! datagrams it sends.
//!
//! A daemonized gmond logs through syslog(3), to `/dev/log`. This machine
//! (a container) has no syslog daemon, and a test must not take the
//! machine's `/dev/log` anyway, so [`Daemon`] runs gmond in a mount
//! namespace of its own whose `/dev` is a copy of the real one plus a
//! datagram socket of the test's at `/dev/log`: what the test reads there
//! is exactly what journald or rsyslogd would receive.
//!
//! Include it next to the harness with
//! `mod common; #[path = "common/syslog_daemon.rs"] mod syslog_daemon;`.
#![allow(dead_code)]

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::common::{self, TempDir, free_tcp_port, free_udp_port, modpython_so, secs};

/// `LOG_DAEMON | LOG_INFO`, as the `<PRI>` at the head of a syslog datagram.
pub const DAEMON_INFO: u32 = 3 * 8 + 6;

/// The gmond the daemon tests run (as in the harness, `GMOND` overrides it).
pub fn gmond_binary() -> String {
    std::env::var("GMOND").unwrap_or_else(|_| common::DEFAULT_GMOND.to_owned())
}

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

/// A gmond that daemonizes (no `-f`, `daemonize = yes`, debug level 0),
/// as the Debian service runs it, and the syslog datagrams it sends.
pub struct Daemon {
    dir: TempDir,
    pub pid: u32,
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl Daemon {
    pub fn start(modules: &[(&str, &str)], pyconf: &str) -> Daemon {
        let dir = TempDir::new();
        let root = dir.path();
        for sub in ["modules", "conf.d", "dev"] {
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

        let socket = UnixDatagram::bind(root.join("dev/log")).expect("bind the syslog socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
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
                        lines.lock().unwrap().push(text);
                    }
                }
            })
        };

        let pidfile = root.join("gmond.pid");
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "/bin/sh", "-c"])
            .arg(PRIVATE_DEV)
            .arg("sh")
            .arg(root.join("dev"))
            .arg(gmond_binary())
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(&pidfile)
            .current_dir(root)
            .env_clear()
            .env("PATH", common::DEFAULT_PATH)
            .env("LANG", "C.UTF-8")
            .env("TMPDIR", root)
            .stdin(Stdio::null())
            .output()
            .expect("run unshare");
        let mut daemon = Daemon {
            dir,
            pid: 0,
            lines,
            stop,
            reader: Some(reader),
        };
        // The parent gmond exits 0 once it has forked the daemon.
        if !out.status.success() {
            daemon.fail(&format!(
                "gmond did not daemonize: {}\nstdout: {}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let deadline = Instant::now() + secs(15);
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

    /// Every datagram received so far.
    pub fn datagrams(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The parsed syslog lines whose message is exactly `message`.
    pub fn lines_saying(&self, message: &str) -> Vec<SyslogLine> {
        self.datagrams()
            .iter()
            .filter_map(|d| parse_syslog(d))
            .filter(|l| l.message == message)
            .collect()
    }

    pub fn wait_message(&self, message: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.lines_saying(message).is_empty() {
            if Instant::now() > deadline {
                self.fail(&format!("no syslog line {message:?} within {timeout:?}"));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    #[track_caller]
    pub fn fail(&self, why: &str) -> ! {
        panic!(
            "{why}\nsyslog datagrams received:\n{}",
            self.datagrams().join("\n")
        );
    }

    pub fn alive(&self) -> bool {
        // Reparented to the machine's init, the daemon is not ours to reap:
        // a zombie counts as gone.
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z')),
            Err(_) => false,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.pid > 0 {
            let pid = libc::pid_t::try_from(self.pid).expect("pid fits pid_t");
            for signal in [libc::SIGTERM, libc::SIGKILL] {
                // SAFETY: kill(2) with plain integers; the pid is the daemon's,
                // read from the pid file it wrote, and checked alive first.
                if self.alive() && unsafe { libc::kill(pid, signal) } == 0 {
                    let deadline = Instant::now() + secs(10);
                    while self.alive() && Instant::now() < deadline {
                        thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        if thread::panicking() {
            self.dir.keep();
            eprintln!("daemon test directory kept: {}", self.dir().display());
        }
    }
}
