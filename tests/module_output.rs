//! What modules print and log, where gmond's operator reads it: at gmond's
//! default debug level 0, in the foreground (stderr) and daemonized
//! (syslog, at priority info, facility daemon, under gmond's ident); each
//! module's own `logging` setup; the output cap counting only lines that
//! are shown; `module_stdout = discard`.
//!
//! A daemonized gmond's syslog is caught with `common/daemon.rs` (a private
//! mount namespace whose `/dev/log` is the test's socket).

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use common::{GmondBuilder, secs};
use daemon::{DAEMON_INFO, TestDaemon as Daemon, gmond_binary};

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
