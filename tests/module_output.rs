//! What modules print and log, where gmond's operator reads it: at gmond's
//! default debug level 0, in the foreground (stderr) and daemonized
//! (syslog, at priority info, facility daemon, under gmond's ident); each
//! module's own `logging` setup; the output cap counting only lines that
//! are shown; `module_stdout = discard`.
//!
//! A daemonized gmond logs through syslog(3), to `/dev/log`. This machine
//! (a container) has no syslog daemon, and a test must not take the
//! machine's `/dev/log` anyway, so [`Daemon`] runs gmond in a mount
//! namespace of its own whose `/dev` is a copy of the real one plus a
//! datagram socket of the test's at `/dev/log`: what the test reads there
//! is exactly what journald or rsyslogd would receive.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{GmondBuilder, TempDir, free_tcp_port, free_udp_port, modpython_so, secs};

/// `LOG_DAEMON | LOG_INFO`, as the `<PRI>` at the head of a syslog datagram.
const DAEMON_INFO: u32 = 3 * 8 + 6;

/// The gmond the daemon tests run (as in the harness, `GMOND` overrides it).
fn gmond_binary() -> String {
    std::env::var("GMOND").unwrap_or_else(|_| common::DEFAULT_GMOND.to_owned())
}

/// One datagram as syslog(3) sends it: `<PRI>Mmm dd hh:mm:ss IDENT[PID]: MESSAGE`.
#[derive(Debug, Clone)]
struct SyslogLine {
    priority: u32,
    ident: String,
    pid: u32,
    message: String,
}

