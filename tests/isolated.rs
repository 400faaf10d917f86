//! Isolated modules (`call_mode = isolated`) against the real gmond. Each
//! case runs a faulty isolated module beside a healthy protected module and
//! a healthy inline one, and asserts that
//!
//! * gmond stays alive, and both healthy modules are updated every round
//!   while the faulty one crashes, hangs or is restarted;
//! * the log names the module, the metric and how its process ended, with
//!   the Python traceback where `faulthandler` can write one;
//! * the faulty module is back after its restart, where it can be (its
//!   metric is the process's pid, so a new process shows a new value);
//! * no module process is left once gmond stops, by SIGTERM, a SIGHUP
//!   re-exec or SIGKILL.

mod common;
#[path = "common/pymod.rs"]
mod pymod;

use std::time::{Duration, Instant};

use common::{Gmond, GmondBuilder, secs};

/// gmond's deadline for a call in every case (host param).
const CALL_TIMEOUT: &str = "1";
/// How long a healthy counter may go without a new value in the XML: its
/// group sends every second, and a round waits at most one call_timeout
/// for the isolated module.
const MAX_STALL: Duration = Duration::from_millis(3500);
const FIRST_VALUES: Duration = Duration::from_secs(20);

/// The faulty module's metric: its process's pid, so a restart shows.
const PID_METRIC: &str = r#"
import ctypes

_DIR = os.environ["TMPDIR"]
_NAME = METRIC
_calls = 0

def _once(name):
    marker = os.path.join(_DIR, name)
    if os.path.exists(marker):
        return False
    open(marker, "w").close()
    return True

def pid(name):
    global _calls
    _calls += 1
    if _calls == 3 and _once("fault.done"):
        FAULT
    return os.getpid()

def metric_init(params):
    INIT_FAULT
    return [desc(_NAME, pid)]

def metric_cleanup():
    print("metric_cleanup ran in process", os.getpid())
    CLEANUP_FAULT
"#;

struct Case {
    /// The faulty module's name (unique among the tests: its processes
    /// are found by it).
    name: &'static str,
    /// Python statement(s) run on the faulty module's third call.
    fault: &'static str,
    /// Python statement(s) run at the start of every metric_init.
    init_fault: &'static str,
    /// Python statement(s) run at the end of metric_cleanup.
    cleanup_fault: &'static str,
    settings: Vec<(&'static str, &'static str)>,
}

impl Case {
    fn new(name: &'static str, fault: &'static str) -> Case {
        Case {
            name,
            fault,
            init_fault: "pass",
            cleanup_fault: "pass",
            settings: Vec::new(),
        }
    }

    fn metric(&self) -> String {
        format!("{}_pid", self.name)
    }

    fn start(&self) -> Gmond {
        self.start_builder().start()
    }

    fn start_builder(&self) -> GmondBuilder {
        let body = PID_METRIC
            .replace("INIT_FAULT", self.init_fault)
            .replace("CLEANUP_FAULT", self.cleanup_fault)
            .replace("FAULT", self.fault)
            .replace("METRIC", &format!("{:?}", self.metric()));
        let mut extra = pymod::setting("call_mode", "isolated");
        for (k, v) in &self.settings {
            extra.push(' ');
            extra.push_str(&pymod::setting(k, v));
        }
        GmondBuilder::new()
            .host_param("call_timeout", CALL_TIMEOUT)
            .module_file(&format!("{}.py", self.name), &pymod::module("iso", &body))
            .module_file(
                "healthy_p.py",
                &pymod::module("iso", &pymod::counter("healthy_p")),
            )
            .module_file(
                "healthy_i.py",
                &pymod::module("iso", &pymod::counter("healthy_i")),
            )
            .pyconf_text(
                "iso",
                &pymod::pyconf(
                    &[
                        (self.name, &extra),
                        ("healthy_p", &pymod::setting("call_mode", "protected")),
                        ("healthy_i", &pymod::setting("call_mode", "inline")),
                    ],
                    &["^healthy_", &format!("^{}_", self.name), "^modpython_"],
                ),
            )
    }
}

/// Pids of the live module processes running module `name`.
fn module_processes(name: &str) -> Vec<u32> {
    let wanted = format!("modpython-module\0{name}\0");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline);
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // A zombie has exited already; it is gmond's to reap, not alive.
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if text.contains(&wanted) && !zombie {
            pids.push(pid);
        }
    }
    pids
}

