//! gmond's lifecycle with Python modules (tests/fixtures/lifecycle):
//! init and cleanup around SIGTERM, SIGINT, SIGHUP (re-exec) and `gmond -m`,
//! despite a never-ending non-daemon thread; and a python_module block whose
//! `params` is missing or names no directory.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Gmond, GmondBuilder, TempDir, modpython_so, repo_path, secs};

const FIXTURE: &str = "tests/fixtures/lifecycle";
const FIRST_VALUES: Duration = Duration::from_secs(30);
/// gmond must be gone this soon after SIGTERM/SIGINT.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A lifecycle run: the marker file lives in its own temp dir (created before
/// gmond, so its path can go into the pyconf).
struct Lifecycle {
    marker: PathBuf,
    _marker_dir: TempDir,
}

impl Lifecycle {
    fn new() -> Self {
        let dir = TempDir::new();
        Lifecycle {
            marker: dir.path().join("marker"),
            _marker_dir: dir,
        }
    }

    /// The fixture's modules plus its pyconf with `@MARKER@` substituted.
    fn builder(&self) -> GmondBuilder {
        let pyconf = std::fs::read_to_string(repo_path(FIXTURE).join("lifecycle.pyconf"))
            .expect("read lifecycle.pyconf");
        assert!(
            pyconf.contains("@MARKER@"),
            "lifecycle.pyconf lost @MARKER@"
        );
        let pyconf = pyconf.replace("@MARKER@", &self.marker.display().to_string());
        let mut b = GmondBuilder::new();
        for m in ["lifecycle_marker.py", "lifecycle_nondaemon.py"] {
            let text = std::fs::read_to_string(repo_path(FIXTURE).join(m))
                .unwrap_or_else(|e| panic!("read {m}: {e}"));
            b = b.module_file(m, &text);
        }
        b.pyconf_text("lifecycle", &pyconf)
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.marker)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// Waits until the marker file reads exactly `want`.
    #[track_caller]
    fn wait_lines(&self, g: &Gmond, want: &[&str], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.lines();
            if got == want {
                return;
            }
            if Instant::now() >= deadline {
                g.fail(&format!(
                    "marker {} is {got:?}, expected {want:?} within {timeout:?}",
                    self.marker.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Waits for all three lifecycle metrics and checks their values.
#[track_caller]
fn check_metrics(g: &Gmond) {
    let alive = g.wait_metric("lifecycle_alive", FIRST_VALUES);
    gmond_assert_eq!(g, alive.val, "1");
    gmond_assert_eq!(g, alive.type_, "uint32");
    gmond_assert_eq!(g, alive.extras("GROUP"), vec!["lifecycle"]);
    let pid = g.wait_metric("lifecycle_pid", FIRST_VALUES);
    gmond_assert_eq!(
        g,
        pid.val,
        g.pid().to_string(),
        "lifecycle_pid is not gmond's pid"
    );
    let nd = g.wait_metric("lifecycle_nondaemon_started", FIRST_VALUES);
    gmond_assert_eq!(g, nd.val, "1");
}

#[track_caller]
fn assert_no_errors(g: &Gmond) {
    let log = g.log();
    gmond_assert!(
        g,
        !log.contains("[modpython] error") && !log.contains("Traceback"),
        "unexpected error in the log"
    );
}

/// Start, serve, signal, exit 0 with init + cleanup in the marker.
fn stop_with(sig: libc::c_int) {
    let lc = Lifecycle::new();
    let g = lc.builder().start();
    check_metrics(&g);
    lc.wait_lines(&g, &["init"], secs(1));

    let sent = Instant::now();
    g.signal(sig);
    let status = g.wait_exit(EXIT_TIMEOUT);
    gmond_assert!(
        g,
        status.is_some(),
        "gmond still running {EXIT_TIMEOUT:?} after signal {sig} (the non-daemon thread kept it alive?)"
    );
    gmond_assert_eq!(
        g,
        status.and_then(|s| s.code()),
        Some(0),
        "exit status after signal {sig}"
    );
    gmond_assert!(g, sent.elapsed() < EXIT_TIMEOUT);
    lc.wait_lines(&g, &["init", "cleanup"], secs(1));
    assert_no_errors(&g);
}

#[test]
fn sigterm_runs_cleanup_and_exits_zero() {
    stop_with(libc::SIGTERM);
}

#[test]
fn sigint_runs_cleanup_and_exits_zero() {
    stop_with(libc::SIGINT);
}

#[test]
fn sighup_cleans_up_reexecs_and_inits_again() {
    let lc = Lifecycle::new();
    let g = lc.builder().start();
    check_metrics(&g);
    lc.wait_lines(&g, &["init"], secs(1));
    g.signal(libc::SIGHUP);
    lc.wait_lines(&g, &["init", "cleanup", "init"], secs(20));
    gmond_assert!(
        g,
        g.is_running(),
        "gmond exited on SIGHUP instead of re-executing"
    );
    // The XML now comes from the re-executed gmond: its metrics are back,
    // and with daemonize = no execve kept the pid.
    // check_metrics compares lifecycle_pid (os.getpid() in the new image)
    // with the pid the harness started.
    check_metrics(&g);
    gmond_assert!(
        g,
        !g.log().contains("execve failed"),
        "gmond could not re-exec itself"
    );

    g.signal(libc::SIGTERM);
    let status = g.wait_exit(EXIT_TIMEOUT);
    gmond_assert!(
        g,
        status.is_some(),
        "gmond did not exit after SIGTERM (post-SIGHUP)"
    );
    gmond_assert_eq!(g, status.and_then(|s| s.code()), Some(0));
    lc.wait_lines(&g, &["init", "cleanup", "init", "cleanup"], secs(1));
    assert_no_errors(&g);
}

/// A call holding the GIL (a C call through `ctypes.PyDLL`, which keeps it)
/// when SIGHUP comes: gmond must still clean up within the cleanup deadline
/// and re-execute itself, though no module's `metric_cleanup` can run
/// while the GIL is held; the re-executed gmond serves the metrics again.
#[test]
fn sighup_while_a_call_holds_the_gil_reexecs_within_the_cleanup_deadline() {
    let lc = Lifecycle::new();
    let once = lc.marker.with_extension("held");
    let hog = format!(
        r#"
import ctypes, os
ONCE = {once:?}
def value(name):
    if not os.path.exists(ONCE):
        open(ONCE, "w").close()
        ctypes.PyDLL("libc.so.6").sleep(60)
    return 7
def metric_init(params):
    return [{{"name": "gilhold_val", "call_back": value, "value_type": "uint",
             "format": "%u", "slope": "both", "time_max": 60, "units": "",
             "description": "holds the GIL on its first call"}}]
"#,
        once = once.display().to_string()
    );
    let g = lc
        .builder()
        .module_file("gilhold.py", &hog)
        .host_param("call_timeout", "1")
        .pyconf_text(
            "gilhold",
            "modules { module { name = \"gilhold\" language = \"python\" } }\n\
             collection_group { collect_every = 1 time_threshold = 1\n\
               metric { name = \"gilhold_val\" } }\n",
        )
        .start();
    lc.wait_lines(&g, &["init"], FIRST_VALUES);
    g.wait_line(
        &["metric 'gilhold_val' did not return within 1.0s"],
        secs(20),
    );
    let sent = Instant::now();
    g.signal(libc::SIGHUP);
    // The cleanup thread cannot get the GIL: gmond gives up on it after the
    // cleanup deadline (10 s) and re-executes; the new image inits again.
    let bound = secs(10) + secs(15);
    lc.wait_lines(&g, &["init", "init"], bound);
    gmond_assert!(
        g,
        sent.elapsed() < bound,
        "re-exec took {:?}",
        sent.elapsed()
    );
    gmond_assert!(g, g.is_running(), "gmond exited on SIGHUP");
    g.wait_line(
        &["did not return within 10s; gmond goes on without waiting for it"],
        secs(1),
    );
    check_metrics(&g);
    let v = g.wait_metric("gilhold_val", FIRST_VALUES);
    gmond_assert_eq!(g, v.val, "7");
    g.signal(libc::SIGTERM);
    gmond_assert!(
        g,
        g.wait_exit(EXIT_TIMEOUT).is_some(),
        "no exit after SIGTERM"
    );
}

#[test]
fn metrics_mode_lists_metrics_runs_cleanup_and_exits_zero() {
    let lc = Lifecycle::new();
    let g = lc.builder().arg("-m").start();
    let status = g.wait_exit(secs(20));
    gmond_assert!(g, status.is_some(), "gmond -m did not exit");
    gmond_assert_eq!(
        g,
        status.and_then(|s| s.code()),
        Some(0),
        "gmond -m exit status"
    );
    let log = g.log();
    for m in [
        "lifecycle_alive",
        "lifecycle_pid",
        "lifecycle_nondaemon_started",
    ] {
        // `gmond -m` prints "<name>\t<description> (module python_module)".
        gmond_assert!(
            g,
            log.lines()
                .any(|l| l.split_whitespace().next() == Some(m)
                    && l.contains("(module python_module)")),
            "gmond -m does not list {m}"
        );
    }
    lc.wait_lines(&g, &["init", "cleanup"], secs(1));
    assert_no_errors(&g);
}

/// How long a run with a failed python_module is watched for a crash.
const WATCH: Duration = Duration::from_secs(3);

/// gmond with a broken python_module block stays up and keeps serving XML.
#[track_caller]
fn check_still_running(g: &Gmond) {
    gmond_assert!(
        g,
        g.wait_log("Module python_module failed to initialize", secs(15)),
        "gmond did not report the failed python_module"
    );
    std::thread::sleep(WATCH);
    gmond_assert!(g, g.is_running(), "gmond exited after python_module failed");
    gmond_assert!(g, g.try_xml().is_ok(), "gmond serves no XML");
    g.signal(libc::SIGTERM);
    gmond_assert_eq!(g, g.wait_exit(EXIT_TIMEOUT).and_then(|s| s.code()), Some(0));
}

/// The `[modpython] error:` line of the log that contains `needle`.
#[track_caller]
fn error_line(g: &Gmond, needle: &str) -> String {
    g.log()
        .lines()
        .find(|l| l.starts_with("[modpython] error:") && l.contains(needle))
        .map(String::from)
        .unwrap_or_else(|| {
            g.fail(&format!(
                "no `[modpython] error:` line containing {needle:?}"
            ))
        })
}

#[test]
fn params_naming_a_missing_directory_fails_python_module_only() {
    let lc = Lifecycle::new();
    let g = lc
        .builder()
        .module_params("{modules}/does-not-exist")
        .extra_config("modules { module { name = \"core_metrics\" } }")
        .start();
    let missing = g.modules_dir().join("does-not-exist");
    let line = error_line(&g, &missing.display().to_string());
    gmond_assert!(
        g,
        line.contains("directory"),
        "the error does not say what is wrong: {line}"
    );
    check_still_running(&g);
    gmond_assert!(
        g,
        lc.lines().is_empty(),
        "a module ran without a module dir"
    );
}

#[test]
fn python_module_without_params_is_a_clear_error() {
    let lc = Lifecycle::new();
    let so: PathBuf = modpython_so();
    let g = lc
        .builder()
        .without_python_module()
        .extra_config(&format!(
            "modules {{\n  module {{ name = \"core_metrics\" }}\n  module {{\n    name = \"python_module\"\n    path = \"{}\"\n  }}\n}}",
            Path::new(&so).display()
        ))
        .start();
    let line = error_line(&g, "params");
    gmond_assert!(
        g,
        line.contains("python_module"),
        "the error does not name the python_module block: {line}"
    );
    check_still_running(&g);
    gmond_assert!(
        g,
        lc.lines().is_empty(),
        "a module ran without a module dir"
    );
}

const SLOW_INIT: &str = r#"
import time

def metric_init(params):
    time.sleep(3600)
    return []
"#;

const QUICK: &str = r#"
def handler(name):
    return 7

def metric_init(params):
    return [{'name': 'quick_seven', 'call_back': handler, 'time_max': 60,
             'value_type': 'uint', 'units': 'n', 'slope': 'both',
             'format': '%u', 'description': 'seven'}]
"#;

#[test]
fn hanging_metric_init_is_interrupted_and_skipped() {
    let started = Instant::now();
    let g = GmondBuilder::new()
        .host_param("init_timeout", "1")
        .module_file("slow_init.py", SLOW_INIT)
        .module_file("quick.py", QUICK)
        .pyconf_text(
            "slow",
            r#"modules {
  module { name = "slow_init" language = "python" }
  module { name = "quick" language = "python" }
}
collection_group { collect_every = 1 time_threshold = 1 metric { name = "quick_seven" } }
"#,
        )
        .start();
    let m = g.wait_metric("quick_seven", FIRST_VALUES);
    gmond_assert_eq!(g, m.val, "7");
    // gmond started although one module's metric_init never returns.
    gmond_assert!(
        g,
        started.elapsed() < Duration::from_secs(20),
        "gmond took {:?} to publish",
        started.elapsed()
    );
    let line = error_line(&g, "module 'slow_init'");
    gmond_assert!(
        g,
        line.contains("import or metric_init did not finish within init_timeout (1s)")
            && line.contains("slow_init.py"),
        "unexpected error line: {line}"
    );
    g.signal(libc::SIGTERM);
    gmond_assert!(g, g.wait_exit(EXIT_TIMEOUT).is_some_and(|s| s.success()));
}
