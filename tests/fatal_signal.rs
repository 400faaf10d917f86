//! A module that crashes gmond in-process (SIGSEGV, SIGABRT) is named in
//! gmond's log before gmond dies, with the metric whose call was in flight
//! and the crashing thread's Python traceback, and gmond dies of the same
//! signal it would have died of without modpython (`src/fatal_signal.rs`).
//!
//! gmond may dump core when it dies: each test process sets its core size
//! limit to 0 first, which gmond inherits, so nothing is left behind.

mod common;
#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/pymod.rs"]
mod pymod;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::{Gmond, GmondBuilder, secs};
use daemon::{TestDaemon as Daemon, gmond_binary, parse_syslog};
use pymod::{counter, module, pyconf, setting};

/// No core files from the gmonds these tests crash (inherited by them).
fn no_core_dumps() {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit with a struct we own; lowering a limit always works.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
    assert_eq!(rc, 0, "setrlimit(RLIMIT_CORE, 0)");
}

/// A handler that crashes the process with `crash` on the first call,
/// from the third on, after the test has created the file `crash-now`
/// beside the module (once it has seen the neighbour's metric).
fn crashing(metric: &str, crash: &str) -> String {
    format!(
        r#"
import ctypes

_calls = 0

def crashing_value(name):
    global _calls
    _calls += 1
    if _calls >= 3 and os.path.exists(os.path.join(os.path.dirname(__file__), "crash-now")):
        {crash}
    return _calls

def metric_init(params):
    return [desc("{metric}", crashing_value, slope="positive")]
"#
    )
}

/// Waits until gmond has published `healthy`, then has the crashing module
/// crash, and returns gmond's exit status and its log.
fn crash_after(g: &Gmond, healthy: &str) -> std::process::ExitStatus {
    g.wait_metric_where(healthy, |m| m.val_f64() >= 1.0, secs(30));
    std::fs::write(g.modules_dir().join("crash-now"), "").unwrap();
    match g.wait_exit(secs(30)) {
        Some(status) => status,
        None => g.fail("gmond did not die within 30s of the crash being armed"),
    }
}

/// What the crash line says of the signal's cause, given the traceback
/// lines after it. Where CPython exports `_Py_DumpTraceback` (3.11, 3.12)
/// the handler says (`direct`); elsewhere Python's faulthandler writes the
/// traceback, its first line says what the signal was (`theirs`, e.g.
/// "Segmentation fault"), and the crash line says nothing of it.
fn cause_said<'a>(g: &Gmond, traceback: &[String], direct: &'a str, theirs: &str) -> &'a str {
    match traceback.first().map(String::as_str) {
        Some("[modpython]   Stack (most recent call first):") => direct,
        Some(line) if line == format!("[modpython]   Fatal Python error: {theirs}") => "",
        other => g.fail(&format!(
            "the traceback starts with {other:?}, neither Python's 'Stack' header nor faulthandler's 'Fatal Python error: {theirs}'"
        )),
    }
}

/// The line naming the crash, and the traceback lines after it.
fn crash_report(g: &Gmond, needles: &[&str]) -> (String, Vec<String>) {
    let log = g.log();
    let mut lines = log.lines();
    let Some(line) = lines.find(|l| needles.iter().all(|n| l.contains(n))) else {
        g.fail(&format!("no log line with all of {needles:?}"));
    };
    let traceback = lines
        .take_while(|l| l.starts_with("[modpython]   "))
        .map(str::to_owned)
        .collect();
    (line.to_owned(), traceback)
}