/// Asserts no process of module `name` is left, allowing the kernel a
/// moment to deliver a parent-death signal.
#[track_caller]
fn assert_no_module_process(g: &Gmond, name: &str, after: &str) {
    let deadline = Instant::now() + secs(5);
    loop {
        let left = module_processes(name);
        if left.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            g.fail(&format!(
                "module processes of '{name}' still running after {after}: {left:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Watches the XML until `done` holds (or `timeout`), asserting all along
/// that gmond answers and that both healthy counters get a new value at
/// least every [`MAX_STALL`].
#[track_caller]
fn watch_healthy(g: &Gmond, timeout: Duration, mut done: impl FnMut(&Gmond) -> bool) {
    let start = Instant::now();
    let mut last: [(f64, Instant); 2] = [(0.0, start), (0.0, start)];
    loop {
        gmond_assert!(g, g.is_running(), "gmond died");
        let x = g
            .try_xml()
            .unwrap_or_else(|e| g.fail(&format!("gmond did not answer on its XML port: {e}")));
        for (i, name) in ["healthy_p", "healthy_i"].iter().enumerate() {
            let v = x.metric(name).map_or(0.0, |m| m.val_f64());
            if v > last[i].0 {
                last[i] = (v, Instant::now());
            }
            let stalled = last[i].1.elapsed();
            gmond_assert!(
                g,
                stalled <= MAX_STALL,
                "healthy module {name} got no new value for {stalled:?} (last {})",
                last[i].0
            );
        }
        if done(g) {
            return;
        }
        if start.elapsed() > timeout {
            g.fail("the expected state was not reached in time");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits for the first values of all three modules; returns the faulty
/// module's first pid.
fn first_pid(g: &Gmond, case: &Case) -> f64 {
    g.wait_metric("healthy_p", FIRST_VALUES);
    g.wait_metric("healthy_i", FIRST_VALUES);
    g.wait_metric(&case.metric(), FIRST_VALUES).val_f64()
}

/// Watches until the faulty module publishes a pid other than `old` (its
/// restarted process answers), the healthy ones updated all along.
fn wait_restarted(g: &Gmond, case: &Case, old: f64, timeout: Duration) -> f64 {
    let mut new = old;
    watch_healthy(g, timeout, |g| {
        new = g.metric(&case.metric()).map_or(old, |m| m.val_f64());
        new != old
    });
    new
}

/// Stops gmond with SIGTERM: the module process runs metric_cleanup (its
/// output reaches gmond's log) and is gone afterwards.
#[track_caller]
fn stop_with_sigterm(g: &Gmond, case: &Case) {
    let running = !module_processes(case.name).is_empty();
    g.signal(libc::SIGTERM);
    gmond_assert!(
        g,
        g.wait_exit(secs(15)).is_some(),
        "gmond did not exit on SIGTERM"
    );
    if running {
        gmond_assert!(
            g,
            g.log()
                .contains(&format!("[{}] metric_cleanup ran in process", case.name)),
            "metric_cleanup did not run in the module process"
        );
    }
    assert_no_module_process(g, case.name, "SIGTERM");
}

#[test]
fn gmond_m_and_sigint_leave_no_module_process() {
    let case = Case::new("iso_m", "pass");
    // gmond -m: init, then cleanup at exit, without daemonizing.
    let g = case.start_builder().arg("-m").start();
    gmond_assert!(g, g.wait_exit(secs(20)).is_some(), "gmond -m did not exit");
    gmond_assert!(
        g,
        g.log().contains("[iso_m] metric_cleanup ran in process"),
        "metric_cleanup did not run in the module process under gmond -m"
    );
    assert_no_module_process(&g, case.name, "gmond -m");

    let g = case.start();
    first_pid(&g, &case);
    g.signal(libc::SIGINT);
    gmond_assert!(
        g,
        g.wait_exit(secs(15)).is_some(),
        "gmond did not exit on SIGINT"
    );
    gmond_assert!(
        g,
        g.log().contains("[iso_m] metric_cleanup ran in process"),
        "metric_cleanup did not run on SIGINT"
    );
    assert_no_module_process(&g, case.name, "SIGINT");
}

#[test]
fn a_segfault_is_a_crash_of_the_module_process_only() {
    let case = Case::new("iso_segv", "ctypes.string_at(0)");
    let g = case.start();
    let pid = first_pid(&g, &case);
    let module = g.module_ref(case.name);
    let line = g.wait_line(
        &[
            &module,
            "killed by signal SIGSEGV",
            "during the call of metric 'iso_segv_pid'",
        ],
        secs(20),
    );
    gmond_assert!(g, line.contains("keep their last good values"), "{line}");
    // faulthandler's traceback of the crashing thread follows the line.
    g.wait_line(&["Fatal Python error: Segmentation fault"], secs(5));
    g.wait_line(&["iso_segv.py", "in pid"], secs(5));
    let new = wait_restarted(&g, &case, pid, secs(20));
    gmond_assert!(g, new != pid, "no new process");
    g.wait_line(&[&module, "its process was started again"], secs(5));
    // The restart is counted in the module's self metric.
    watch_healthy(&g, secs(10), |g| {
        g.metric("modpython_iso_segv_restarts")
            .is_some_and(|m| m.val_f64() >= 1.0)
    });
    stop_with_sigterm(&g, &case);
    // metric_cleanup ran in the module process too: its output is in the log.
}

#[test]
fn os_exit_is_reported_with_its_status_and_sigkill_of_gmond_leaves_no_process() {
    let case = Case::new("iso_exit", "os._exit(3)");
    let g = case.start();
    let pid = first_pid(&g, &case);
    g.wait_line(
        &[
            &g.module_ref(case.name),
            "exited with status 3",
            "during the call of metric 'iso_exit_pid'",
        ],
        secs(20),
    );
    wait_restarted(&g, &case, pid, secs(20));
    gmond_assert!(
        g,
        !module_processes(case.name).is_empty(),
        "no module process while gmond runs"
    );
    g.signal(libc::SIGKILL);
    g.wait_exit(secs(10));
    assert_no_module_process(&g, case.name, "SIGKILL of gmond");
}

#[test]
fn abort_is_reported_with_its_traceback_and_a_sighup_reexec_leaves_no_old_process() {
    let case = Case::new("iso_abort", "os.abort()");
    let g = case.start();
    let pid = first_pid(&g, &case);
    g.wait_line(
        &[
            &g.module_ref(case.name),
            "killed by signal SIGABRT",
            "during the call of metric 'iso_abort_pid'",
        ],
        secs(20),
    );
    g.wait_line(&["Fatal Python error: Aborted"], secs(5));
    let new = wait_restarted(&g, &case, pid, secs(20));
    let before: Vec<u32> = module_processes(case.name);
    gmond_assert!(
        g,
        before.len() == 1,
        "one module process expected, found {before:?}"
    );
    gmond_assert!(
        g,
        f64::from(before[0]) == new,
        "the live process {before:?} is not the one publishing {new}"
    );
    g.signal(libc::SIGHUP);
    // The re-executed gmond starts a process of its own; the old one is gone.
    let deadline = Instant::now() + secs(30);
    loop {
        let now = module_processes(case.name);
        if !now.is_empty() && !now.contains(&before[0]) {
            break;
        }
        if Instant::now() > deadline {
            g.fail(&format!(
                "after SIGHUP: module processes {now:?}, old {before:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    gmond_assert!(
        g,
        g.is_running(),
        "gmond did not survive its SIGHUP re-exec"
    );
    assert_no_zombies(&g);
    stop_with_sigterm(&g, &case);
}

#[test]
fn going_over_memory_limit_is_a_crash() {
    let mut case = Case::new("iso_mem", "_hog = bytearray(600 << 20)");
    case.settings.push(("memory_limit", "300M"));
    let g = case.start();
    let pid = first_pid(&g, &case);
    g.wait_line(
        &[
            &g.module_ref(case.name),
            "went over its modpython.memory_limit",
            "during the call of metric 'iso_mem_pid'",
        ],
        secs(20),
    );
    wait_restarted(&g, &case, pid, secs(20));
    stop_with_sigterm(&g, &case);
}

#[test]
fn the_gil_held_in_c_for_twice_the_deadline_delays_only_its_own_module() {
    let case = Case::new("iso_gil", "ctypes.PyDLL('libc.so.6').sleep(2)");
    let g = case.start();
    let pid = first_pid(&g, &case);
    let module = g.module_ref(case.name);
    g.wait_line(
        &[&module, "metric 'iso_gil_pid' did not return within 1.0s"],
        secs(20),
    );
    // The hold ends before kill_after (30 s by default): the late value
    // arrives and the module goes on in the same process.
    let mut line = String::new();
    watch_healthy(&g, secs(15), |g| {
        line = g
            .log()
            .lines()
            .find(|l| l.contains("the late call of metric 'iso_gil_pid' returned after"))
            .unwrap_or_default()
            .to_owned();
        !line.is_empty()
    });
    gmond_assert!(g, line.contains("is gmond's last good value now"), "{line}");
    gmond_assert!(g, !g.log().contains("was killed"), "the process was killed");
    watch_healthy(&g, secs(5), |_| true);
    gmond_assert!(
        g,
        g.metric(&case.metric()).map(|m| m.val_f64()) == Some(pid),
        "the module's process changed"
    );
    stop_with_sigterm(&g, &case);
}

#[test]
fn a_c_sleep_past_kill_after_gets_the_process_killed_and_started_again() {
    let mut case = Case::new("iso_sleep", "ctypes.CDLL('libc.so.6').sleep(600)");
    case.settings.push(("kill_after", "3"));
    let g = case.start();
    let pid = first_pid(&g, &case);
    let module = g.module_ref(case.name);
    g.wait_line(
        &[&module, "metric 'iso_sleep_pid' did not return within 1.0s"],
        secs(20),
    );
    let line = g.wait_line(
        &[
            &module,
            "was killed: the call of metric 'iso_sleep_pid' had not returned after",
        ],
        secs(20),
    );
    let after = g.number_in(&line, "had not returned after ", "s (kill_after)");
    gmond_assert!(
        g,
        (3.0..8.0).contains(&after),
        "killed after {after}s: {line}"
    );
    wait_restarted(&g, &case, pid, secs(20));
    watch_healthy(&g, secs(10), |g| {
        g.metric("modpython_iso_sleep_kills")
            .is_some_and(|m| m.val_f64() >= 1.0)
    });
    stop_with_sigterm(&g, &case);
}

#[test]
fn metric_init_crashing_on_a_restart_is_retried() {
    let mut case = Case::new("iso_init", "ctypes.string_at(0)");
    // The second start (the first restart) crashes in metric_init.
    case.init_fault = "if os.path.exists(os.path.join(_DIR, 'fault.done')) and _once('init.done'): ctypes.string_at(0)";
    let g = case.start();
    let pid = first_pid(&g, &case);
    let module = g.module_ref(case.name);
    g.wait_line(
        &[
            &module,
            "killed by signal SIGSEGV",
            "during the call of metric 'iso_init_pid'",
        ],
        secs(20),
    );
    g.wait_line(
        &[
            &module,
            "killed by signal SIGSEGV",
            "during import or metric_init",
        ],
        secs(20),
    );
    wait_restarted(&g, &case, pid, secs(30));
    stop_with_sigterm(&g, &case);
}

#[test]
fn a_crash_in_metric_init_at_start_up_is_seen_while_a_forked_child_holds_the_socket() {
    let mut case = Case::new("iso_fork_init", "pass");
    // The child keeps the module process's socket open for a minute; only
    // the process's own exit says it is gone.
    case.init_fault = "import time\n    if os.fork() == 0:\n        time.sleep(60)\n        os._exit(0)\n    os._exit(3)";
    // gmond's start waits for every module's init: the XML port opens after.
    let started = Instant::now();
    let g = case.start();
    let line = g.wait_line(
        &[
            &g.module_ref(case.name),
            "exited with status 3",
            "during import or metric_init",
        ],
        secs(20),
    );
    gmond_assert!(g, line.contains("the module is skipped"), "{line}");
    // Seen at once, not when init_timeout (30 s) runs out.
    gmond_assert!(
        g,
        !g.log().contains("did not finish within init_timeout"),
        "the crash was taken for a hang"
    );
    gmond_assert!(
        g,
        started.elapsed() < secs(10),
        "the crash was seen only after {:?}",
        started.elapsed()
    );
    // The forked child went with its process group.
    assert_no_module_process(&g, case.name, "the crash at start-up");
    let watching = Instant::now();
    watch_healthy(&g, secs(10), |_| watching.elapsed() > secs(3));
    stop_with_sigterm(&g, &case);
}

#[test]
fn a_crash_in_metric_cleanup_is_reported_with_its_traceback() {
    let mut case = Case::new("iso_cleanup", "pass");
    case.cleanup_fault = "ctypes.string_at(0)";
    let g = case.start();
    first_pid(&g, &case);
    stop_with_sigterm(&g, &case);
    // gmond has exited: its whole log is in.
    let line = g.wait_line(
        &[
            &g.module_ref(case.name),
            "killed by signal SIGSEGV",
            "during metric_cleanup",
        ],
        secs(1),
    );
    gmond_assert!(g, !line.contains("in time"), "{line}");
    g.wait_line(&["Fatal Python error: Segmentation fault"], secs(1));
    g.wait_line(&["iso_cleanup.py", "in metric_cleanup"], secs(1));
}

/// A module whose metric_init notes that it began, then waits up to 10 s
/// for the other one's to begin too, and notes whether it did.
const MEETS_OTHER: &str = r#"
def metric_init(params):
    tmp = os.environ["TMPDIR"]
    open(os.path.join(tmp, NAME + ".began"), "w").close()
    end = time.monotonic() + 10
    while not os.path.exists(os.path.join(tmp, OTHER + ".began")) and time.monotonic() < end:
        time.sleep(0.02)
    met = os.path.exists(os.path.join(tmp, OTHER + ".began"))
    with open(os.path.join(tmp, NAME + ".init"), "w") as f:
        f.write("together" if met else "alone")
    return [desc(NAME + "_v", lambda name: 1)]
"#;

#[test]
fn isolated_modules_load_side_by_side() {
    let names = ["iso_side_a", "iso_side_b"];
    let mut builder = GmondBuilder::new().host_param("call_timeout", CALL_TIMEOUT);
    for (name, other) in [(names[0], names[1]), (names[1], names[0])] {
        let body = MEETS_OTHER
            .replace("NAME", &format!("{name:?}"))
            .replace("OTHER", &format!("{other:?}"));
        builder = builder.module_file(&format!("{name}.py"), &pymod::module("iso", &body));
    }
    let isolated = pymod::setting("call_mode", "isolated");
    let g = builder
        .pyconf_text(
            "iso",
            &pymod::pyconf(
                &[(names[0], &isolated), (names[1], &isolated)],
                &["^iso_side_"],
            ),
        )
        .start();
    for name in names {
        g.wait_metric(&format!("{name}_v"), FIRST_VALUES);
    }
    // One after the other, the first metric_init would wait its 10 s for
    // the second in vain.
    for name in names {
        let text = std::fs::read_to_string(g.dir().join(format!("{name}.init")))
            .unwrap_or_else(|e| g.fail(&format!("{name} did not note its metric_init: {e}")));
        gmond_assert_eq!(
            g,
            text,
            "together",
            "{name}'s metric_init ran while the other's did not"
        );
    }
}

/// An in-process module that takes a third of `init_timeout` to load.
const THIRD_OF_TIMEOUT: &str = r#"
def metric_init(params):
    time.sleep(0.35)
    return [desc(NAME + "_v", lambda name: 1)]
"#;

/// An isolated module that takes longer than `init_timeout` from its
/// process's start, but less from when gmond turns to it.
const SLOWER_THAN_TIMEOUT: &str = r#"
def metric_init(params):
    time.sleep(1.8)
    return [desc("iso_late_z_v", lambda name: 1)]
"#;

#[test]
fn an_isolated_module_gets_its_whole_init_timeout_once_gmond_turns_to_it() {
    // Six in-process modules before it (modules load in name order) keep
    // gmond busy ~2.1 s; the isolated module, started before them, answers
    // ~1.8 s after its start: late by its own start, in time by the time
    // gmond waits for it, as when modules loaded one after the other.
    let mut builder = GmondBuilder::new().host_param("init_timeout", "1");
    let mut blocks = Vec::new();
    let names: Vec<String> = (0..6).map(|i| format!("iso_late_{i}")).collect();
    for name in &names {
        builder = builder.module_file(
            &format!("{name}.py"),
            &pymod::module(
                "iso",
                &THIRD_OF_TIMEOUT.replace("NAME", &format!("{name:?}")),
            ),
        );
        blocks.push((name.as_str(), ""));
    }
    let isolated = pymod::setting("call_mode", "isolated");
    blocks.push(("iso_late_z", &isolated));
    let g = builder
        .module_file("iso_late_z.py", &pymod::module("iso", SLOWER_THAN_TIMEOUT))
        .pyconf_text("iso", &pymod::pyconf(&blocks, &["^iso_late_"]))
        .start();
    g.wait_metric("iso_late_z_v", FIRST_VALUES);
    for name in &names {
        g.wait_metric(&format!("{name}_v"), FIRST_VALUES);
    }
    gmond_assert!(
        g,
        !g.log().contains("did not finish within init_timeout"),
        "a module was given up on at init_timeout"
    );
}

/// An isolated module that prints more while it loads than a socket holds
/// (in long lines: a module's output is limited to 100 lines a minute, of
/// at most 4,000 bytes).
const CHATTY_INIT: &str = r#"
def metric_init(params):
    for i in range(95):
        print("chatty line %04d %s" % (i, "x" * 3900))
    return [desc("iso_chat_z_v", lambda name: 1)]
"#;

#[test]
fn what_an_isolated_module_prints_while_gmond_loads_others_is_kept() {
    // Two slow in-process modules before it keep gmond from reading the
    // isolated module's output (~370 KB) while it is printed.
    let mut builder = GmondBuilder::new();
    let mut blocks = Vec::new();
    for name in ["iso_chat_0", "iso_chat_1"] {
        builder = builder.module_file(
            &format!("{name}.py"),
            &pymod::module(
                "iso",
                &THIRD_OF_TIMEOUT
                    .replace("0.35", "0.5")
                    .replace("NAME", &format!("{name:?}")),
            ),
        );
        blocks.push((name, ""));
    }
    let isolated = pymod::setting("call_mode", "isolated");
    blocks.push(("iso_chat_z", &isolated));
    let g = builder
        .module_file("iso_chat_z.py", &pymod::module("iso", CHATTY_INIT))
        .pyconf_text("iso", &pymod::pyconf(&blocks, &["^iso_chat_"]))
        .start();
    g.wait_metric("iso_chat_z_v", FIRST_VALUES);
    let log = g.log();
    let lines = log.lines().filter(|l| l.contains("chatty line ")).count();
    gmond_assert!(
        g,
        lines == 95 && log.contains("chatty line 0094"),
        "{lines} of the 95 lines printed reached gmond's log"
    );
    gmond_assert!(g, !log.contains("were dropped"), "lines were dropped");
}

#[test]
fn other_descriptors_on_a_restart_get_the_module_refused() {
    let mut case = Case::new("iso_change", "ctypes.string_at(0)");
    case.init_fault = "global _NAME\n    if os.path.exists(os.path.join(_DIR, 'fault.done')): _NAME = 'iso_change_other'";
    let g = case.start();
    first_pid(&g, &case);
    let module = g.module_ref(case.name);
    let line = g.wait_line(
        &[
            &module,
            "returned other metrics from metric_init than gmond registered",
        ],
        secs(30),
    );
    gmond_assert!(
        g,
        line.contains("metric 'iso_change_pid' is gone")
            && line.contains("metric 'iso_change_other' is new"),
        "{line}"
    );
    // Refused: no process left for it, and the others go on.
    watch_healthy(&g, secs(4), |_| module_processes(case.name).is_empty());
    assert_no_module_process(&g, case.name, "the refusal");
    let watching = Instant::now();
    watch_healthy(&g, secs(10), |_| watching.elapsed() > secs(3));
    stop_with_sigterm(&g, &case);
}

/// Two isolated modules under a gmond that drops to `nobody`: one loads as
/// root (as in-process modules do) and follows gmond to `nobody` for its
/// calls; the other (`modpython.user = nobody`) never runs as root.
const UIDS: &str = r#"
_INIT_UID = os.geteuid()

def init_uid(name):
    return _INIT_UID

def call_uid(name):
    return os.geteuid()

def metric_init(params):
    return [desc(PREFIX + "_init_uid", init_uid), desc(PREFIX + "_call_uid", call_uid)]
"#;

#[test]
fn module_processes_follow_gmond_to_its_user_or_run_as_their_own() {
    let nobody = 65534.0;
    // gmond re-executed as nobody loads the .so and starts the module
    // program again: both where nobody can read them.
    let (_host, so) = common::host_readable_by_all();
    let g = GmondBuilder::new()
        .setuid_user("nobody")
        .so_path(&so)
        .module_file(
            "iso_follow.py",
            &pymod::module("iso", &UIDS.replace("PREFIX", "'iso_follow'")),
        )
        .module_file(
            "iso_user.py",
            &pymod::module("iso", &UIDS.replace("PREFIX", "'iso_user'")),
        )
        .pyconf_text(
            "iso",
            &pymod::pyconf(
                &[
                    ("iso_follow", &pymod::setting("call_mode", "isolated")),
                    (
                        "iso_user",
                        &format!(
                            "{} {}",
                            pymod::setting("call_mode", "isolated"),
                            pymod::setting("user", "nobody")
                        ),
                    ),
                ],
                &["^iso_"],
            ),
        )
        .start();
    let value = |name: &str| g.wait_metric(name, FIRST_VALUES).val_f64();
    gmond_assert_eq!(g, value("iso_follow_init_uid"), 0.0);
    gmond_assert_eq!(g, value("iso_follow_call_uid"), nobody);
    gmond_assert_eq!(g, value("iso_user_init_uid"), nobody);
    gmond_assert_eq!(g, value("iso_user_call_uid"), nobody);
    let before = module_processes("iso_follow");
    gmond_assert!(g, before.len() == 1, "processes: {before:?}");
    // After a SIGHUP re-exec gmond's init runs as nobody: so does the new
    // process's, and the old one is gone.
    g.signal(libc::SIGHUP);
    let deadline = Instant::now() + secs(30);
    loop {
        let now = module_processes("iso_follow");
        // gmond's port is closed while it re-executes itself.
        let init_uid = g
            .try_xml()
            .ok()
            .and_then(|x| x.metric("iso_follow_init_uid").map(|m| m.val_f64()));
        if init_uid == Some(nobody) && !now.is_empty() && !now.contains(&before[0]) {
            break;
        }
        if Instant::now() > deadline {
            g.fail(&format!(
                "after SIGHUP: processes {now:?} (old {before:?}), init uid {init_uid:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    g.signal(libc::SIGTERM);
    gmond_assert!(
        g,
        g.wait_exit(secs(15)).is_some(),
        "gmond did not exit on SIGTERM"
    );
    assert_no_module_process(&g, "iso_follow", "SIGTERM");
    assert_no_module_process(&g, "iso_user", "SIGTERM");
}

#[test]
fn a_stop_while_a_call_is_stuck_kills_the_process_within_the_cleanup_deadline() {
    let case = Case::new("iso_stuck", "ctypes.CDLL('libc.so.6').sleep(600)");
    let g = case.start();
    first_pid(&g, &case);
    g.wait_line(
        &[
            &g.module_ref(case.name),
            "metric 'iso_stuck_pid' did not return within 1.0s",
        ],
        secs(20),
    );
    let stopped = Instant::now();
    g.signal(libc::SIGTERM);
    gmond_assert!(
        g,
        g.wait_exit(secs(20)).is_some(),
        "gmond did not exit on SIGTERM"
    );
    let took = stopped.elapsed();
    // The cleanup deadline is 10 s; the stuck process cannot run its
    // metric_cleanup, and is killed when it is over.
    gmond_assert!(g, took < secs(14), "gmond took {took:?} to stop");
    g.wait_line(
        &[
            &g.module_ref(case.name),
            "did not finish metric_cleanup in time and is killed",
        ],
        secs(1),
    );
    assert_no_module_process(&g, case.name, "SIGTERM during a stuck call");
}

#[test]
fn a_module_signal_handler_does_not_end_its_process() {
    // Python installs handlers without SA_RESTART: a timer signal every
    // 10 ms interrupts the process's wait for gmond's next batch, which
    // must not be taken for gmond going away.
    let mut case = Case::new("iso_alarm", "pass");
    case.init_fault = "import signal\n    signal.signal(signal.SIGALRM, lambda *a: None)\n    signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)";
    let g = case.start();
    let pid = first_pid(&g, &case);
    let start = Instant::now();
    watch_healthy(&g, secs(10), |_| start.elapsed() > secs(5));
    let log = g.log();
    gmond_assert!(
        g,
        !log.contains("its process (pid"),
        "the module process ended while its module's timer ran"
    );
    gmond_assert!(
        g,
        module_processes(case.name) == [pid as u32],
        "the module process is not the first one: {:?} (first {pid})",
        module_processes(case.name)
    );
    stop_with_sigterm(&g, &case);
}

/// Module processes that have exited and wait, as zombies, for gmond
/// (`gmond_pid`) to reap them.
fn zombie_module_processes(gmond_pid: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
        if head.ends_with("(modpython-modul") && state == Some("Z") && ppid == Some(gmond_pid) {
            pids.push(pid);
        }
    }
    pids
}

/// Asserts that the (re-executed) gmond reaps the module processes of the
/// image before it: none is left a zombie.
#[track_caller]
fn assert_no_zombies(g: &Gmond) {
    let deadline = Instant::now() + secs(10);
    loop {
        let zombies = zombie_module_processes(g.pid());
        if zombies.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            g.fail(&format!(
                "module processes left unreaped by the re-executed gmond: {zombies:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

const HANGS_ON_THIRD_CALL: &str = r#"
import ctypes

_calls = 0

def pid(name):
    global _calls
    _calls += 1
    if _calls == 3:
        ctypes.CDLL("libc.so.6").sleep(600)
    return os.getpid()

def metric_init(params):
    return [desc("iso_other_pid", pid)]
"#;

/// gmond dropping to nobody, with module iso_other running as daemon and
/// hanging in C on its third call.
fn start_other_user(kill_after: &str, so: &std::path::Path) -> Gmond {
    GmondBuilder::new()
        .setuid_user("nobody")
        .so_path(so)
        .host_param("call_timeout", CALL_TIMEOUT)
        .module_file("iso_other.py", &pymod::module("iso", HANGS_ON_THIRD_CALL))
        .pyconf_text(
            "iso",
            &pymod::pyconf(
                &[(
                    "iso_other",
                    &format!(
                        "{} {} {}",
                        pymod::setting("call_mode", "isolated"),
                        pymod::setting("user", "daemon"),
                        pymod::setting("kill_after", kill_after)
                    ),
                )],
                &["^iso_other_"],
            ),
        )
        .start()
}

#[test]
fn a_hung_process_of_another_user_is_ended_after_gmond_dropped_privileges_and_at_a_sighup() {
    // gmond, as nobody, may not signal a process that runs as daemon: the
    // process ends itself when gmond shuts its socket down (past
    // kill_after) or when it closes (a SIGHUP re-exec, which keeps gmond's
    // pid, so that no parent-death signal comes).
    let (_host, so) = common::host_readable_by_all();
    let g = start_other_user("2", &so);
    let first = g.wait_metric("iso_other_pid", FIRST_VALUES).val_f64() as u32;
    g.wait_line(
        &[
            &g.module_ref("iso_other"),
            &format!("its process (pid {first}) was killed"),
            "had not returned after",
        ],
        secs(30),
    );
    let deadline = Instant::now() + secs(5);
    while module_processes("iso_other").contains(&first) {
        if Instant::now() > deadline {
            g.fail(&format!(
                "process {first} (user daemon) still runs after gmond, as nobody, killed it"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    g.signal(libc::SIGTERM);
    g.wait_exit(secs(20));

    // A SIGHUP while the call hangs: gmond's cleanup cannot reach the
    // process, nor can a kill; the re-executed gmond leaves no process of
    // the old one running, and none unreaped.
    let g = start_other_user("600", &so);
    let first = g.wait_metric("iso_other_pid", FIRST_VALUES).val_f64() as u32;
    g.wait_line(
        &[
            &g.module_ref("iso_other"),
            "metric 'iso_other_pid' did not return within 1.0s",
        ],
        secs(20),
    );
    gmond_assert!(
        g,
        module_processes("iso_other") == [first],
        "the hung process is not running: {:?}",
        module_processes("iso_other")
    );
    g.signal(libc::SIGHUP);
    // The re-exec waits for the cleanup deadline (10 s) first.
    let deadline = Instant::now() + secs(30);
    while module_processes("iso_other").contains(&first) {
        if Instant::now() > deadline {
            g.fail(&format!(
                "process {first} (user daemon) outlived gmond's SIGHUP re-exec"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_no_zombies(&g);
    gmond_assert!(
        g,
        g.is_running(),
        "gmond did not survive its SIGHUP re-exec"
    );
}