fn parse_syslog(datagram: &str) -> Option<SyslogLine> {
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
struct Daemon {
    dir: TempDir,
    pid: u32,
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl Daemon {
    fn start(modules: &[(&str, &str)], pyconf: &str) -> Daemon {
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
    fn datagrams(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The parsed syslog lines whose message is exactly `message`.
    fn lines_saying(&self, message: &str) -> Vec<SyslogLine> {
        self.datagrams()
            .iter()
            .filter_map(|d| parse_syslog(d))
            .filter(|l| l.message == message)
            .collect()
    }

    fn wait_message(&self, message: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.lines_saying(message).is_empty() {
            if Instant::now() > deadline {
                self.fail(&format!("no syslog line {message:?} within {timeout:?}"));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    #[track_caller]
    fn fail(&self, why: &str) -> ! {
        panic!(
            "{why}\nsyslog datagrams received:\n{}",
            self.datagrams().join("\n")
        );
    }

    fn alive(&self) -> bool {
        // Reparented to the machine's init, the daemon is not ours to reap:
        // a zombie counts as gone.
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z')),
            Err(_) => false,
        }
    }

    fn dir(&self) -> &Path {
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

/// A descriptor of a uint metric with value 1.
const DESCRIPTOR: &str = r#"
def _d(name, call_back):
    return {"name": name, "call_back": call_back, "value_type": "uint",
            "format": "%u", "slope": "both", "time_max": 60, "units": "",
            "description": name}
"#;

fn module(body: &str) -> String {
    format!("{DESCRIPTOR}\n{body}")
}

fn pyconf(modules: &[&str], metrics: &[&str]) -> String {
    let blocks: String = modules
        .iter()
        .map(|m| format!("  module {{ name = \"{m}\" language = \"python\" }}\n"))
        .collect();
    let entries: String = metrics
        .iter()
        .map(|m| format!("  metric {{ name = \"{m}\" }}\n"))
        .collect();
    format!(
        "modules {{\n{blocks}}}\ncollection_group {{\n  collect_every = 1\n  time_threshold = 1\n{entries}}}\n"
    )
}

const DAEMON_TALKER: &str = r#"
import logging
import ganglia

print("mo_daemon: printed at import")
_said = []

def value(name):
    if not _said:
        _said.append(1)
        print("mo_daemon: printed in the handler")
    return 1

def metric_init(params):
    print("mo_daemon: printed in metric_init")
    logging.info("mo_daemon: logging info")
    logging.getLogger("mo_daemon.part").info("mo_daemon: named logger info")
    ganglia.log_info("mo_daemon: ganglia info")
    ganglia.log_warning("mo_daemon: ganglia warning")
    logging.debug("mo_daemon: logging debug")
    ganglia.log_debug("mo_daemon: ganglia debug")
    return [_d("mo_daemon_one", value)]
"#;

/// Under a daemonized gmond (debug level 0, stdout and stderr on
/// /dev/null), what a module prints and logs at info reaches syslog with
/// priority info, facility daemon and gmond's ident and pid, once each;
/// debug lines do not.
#[test]
fn a_daemonized_gmond_sends_module_info_to_syslog() {
    let d = Daemon::start(
        &[("mo_daemon.py", &module(DAEMON_TALKER))],
        &pyconf(&["mo_daemon"], &["mo_daemon_one"]),
    );
    let expected = [
        "[modpython] [mo_daemon] mo_daemon: printed at import",
        "[modpython] [mo_daemon] mo_daemon: printed in metric_init",
        "[modpython] [mo_daemon] mo_daemon: logging info",
        "[modpython] [mo_daemon] mo_daemon.part: mo_daemon: named logger info",
        "[modpython] [mo_daemon] mo_daemon: ganglia info",
        "[modpython] warning: [mo_daemon] mo_daemon: ganglia warning",
        "[modpython] [mo_daemon] mo_daemon: printed in the handler",
    ];
    // The handler's line comes last: by then every other one was sent.
    d.wait_message(expected[expected.len() - 1], secs(30));
    for message in expected {
        let lines = d.lines_saying(message);
        if lines.len() != 1 {
            d.fail(&format!(
                "{message:?} should be in syslog once, found {}",
                lines.len()
            ));
        }
        let line = &lines[0];
        if line.priority != DAEMON_INFO || line.ident != gmond_binary() || line.pid != d.pid {
            d.fail(&format!(
                "{message:?} came as priority {}, ident {:?}, pid {}; expected {DAEMON_INFO} (daemon.info), {:?}, {}",
                line.priority,
                line.ident,
                line.pid,
                gmond_binary(),
                d.pid
            ));
        }
    }
    let module_lines = d
        .datagrams()
        .iter()
        .filter(|l| l.contains("[mo_daemon]"))
        .count();
    if module_lines != expected.len() {
        d.fail(&format!(
            "expected exactly the {} lines above from the module, got {module_lines}",
            expected.len()
        ));
    }
    if d.datagrams()
        .iter()
        .any(|l| l.contains("[mo_daemon]") && l.contains("debug"))
    {
        d.fail("a debug line was logged at debug level 0");
    }
}

const FORMATTED: &str = r#"
import logging, threading

logging.basicConfig(level=logging.INFO,
                    format="mo_a_fmt %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("mo_a_fmt")

def _thread():
    logging.info("thread info")
    logging.debug("thread debug")

def metric_init(params):
    logging.info("root info")
    log.info("named info")
    logging.debug("root debug")
    log.warning("named warning")
    t = threading.Thread(target=_thread)
    t.start()
    t.join()
    return [_d("mo_a_fmt_one", lambda name: 1)]
"#;

const PLAIN: &str = r#"
import logging

log = logging.getLogger("mo_b_plain")

def metric_init(params):
    logging.info("root info")
    log.info("named info")
    logging.debug("root debug")
    log.warning("named warning")
    return [_d("mo_b_plain_one", lambda name: 1)]
"#;

/// One module's `basicConfig(level=INFO, format=...)` is its own, also on
/// the module's own thread: the other module keeps the host's format (its
/// message, after a foreign logger's name) and its debug lines, which gmond
/// shows at debug level 2. (The modules load in name order, so the
/// configuring one goes first.)
#[test]
fn basic_config_is_the_calling_modules_own() {
    let g = GmondBuilder::new()
        .module_file("mo_a_fmt.py", &module(FORMATTED))
        .module_file("mo_b_plain.py", &module(PLAIN))
        .pyconf_text(
            "two",
            &pyconf(
                &["mo_a_fmt", "mo_b_plain"],
                &["mo_a_fmt_one", "mo_b_plain_one"],
            ),
        )
        .debug_level(2)
        .start();
    g.wait_metric("mo_b_plain_one", secs(20));
    for (line, count) in [
        ("[modpython] [mo_a_fmt] mo_a_fmt INFO root: root info\n", 1),
        (
            "[modpython] [mo_a_fmt] mo_a_fmt INFO mo_a_fmt: named info\n",
            1,
        ),
        (
            "[modpython] warning: [mo_a_fmt] mo_a_fmt WARNING mo_a_fmt: named warning\n",
            1,
        ),
        // On a thread of its own, the module's records are still its own.
        (
            "[modpython] [mo_a_fmt] mo_a_fmt INFO root: thread info\n",
            1,
        ),
        // Its own level, INFO, keeps its debug lines out even at debug level 2.
        ("[mo_a_fmt] mo_a_fmt DEBUG", 0),
        ("thread debug", 0),
        ("[modpython] [mo_b_plain] root info\n", 1),
        ("[modpython] [mo_b_plain] named info\n", 1),
        ("[modpython] [mo_b_plain] root debug\n", 1),
        ("[modpython] warning: [mo_b_plain] named warning\n", 1),
    ] {
        gmond_assert_eq!(g, g.log_count(line), count, "count of {line:?}");
    }
}

const RECONFIGURING: &str = r#"
import logging, os

root = logging.getLogger()
root.setLevel(logging.ERROR)
root.handlers[0].setFormatter(logging.Formatter("mo_a_own %(levelname)s %(message)s"))
_file = logging.FileHandler(os.path.join(os.getcwd(), "mo_a_own.log"))
_file.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
root.addHandler(_file)

def metric_init(params):
    logging.warning("a warning below its level")
    logging.error("an error")
    return [_d("mo_a_own_one", lambda name: 1)]
"#;

const NEIGHBOUR: &str = r#"
import logging

def metric_init(params):
    logging.info("neighbour info")
    logging.warning("neighbour warning")
    return [_d("mo_b_neighbour_one", lambda name: 1)]
"#;

/// What a module does to the root logger itself (its level, the host
/// handler's format, a handler of its own) applies to that module's
/// records only: the other module's lines keep their look and still
/// appear, and the module's file gets nothing of the other's.
#[test]
fn root_logger_changes_stay_with_the_module() {
    let g = GmondBuilder::new()
        .module_file("mo_a_own.py", &module(RECONFIGURING))
        .module_file("mo_b_neighbour.py", &module(NEIGHBOUR))
        .pyconf_text(
            "two",
            &pyconf(
                &["mo_a_own", "mo_b_neighbour"],
                &["mo_a_own_one", "mo_b_neighbour_one"],
            ),
        )
        .start();
    g.wait_metric("mo_b_neighbour_one", secs(20));
    for (line, count) in [
        ("[modpython] error: [mo_a_own] mo_a_own ERROR an error\n", 1),
        ("a warning below its level", 0),
        ("[modpython] [mo_b_neighbour] neighbour info\n", 1),
        (
            "[modpython] warning: [mo_b_neighbour] neighbour warning\n",
            1,
        ),
    ] {
        gmond_assert_eq!(g, g.log_count(line), count, "count of {line:?}");
    }
    let file = std::fs::read_to_string(g.dir().join("mo_a_own.log")).unwrap_or_default();
    gmond_assert_eq!(g, file, "ERROR an error\n", "the module's own log file");
}

const CHATTY_DEBUG: &str = r#"
import logging
import ganglia

log = logging.getLogger("mo_chatty_debug")
log.setLevel(logging.DEBUG)
_calls = []

def value(name):
    _calls.append(1)
    if len(_calls) == 1:
        for i in range(200):
            ganglia.log_debug("chatter %d" % i)
        ganglia.log_error("mo_chatty_debug: error after the chatter")
    return 1

def metric_init(params):
    for i in range(300):
        log.debug("debug %d" % i)
        ganglia.log_debug("ganglia debug %d" % i)
    for i in range(50):
        print("mo_chatty_debug: info %d" % i)
    ganglia.log_error("mo_chatty_debug: error in metric_init")
    return [_d("mo_chatty_debug_one", value)]
"#;

const CHATTY_INFO: &str = r#"
import ganglia

def metric_init(params):
    for i in range(150):
        print("mo_chatty_info: info %d" % i)
    ganglia.log_error("mo_chatty_info: error past the cap")
    return [_d("mo_chatty_info_one", lambda name: 1)]
"#;

/// At debug level 0, 800 debug lines (not shown) leave a module's budget
/// of 100 lines a minute alone: its 50 info lines and its later errors are
/// all logged. Info lines are shown, so they do count: a module printing
/// 150 of them loses its error that follows, and the rest of its minute.
#[test]
fn lines_not_shown_do_not_use_the_output_cap() {
    let g = GmondBuilder::new()
        .module_file("mo_chatty_debug.py", &module(CHATTY_DEBUG))
        .module_file("mo_chatty_info.py", &module(CHATTY_INFO))
        .pyconf_text(
            "chatty",
            &pyconf(
                &["mo_chatty_debug", "mo_chatty_info"],
                &["mo_chatty_debug_one", "mo_chatty_info_one"],
            ),
        )
        .start();
    gmond_assert!(
        g,
        g.wait_log(
            "[modpython] error: [mo_chatty_debug] mo_chatty_debug: error after the chatter\n",
            secs(20)
        ),
        "the error after the debug chatter was not logged"
    );
    for (needle, count) in [
        ("[modpython] [mo_chatty_debug] mo_chatty_debug: info ", 50),
        (
            "[modpython] error: [mo_chatty_debug] mo_chatty_debug: error in metric_init\n",
            1,
        ),
        (
            "[modpython] error: [mo_chatty_debug] mo_chatty_debug: error after the chatter\n",
            1,
        ),
        ("[mo_chatty_debug] debug ", 0),
        ("[mo_chatty_debug] ganglia debug ", 0),
        ("[mo_chatty_debug] chatter ", 0),
        ("[modpython] [mo_chatty_info] mo_chatty_info: info ", 100),
        ("[modpython] [mo_chatty_info] mo_chatty_info: info 99\n", 1),
        ("mo_chatty_info: error past the cap", 0),
    ] {
        gmond_assert_eq!(g, g.log_count(needle), count, "count of {needle:?}");
    }
}

const PRINTER: &str = r#"
import logging, sys
import ganglia

print("mo_printer: printed at import")

def value(name):
    print("mo_printer: printed in the handler")
    return 1

def metric_init(params):
    print("mo_printer: printed in metric_init")
    sys.stdout.write("mo_printer: written to sys.stdout\n")
    sys.stderr.write("mo_printer: written to sys.stderr\n")
    logging.info("mo_printer: logging info")
    ganglia.log_info("mo_printer: ganglia info")
    return [_d("mo_printer_one", value)]
"#;

/// `module_stdout = discard` drops what modules print, and only that:
/// stderr, `logging` and `ganglia.log_*` still reach the log.
#[test]
fn module_stdout_discard_drops_stdout_only() {
    let g = GmondBuilder::new()
        .module_file("mo_printer.py", &module(PRINTER))
        .pyconf_text("printer", &pyconf(&["mo_printer"], &["mo_printer_one"]))
        .host_param("module_stdout", "discard")
        .start();
    g.wait_metric("mo_printer_one", secs(20));
    for (line, count) in [
        ("mo_printer: printed", 0),
        ("mo_printer: written to sys.stdout", 0),
        (
            "[modpython] warning: [mo_printer] mo_printer: written to sys.stderr\n",
            1,
        ),
        ("[modpython] [mo_printer] mo_printer: logging info\n", 1),
        ("[modpython] [mo_printer] mo_printer: ganglia info\n", 1),
    ] {
        gmond_assert_eq!(g, g.log_count(line), count, "count of {line:?}");
    }
    gmond_assert!(g, !g.log().contains("host setting"), "setting refused");
}

/// The default, `module_stdout = log`: the same module's prints are in the
/// log at debug level 0, once each (the handler's on every call).
#[test]
fn module_stdout_is_logged_at_debug_level_0_by_default() {
    let g = GmondBuilder::new()
        .module_file("mo_printer.py", &module(PRINTER))
        .pyconf_text("printer", &pyconf(&["mo_printer"], &["mo_printer_one"]))
        .start();
    g.wait_metric("mo_printer_one", secs(20));
    for (line, count) in [
        (
            "[modpython] [mo_printer] mo_printer: printed at import\n",
            1,
        ),
        (
            "[modpython] [mo_printer] mo_printer: printed in metric_init\n",
            1,
        ),
        (
            "[modpython] [mo_printer] mo_printer: written to sys.stdout\n",
            1,
        ),
        ("[modpython] [mo_printer] mo_printer: logging info\n", 1),
        ("[modpython] [mo_printer] mo_printer: ganglia info\n", 1),
    ] {
        gmond_assert_eq!(g, g.log_count(line), count, "count of {line:?}");
    }
    gmond_assert!(
        g,
        g.wait_log(
            "[modpython] [mo_printer] mo_printer: printed in the handler\n",
            secs(10)
        ),
        "the handler's print is missing"
    );
}