#[test]
fn a_protected_call_that_segfaults_is_named_before_gmond_dies_of_sigsegv() {
    no_core_dumps();
    let g = GmondBuilder::new()
        .module_file(
            "fs_crashy.py",
            &module("fs", &crashing("fs_crashy_value", "ctypes.string_at(0)")),
        )
        .module_file("fs_healthy.py", &module("fs", &counter("fs_healthy_count")))
        .pyconf_text(
            "fs",
            &pyconf(&[("fs_crashy", ""), ("fs_healthy", "")], &["^fs_"]),
        )
        .start();
    let status = crash_after(&g, "fs_healthy_count");
    gmond_assert_eq!(g, status.signal(), Some(libc::SIGSEGV), "{status}");
    gmond_assert!(
        g,
        !status.core_dumped(),
        "a core file despite RLIMIT_CORE 0"
    );

    let module = g.module_ref("fs_crashy");
    let (line, traceback) = crash_report(&g, &["fatal signal SIGSEGV"]);
    let cause = cause_said(
        &g,
        &traceback,
        " (invalid memory access at address 0x0)",
        "Segmentation fault",
    );
    gmond_assert!(
        g,
        line.starts_with(&format!(
            "[modpython] error: {module}: fatal signal SIGSEGV{cause} in the call of metric 'fs_crashy_value' (on modpython's call thread); gmond is going down (the thread's Python traceback follows)."
        )),
        "the crash line: {line}"
    );
    gmond_assert!(
        g,
        line.contains(r#"param "modpython.call_mode" { value = "isolated" }"#),
        "the remedy: {line}"
    );
    let frame = format!(
        "File \"{}\", line ",
        g.modules_dir().join("fs_crashy.py").display()
    );
    gmond_assert!(
        g,
        traceback
            .iter()
            .any(|l| l.contains(&frame) && l.ends_with(" in crashing_value")),
        "no frame of the handler in the traceback: {traceback:#?}"
    );
    gmond_assert!(
        g,
        traceback.iter().any(|l| l.ends_with(" in string_at")),
        "the innermost frame is ctypes' string_at: {traceback:#?}"
    );
    // One report: the healthy module's thread is not blamed.
    gmond_assert_eq!(g, g.log_count("fatal signal"), 1);
}

#[test]
fn an_inline_call_that_aborts_is_named_before_gmond_dies_of_sigabrt() {
    no_core_dumps();
    let g = GmondBuilder::new()
        .module_file(
            "fs_aborty.py",
            &module("fs", &crashing("fs_aborty_value", "os.abort()")),
        )
        .module_file("fs_fine.py", &module("fs", &counter("fs_fine_count")))
        .pyconf_text(
            "fs",
            &pyconf(
                &[
                    ("fs_aborty", &setting("call_mode", "inline")),
                    ("fs_fine", ""),
                ],
                &["^fs_"],
            ),
        )
        .start();
    let status = crash_after(&g, "fs_fine_count");
    gmond_assert_eq!(g, status.signal(), Some(libc::SIGABRT), "{status}");

    let module = g.module_ref("fs_aborty");
    let (line, traceback) = crash_report(&g, &["fatal signal SIGABRT"]);
    let cause = cause_said(&g, &traceback, " (abort() was called)", "Aborted");
    gmond_assert!(
        g,
        line.starts_with(&format!(
            "[modpython] error: {module}: fatal signal SIGABRT{cause} in the inline call of metric 'fs_aborty_value' (on gmond's own thread); gmond is going down (the thread's Python traceback follows)."
        )),
        "the crash line: {line}"
    );
    let frame = format!(
        "File \"{}\", line ",
        g.modules_dir().join("fs_aborty.py").display()
    );
    gmond_assert!(
        g,
        traceback
            .iter()
            .any(|l| l.contains(&frame) && l.ends_with(" in crashing_value")),
        "no frame of the handler in the traceback: {traceback:#?}"
    );
}

#[test]
fn a_crash_in_a_modules_own_thread_is_said_to_be_outside_the_calls() {
    no_core_dumps();
    let body = r#"
import ctypes, threading

def _crash_later():
    while not os.path.exists(os.path.join(os.path.dirname(__file__), "crash-now")):
        time.sleep(0.05)
    ctypes.string_at(0)

def metric_init(params):
    threading.Thread(target=_crash_later, name="fs-sampler", daemon=True).start()
    return [desc("fs_threaded_one", lambda name: 1)]
"#;
    let g = GmondBuilder::new()
        .module_file("fs_threaded.py", &module("fs", body))
        .pyconf_text("fs", &pyconf(&[("fs_threaded", "")], &["^fs_"]))
        .start();
    let status = crash_after(&g, "fs_threaded_one");
    gmond_assert_eq!(g, status.signal(), Some(libc::SIGSEGV), "{status}");
    let (line, traceback) = crash_report(&g, &["fatal signal SIGSEGV"]);
    gmond_assert!(
        g,
        line.contains(
            "in a thread outside modpython's calls (a module's own thread, or one a C library started); gmond is going down (the thread's Python traceback follows). The traceback names the module"
        ),
        "the crash line: {line}"
    );
    gmond_assert!(g, !line.contains("metric '"), "no metric is blamed: {line}");
    gmond_assert!(
        g,
        traceback.iter().any(|l| l.ends_with(" in _crash_later")),
        "the thread's own frames: {traceback:#?}"
    );
}

/// Daemonized, gmond's stderr is /dev/null and its log is syslog: the
/// report arrives at `/dev/log` as syslog datagrams under gmond's ident and
/// pid, at priority daemon.err.
#[test]
fn a_daemonized_gmond_sends_the_crash_report_to_syslog() {
    no_core_dumps();
    let crashy = r#"
def _d(name, call_back):
    return {"name": name, "call_back": call_back, "value_type": "uint",
            "format": "%u", "slope": "both", "time_max": 60, "units": "",
            "description": name}

import ctypes
_calls = 0

def value(name):
    global _calls
    _calls += 1
    if _calls == 3:
        ctypes.string_at(0)
    return _calls

def metric_init(params):
    return [_d("fs_daemon_value", value)]
"#;
    let pyconf = "modules {\n  module { name = \"fs_daemon\" language = \"python\" }\n}\n\
                  collection_group {\n  collect_every = 1\n  time_threshold = 1\n  \
                  metric { name = \"fs_daemon_value\" }\n}\n";
    let d = Daemon::start(&[("fs_daemon.py", crashy)], pyconf);
    let deadline = Instant::now() + secs(30);
    while d.alive() {
        if Instant::now() > deadline {
            d.fail("the daemon did not die within 30s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The datagrams were sent before gmond died; give the reader a moment.
    std::thread::sleep(Duration::from_millis(300));
    let lines: Vec<_> = d
        .datagrams()
        .iter()
        .filter_map(|datagram| parse_syslog(datagram))
        .collect();
    let module = format!(
        "module 'fs_daemon' ({})",
        d.dir().join("modules/fs_daemon.py").display()
    );
    let Some(at) = lines.iter().position(|l| {
        l.message
            .starts_with(&format!("[modpython] error: {module}: fatal signal SIGSEGV"))
            && l.message.contains(
                "in the call of metric 'fs_daemon_value' (on modpython's call thread); gmond is going down (the thread's Python traceback follows)",
            )
    }) else {
        d.fail("no syslog datagram naming the crash");
    };
    let report = &lines[at..];
    for line in report {
        if line.priority != 3 * 8 + 3 || line.ident != gmond_binary() || line.pid != d.pid {
            d.fail(&format!(
                "{line:?}: expected priority 27 (daemon.err), ident {:?}, pid {}",
                gmond_binary(),
                d.pid
            ));
        }
    }
    let frame = format!(
        "[modpython]     File \"{}\", line ",
        d.dir().join("modules/fs_daemon.py").display()
    );
    if !report
        .iter()
        .any(|l| l.message.starts_with(&frame) && l.message.ends_with(" in value"))
    {
        d.fail("no traceback frame of the handler among the syslog datagrams");
    }
}

/// A stack overflow on modpython's call thread is reported too: the
/// handler runs on the alternate stack the thread was given (without one,
/// the kernel cannot run a handler there and kills gmond silently).
/// CPython 3.12 and later stop C recursion with a RecursionError before the
/// stack runs out, so only older ones can overflow it from Python.
#[test]
fn a_stack_overflow_on_the_call_thread_is_reported_from_the_alternate_stack() {
    let (major, minor) = modpython::python::PYTHON_VERSION
        .split_once('.')
        .map(|(a, b)| (a.parse::<u32>().unwrap(), b.parse::<u32>().unwrap()))
        .unwrap();
    if (major, minor) >= (3, 12) {
        eprintln!(
            "skipped: Python {major}.{minor} raises RecursionError before the C stack overflows"
        );
        return;
    }
    no_core_dumps();
    let body = r#"
class _Deep:
    def __repr__(self):
        return repr(_Deep())

def deep_value(name):
    if os.path.exists(os.path.join(os.path.dirname(__file__), "crash-now")):
        sys.setrecursionlimit(10**7)
        repr(_Deep())
    return 1

def metric_init(params):
    return [desc("fs_deep_value", deep_value)]
"#;
    let g = GmondBuilder::new()
        .module_file("fs_deep.py", &module("fs", body))
        .pyconf_text("fs", &pyconf(&[("fs_deep", "")], &["^fs_"]))
        .start();
    let status = crash_after(&g, "fs_deep_value");
    gmond_assert_eq!(g, status.signal(), Some(libc::SIGSEGV), "{status}");
    let (line, traceback) = crash_report(
        &g,
        &[
            &g.module_ref("fs_deep"),
            "fatal signal SIGSEGV",
            "in the call of metric 'fs_deep_value' (on modpython's call thread)",
        ],
    );
    gmond_assert!(g, line.contains("traceback follows"), "{line}");
    gmond_assert!(
        g,
        traceback.iter().any(|l| l.ends_with(" in __repr__")),
        "the recursing frames: {traceback:#?}"
    );
}

/// A crash during `metric_init` (on the thread a protected module loads
/// on) is reported as such, and the traceback names the module.
#[test]
fn a_crash_in_metric_init_is_reported_with_the_modules_traceback() {
    no_core_dumps();
    let body = r#"
import ctypes

def metric_init(params):
    ctypes.string_at(0)
    return [desc("fs_init_value", lambda name: 1)]
"#;
    let g = GmondBuilder::new()
        .module_file("fs_init.py", &module("fs", body))
        .pyconf_text("fs", &pyconf(&[("fs_init", "")], &["^fs_"]))
        .start();
    let Some(status) = g.wait_exit(secs(30)) else {
        g.fail("gmond did not die");
    };
    gmond_assert_eq!(g, status.signal(), Some(libc::SIGSEGV), "{status}");
    let (line, traceback) = crash_report(&g, &["fatal signal SIGSEGV"]);
    gmond_assert!(
        g,
        line.contains("during a module's import or metric_init (on modpython's loading thread); gmond is going down (the thread's Python traceback follows). The traceback names the module"),
        "{line}"
    );
    let frame = format!(
        "File \"{}\", line ",
        g.modules_dir().join("fs_init.py").display()
    );
    gmond_assert!(
        g,
        traceback
            .iter()
            .any(|l| l.contains(&frame) && l.ends_with(" in metric_init")),
        "{traceback:#?}"
    );
}

/// A module that enables Python's faulthandler takes the signal first; it
/// hands it on to the handler it replaced, ours, so both reports are made.
#[test]
fn a_modules_faulthandler_and_the_report_both_happen() {
    no_core_dumps();
    let body = r#"
import ctypes, faulthandler

_out = open(os.path.join(os.path.dirname(__file__), "faulthandler.txt"), "w")

def value(name):
    if os.path.exists(os.path.join(os.path.dirname(__file__), "crash-now")):
        ctypes.string_at(0)
    return 1

def metric_init(params):
    faulthandler.enable(file=_out)
    return [desc("fs_fh_value", value)]
"#;
    let g = GmondBuilder::new()
        .module_file("fs_fh.py", &module("fs", body))
        .pyconf_text("fs", &pyconf(&[("fs_fh", "")], &["^fs_"]))
        .start();
    let status = crash_after(&g, "fs_fh_value");
    gmond_assert_eq!(g, status.signal(), Some(libc::SIGSEGV), "{status}");
    crash_report(
        &g,
        &[
            &g.module_ref("fs_fh"),
            "fatal signal SIGSEGV",
            "in the call of metric 'fs_fh_value'",
        ],
    );
    let theirs =
        std::fs::read_to_string(g.modules_dir().join("faulthandler.txt")).unwrap_or_default();
    gmond_assert!(
        g,
        theirs.contains("Fatal Python error: Segmentation fault"),
        "faulthandler's own report: {theirs:?}"
    );
}
