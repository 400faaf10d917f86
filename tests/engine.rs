//! The call engine driven directly, without gmond: one test per fault of
//! the hand-off between the calling thread and the workers, with real
//! Python modules in a temporary directory.
//!
//! * a call that holds the GIL past its deadline, with other modules (one
//!   of them inline) queued behind it;
//! * a worker that never gets the GIL (the caller holds it);
//! * a module's own thread holding the GIL;
//! * a panic in a call;
//! * shutdown while a call is stuck;
//! * a module resetting the deadline signal to its default action;
//! * a fork during an inline module's `metric_init`.
//!
//! (SIGHUP re-exec while a call is stuck needs gmond's own execve: it is
//! `lifecycle::sighup_while_a_call_holds_the_gil_reexecs_within_the_cleanup_deadline`.)
//!
//! Python has one main thread (the one that started it), and inline calls
//! and their deadline signal must run there, as they do on gmond's thread.
//! So every test runs its body on one long-lived thread, one test at a
//! time, through [`on_python_thread`].

mod common;

use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::TempDir;
use log::{Level, LevelFilter, Log, Metadata, Record};
use modpython::collection;
use modpython::engine::call::{CallTarget, Outcome};
use modpython::engine::worker::{BatchEnd, Worker};
use modpython::engine::{Engine, GIL_GRACE, Observer, Skip, StartInput, Started};
use modpython::gmond_config::{CollectedMetric, ModuleBlock, Param};
use modpython::settings::HostSettings;
use modpython::value::Kept;
use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyString};

type Job = Box<dyn FnOnce() + Send>;
/// A job and where to say how it ended (a panic's message).
type Queued = (Job, mpsc::Sender<Result<(), String>>);

/// Runs `body` on the one thread that runs Python's main thread here, and
/// passes on its panic.
fn on_python_thread(body: impl FnOnce() + Send + 'static) {
    static JOBS: OnceLock<Mutex<mpsc::Sender<Queued>>> = OnceLock::new();
    let jobs = JOBS.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Queued>();
        std::thread::Builder::new()
            .name("python-main".into())
            .stack_size(16 << 20)
            .spawn(move || {
                for (job, done) in rx {
                    let result = panic::catch_unwind(AssertUnwindSafe(job)).map_err(|p| {
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "panic".into())
                    });
                    let _ = done.send(result);
                }
            })
            .unwrap();
        Mutex::new(tx)
    });
    let (done_tx, done_rx) = mpsc::channel();
    jobs.lock()
        .unwrap()
        .send((Box::new(body), done_tx))
        .unwrap();
    if let Err(message) = done_rx.recv().unwrap() {
        panic!("{message}");
    }
}

/// Every log line of the process, for the assertions on what is said.
struct Lines(Mutex<Vec<String>>);

static LINES: Lines = Lines(Mutex::new(Vec::new()));

impl Log for Lines {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }
    fn log(&self, record: &Record) {
        if record.level() <= Level::Warn {
            self.0
                .lock()
                .unwrap()
                .push(format!("{}: {}", record.level(), record.args()));
        }
    }
    fn flush(&self) {}
}

fn log_lines() -> Vec<String> {
    LINES.0.lock().unwrap().clone()
}

fn lines_with(needles: &[&str]) -> Vec<String> {
    log_lines()
        .into_iter()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .collect()
}

/// Modules (name, source) in a fresh directory, started with `call_timeout`
/// and one collection group selecting every metric starting with `prefix`.
/// `inline` lists the modules that run inline.
fn start(
    dir: &Path,
    modules: &[(&str, &str)],
    inline: &[&str],
    prefix: &str,
    call_timeout: Duration,
) -> Started {
    let _ = log::set_logger(&LINES);
    log::set_max_level(LevelFilter::Trace);
    let mut blocks = Vec::new();
    for (name, source) in modules {
        std::fs::write(dir.join(format!("{name}.py")), source).unwrap();
        let mut params = Vec::new();
        if inline.contains(name) {
            params.push(Param {
                name: "modpython.call_mode".into(),
                value: Some("inline".into()),
            });
        }
        blocks.push(ModuleBlock {
            name: Some((*name).into()),
            language: Some("python".into()),
            enabled: true,
            params,
            ..ModuleBlock::default()
        });
    }
    let settings = HostSettings {
        call_timeout,
        strict_permissions: false,
        self_metrics: false,
        ..HostSettings::default()
    };
    Engine::start(StartInput {
        dir: dir.to_path_buf(),
        settings,
        blocks,
        trusted_uids: vec![0, unsafe_getuid()],
        collected: vec![CollectedMetric {
            group: 0,
            name: None,
            name_match: Some(format!("^{prefix}")),
        }],
        debug_level: 0,
        timed: false,
        gmond_user: None,
    })
    .unwrap_or_else(|e| panic!("the engine did not start: {e}"))
}

fn unsafe_getuid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

/// One metric per module: `NAME_val`, returning a call counter; `body` runs
/// first in each call (with `n`, the call's number, in scope).
fn counter_module(name: &str, body: &str) -> String {
    format!(
        r#"
import ctypes, os, time, signal, threading
calls = 0
def value(metric):
    global calls
    calls += 1
    n = calls
{body}
    return n
def metric_init(params):
    return [{{"name": "{name}_val", "call_back": value, "value_type": "uint",
             "format": "%u", "slope": "both", "time_max": 60, "units": "",
             "description": "test"}}]
"#,
        body = body
            .lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

fn index_of(started: &Started, metric: &str) -> usize {
    started
        .descriptors
        .iter()
        .position(|d| d.name == metric)
        .unwrap_or_else(|| panic!("no metric {metric}"))
}

fn uint(kept: &Kept) -> u32 {
    match kept {
        Kept::Uint(v) => *v,
        _ => panic!("not a uint"),
    }
}

/// Records what the engine says about each call.
#[derive(Default)]
struct Seen {
    skipped: Vec<(usize, Skip)>,
    timed_out: Vec<usize>,
}

impl Observer for Seen {
    fn called(&mut self, index: usize, outcome: &Outcome, _seconds: f32) {
        if matches!(outcome, Outcome::TimedOut(_)) {
            self.timed_out.push(index);
        }
    }
    fn skipped(&mut self, index: usize, why: Skip) {
        self.skipped.push((index, why));
    }
}

/// Waits until no thread holds the GIL for long (the end of a hold), so
/// that one test's hold never reaches into the next.
fn wait_for_gil() {
    Python::attach(|_| ());
}

#[test]
fn a_call_holding_the_gil_costs_one_deadline_and_the_others_resume_after_it() {
    on_python_thread(|| {
        let tmp = TempDir::new();
        // The hog's second call holds the GIL in C for 3 s (PyDLL keeps it).
        let hog = counter_module(
            "e1_hog",
            "if n == 2:\n    ctypes.PyDLL('libc.so.6').sleep(3)",
        );
        let a = counter_module("e1_a", "pass");
        let b = counter_module("e1_b", "pass");
        let c = counter_module("e1_c", "pass");
        let mut started = start(
            tmp.path(),
            &[("e1_a", &a), ("e1_b", &b), ("e1_c", &c), ("e1_hog", &hog)],
            &["e1_c"],
            "e1_",
            Duration::from_secs(1),
        );
        let order: Vec<usize> = ["e1_hog_val", "e1_a_val", "e1_b_val", "e1_c_val"]
            .iter()
            .map(|m| index_of(&started, m))
            .collect();
        let engine = &mut started.engine;
        let mut seen = Seen::default();
        let mut rounds: Vec<(Instant, Duration, Vec<u32>)> = Vec::new();
        let test_start = Instant::now();
        while test_start.elapsed() < Duration::from_secs(6) {
            let round_start = Instant::now();
            let values: Vec<u32> = order
                .iter()
                .map(|&i| uint(engine.collect(i, &mut seen)))
                .collect();
            rounds.push((round_start, round_start.elapsed(), values));
            std::thread::sleep(Duration::from_millis(250));
        }
        // Round 2 starts the hold: one deadline (the hog's), then the
        // others find the GIL held within the grace and are skipped.
        let longest = rounds.iter().map(|r| r.1).max().unwrap();
        let bound = Duration::from_secs(1) + GIL_GRACE + Duration::from_millis(400);
        assert!(
            longest <= bound,
            "a round took {longest:?} (bound {bound:?}): {:?}",
            rounds.iter().map(|r| r.1).collect::<Vec<_>>()
        );
        let stuck_round = rounds
            .iter()
            .position(|r| r.1 >= Duration::from_millis(900))
            .expect("no round waited for the hog's deadline");
        // Every later round during the hold costs next to nothing.
        for r in &rounds[stuck_round + 1..] {
            assert!(r.1 < Duration::from_millis(300), "round took {:?}", r.1);
        }
        // The hold ends 3 s after it began (the start of the stuck round);
        // every other module moves again in the first round after.
        let hold_end = rounds[stuck_round].0 + Duration::from_millis(3100);
        let before = &rounds[stuck_round].2;
        let after = rounds
            .iter()
            .find(|r| r.0 > hold_end + Duration::from_millis(100))
            .expect("no round after the hold");
        for (k, name) in ["e1_a", "e1_b", "e1_c"].iter().enumerate() {
            assert!(
                after.2[k + 1] > before[k + 1],
                "{name} did not move in the first round after the hold: {:?} then {:?}",
                before,
                after.2
            );
        }
        // The skipped calls were skipped for the GIL, never taken for hung.
        assert!(seen.skipped.iter().any(|(_, why)| *why == Skip::NoGil));
        assert_eq!(seen.timed_out, vec![order[0]], "only the hog timed out");
        let gil = lines_with(&[
            "Python's GIL has not been free",
            "module 'e1_hog'",
            "metric 'e1_hog_val'",
        ]);
        assert_eq!(gil.len(), 1, "{:#?}", log_lines());
        assert_eq!(lines_with(&["Python's GIL is free again"]).len(), 1);
        for m in ["e1_a", "e1_b", "e1_c"] {
            assert!(
                lines_with(&[&format!("module '{m}'"), "did not return"]).is_empty(),
                "{m} was called hung: {:#?}",
                log_lines()
            );
        }
        // The hog's late value is kept, with the call's own run time.
        let returned = lines_with(&["module 'e1_hog'", "returned after"]);
        assert_eq!(returned.len(), 1, "{:#?}", log_lines());
        assert!(
            returned[0].contains("returned after 3.") || returned[0].contains("returned after 2.9"),
            "{}",
            returned[0]
        );
        assert!(returned[0].contains("its value 2 is gmond's last good value now"));
        engine.cleanup();
        wait_for_gil();
    });
}

/// A trivial target: a Python callable, called with the metric's name.
fn target(py: Python<'_>, module: &str, name: &str, callable: Bound<'_, PyAny>) -> CallTarget {
    CallTarget {
        module_name: module.into(),
        callback: callable.unbind(),
        py_name: PyString::new(py, name).unbind(),
        value_type: modpython::descriptor::ValueType::Uint,
    }
}

#[test]
fn a_worker_that_never_gets_the_gil_is_withdrawn_not_hung() {
    on_python_thread(|| {
        modpython::python::start(0).unwrap();
        let targets = Python::attach(|py| {
            let five = py.eval(c"lambda name: 5", None, None).unwrap();
            std::sync::Arc::new(vec![target(py, "w", "w_five", five)])
        });
        let worker = Worker::spawn(targets, false).unwrap();
        // This thread holds the GIL throughout: the worker cannot take the
        // request, however long the deadline.
        let taken_before = worker.gil_taken();
        let end = Python::attach(|_| {
            worker.call_batch(
                &[0],
                Duration::from_millis(300),
                Duration::from_millis(300),
                |_, _, _| panic!("nothing may be called without the GIL"),
            )
        });
        match end {
            BatchEnd::NoGil { waited, .. } => assert!(waited >= Duration::from_millis(300)),
            BatchEnd::Stuck(_) => panic!("a worker waiting for the GIL was taken for a hung call"),
            _ => panic!("the batch ran without the GIL"),
        }
        // Released: the worker gets the GIL, finds its request withdrawn,
        // and serves the next one.
        let deadline = Instant::now() + Duration::from_secs(5);
        while worker.gil_taken() == taken_before {
            assert!(Instant::now() < deadline, "the worker never got the GIL");
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut got = None;
        let end = worker.call_batch(
            &[0],
            Duration::from_secs(1),
            Duration::from_secs(1),
            |i, o, _| {
                got = Some((
                    i,
                    matches!(o, Outcome::Value(modpython::value::Value::Uint(5))),
                ));
            },
        );
        assert!(matches!(end, BatchEnd::Done));
        assert_eq!(got, Some((0, true)));
    });
}

#[test]
fn a_modules_own_thread_holding_the_gil_is_named_and_nobody_is_hung() {
    on_python_thread(|| {
        let tmp = TempDir::new();
        // metric_init starts a thread that, once asked to, holds the GIL in
        // C for 2.5 s.
        let holder = r#"
import ctypes, os, threading, time
go = threading.Event()
def hold():
    go.wait()
    ctypes.PyDLL('libc.so.6').usleep(2500000)
def value(metric):
    return 1
def metric_init(params):
    threading.Thread(target=hold, daemon=True).start()
    return [{"name": "e2_holder_val", "call_back": value, "value_type": "uint",
             "format": "%u", "slope": "both", "time_max": 60, "units": "", "description": "d"}]
"#;
        let m = counter_module("e2_m", "pass");
        let mut started = start(
            tmp.path(),
            &[("e2_holder", holder), ("e2_m", &m)],
            &[],
            "e2_m",
            Duration::from_millis(500),
        );
        let i = index_of(&started, "e2_m_val");
        let engine = &mut started.engine;
        let mut seen = Seen::default();
        assert_eq!(uint(engine.collect(i, &mut seen)), 1);
        Python::attach(|py| {
            py.import("e2_holder")
                .unwrap()
                .getattr("go")
                .unwrap()
                .call_method0("set")
                .unwrap();
        });
        std::thread::sleep(Duration::from_millis(200));
        // The hold has begun: the call waits its deadline for the GIL, then
        // is withdrawn; the value stays, nobody is stuck.
        let t = Instant::now();
        assert_eq!(uint(engine.collect(i, &mut seen)), 1);
        assert!(
            t.elapsed() < Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(seen.skipped.last(), Some(&(i, Skip::NoGil)));
        assert!(seen.timed_out.is_empty());
        assert_eq!(
            lines_with(&[
                "Python's GIL has not been free",
                "a thread outside modpython's calls"
            ])
            .len(),
            1,
            "{:#?}",
            log_lines()
        );
        // While it lasts, calls are skipped at once.
        let t = Instant::now();
        engine.collect(i, &mut seen);
        assert!(t.elapsed() < Duration::from_millis(50), "{:?}", t.elapsed());
        // After it, the module is called again.
        wait_for_gil();
        std::thread::sleep(Duration::from_millis(50));
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            if uint(engine.collect(i, &mut seen)) >= 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "never called again after the hold"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(lines_with(&["module 'e2_m'", "did not return"]).is_empty());
        engine.cleanup();
    });
}

#[test]
fn a_panic_in_a_call_fails_that_call_and_the_worker_serves_on() {
    on_python_thread(|| {
        modpython::python::start(0).unwrap();
        let targets = Python::attach(|py| {
            let panics =
                PyCFunction::new_closure(py, None, None, |_args, _kwargs| -> PyResult<u32> {
                    panic!("a bug in native code")
                })
                .unwrap();
            let seven = py.eval(c"lambda name: 7", None, None).unwrap();
            std::sync::Arc::new(vec![
                target(py, "p", "p_panics", panics.into_any()),
                target(py, "p", "p_seven", seven),
            ])
        });
        let worker = Worker::spawn(targets, false).unwrap();
        let mut outcomes = Vec::new();
        let end = worker.call_batch(
            &[0, 1],
            Duration::from_secs(1),
            Duration::from_secs(1),
            |i, o, _| {
                outcomes.push((
                    i,
                    match o {
                        Outcome::Value(v) => format!("{v:?}"),
                        Outcome::Failed(f) => f.summary().to_owned(),
                        Outcome::TimedOut(_) => "timeout".into(),
                    },
                ));
            },
        );
        assert!(matches!(end, BatchEnd::Done));
        assert_eq!(outcomes.len(), 2, "{outcomes:?}");
        // pyo3 carries a panic of ours back across Python as a panic; the
        // worker catches it, fails that call alone and keeps serving.
        assert!(
            outcomes[0]
                .1
                .contains("internal error in modpython while making the call"),
            "{outcomes:?}"
        );
        assert_eq!(outcomes[1], (1, "Uint(7)".to_owned()));
        // And the next batch too.
        let mut again = 0;
        let end = worker.call_batch(
            &[1],
            Duration::from_secs(1),
            Duration::from_secs(1),
            |_, _, _| again += 1,
        );
        assert!(matches!(end, BatchEnd::Done) && again == 1);
    });
}

#[test]
fn shutdown_while_a_call_is_stuck_returns_within_the_cleanup_deadline() {
    on_python_thread(|| {
        let tmp = TempDir::new();
        let hog = counter_module("e4_hog", "ctypes.PyDLL('libc.so.6').sleep(4)");
        let mut started = start(
            tmp.path(),
            &[("e4_hog", &hog)],
            &[],
            "e4_",
            Duration::from_millis(500),
        );
        let i = index_of(&started, "e4_hog_val");
        let engine = &mut started.engine;
        let mut seen = Seen::default();
        engine.collect(i, &mut seen);
        assert_eq!(seen.timed_out, vec![i]);
        let t = Instant::now();
        engine.cleanup_within(Duration::from_secs(1));
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(1500),
            "cleanup took {took:?}"
        );
        assert_eq!(
            lines_with(&[
                "metric_cleanup did not return within 1s; gmond goes on without waiting for it"
            ])
            .len(),
            1,
            "{:#?}",
            log_lines()
        );
        wait_for_gil();
    });
}

#[test]
fn a_module_that_resets_the_deadline_signal_does_not_kill_the_process() {
    on_python_thread(|| {
        let tmp = TempDir::new();
        // Its first call resets the signal the watchdog interrupts late
        // inline calls with, then runs late; later calls are just late.
        let reset = counter_module(
            "e6_reset",
            "if n == 1:\n    signal.signal(signal.SIGRTMIN + 3, signal.SIG_DFL)\ntime.sleep(1.5)",
        );
        let mut started = start(
            tmp.path(),
            &[("e6_reset", &reset)],
            &["e6_reset"],
            "e6_",
            Duration::from_millis(300),
        );
        let i = index_of(&started, "e6_reset_val");
        let engine = &mut started.engine;
        let mut seen = Seen::default();
        // The watchdog finds the action changed and puts it back instead of
        // sending a signal that would kill us; this call runs its course.
        engine.collect(i, &mut seen);
        assert_eq!(seen.timed_out, vec![i]);
        assert_eq!(
            lines_with(&["module 'e6_reset'", "replaced the action of signal"]).len(),
            1,
            "{:#?}",
            log_lines()
        );
        // The handler is registered again: the next late call is
        // interrupted at its deadline, not after its 1.5 s sleep.
        let t = Instant::now();
        let mut later = Seen::default();
        // Back-off does not apply yet (two failures).
        engine.collect(i, &mut later);
        assert_eq!(later.timed_out, vec![i]);
        assert!(
            t.elapsed() < Duration::from_millis(1200),
            "{:?}",
            t.elapsed()
        );
        engine.cleanup();
    });
}

#[test]
fn a_fork_in_an_inline_metric_init_does_not_go_on_as_a_second_process() {
    on_python_thread(|| {
        let tmp = TempDir::new();
        let pid_file = tmp.path().join("child.pid");
        let forker = format!(
            r#"
import os
def value(metric):
    return 1
def metric_init(params):
    pid = os.fork()
    if pid:
        open({pid_file:?}, "w").write(str(pid))
    return [{{"name": "e7_fork_val", "call_back": value, "value_type": "uint",
             "format": "%u", "slope": "both", "time_max": 60, "units": "", "description": "d"}}]
"#,
            pid_file = pid_file.display().to_string()
        );
        let mut started = start(
            tmp.path(),
            &[("e7_fork", &forker)],
            &["e7_fork"],
            "e7_",
            Duration::from_secs(1),
        );
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .expect("the parent wrote the child's pid")
            .trim()
            .parse()
            .unwrap();
        // The child came back out of metric_init into the loader, which
        // ends it at once with status 0 (it would otherwise run on as a
        // second copy of this process).
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            let mut status = 0;
            // SAFETY: waitpid on our own child with a valid out-pointer.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the forked child is still running"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "status {status}"
        );
        let i = index_of(&started, "e7_fork_val");
        assert_eq!(uint(started.engine.collect(i, &mut Seen::default())), 1);
        started.engine.cleanup();
    });
}

#[test]
fn an_inline_call_never_waits_for_the_gil_while_a_protected_call_is_stuck() {
    on_python_thread(|| {
        let tmp = TempDir::new();
        // Stuck at its 300 ms deadline while it sleeps with the GIL
        // released; then it holds the GIL in C for 3 s.
        let sly = counter_module(
            "e8_sly",
            "time.sleep(0.45)\nctypes.PyDLL('libc.so.6').sleep(3)",
        );
        let quick = counter_module("e8_quick", "pass");
        let mut started = start(
            tmp.path(),
            &[("e8_quick", &quick), ("e8_sly", &sly)],
            &["e8_quick"],
            "e8_",
            Duration::from_millis(300),
        );
        let sly_i = index_of(&started, "e8_sly_val");
        let quick_i = index_of(&started, "e8_quick_val");
        let engine = &mut started.engine;
        let mut seen = Seen::default();
        engine.collect(sly_i, &mut seen);
        assert_eq!(seen.timed_out, vec![sly_i]);
        // The inline module is called now, while the GIL is still free, and
        // again once the stuck call holds it: neither call may keep this
        // thread longer than a deadline (the stuck call's hold is 3 s).
        let mut longest = Duration::ZERO;
        let until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < until {
            let t = Instant::now();
            engine.collect(quick_i, &mut seen);
            longest = longest.max(t.elapsed());
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            longest < Duration::from_millis(700),
            "an inline call kept the calling thread {longest:?}"
        );
        engine.cleanup();
        wait_for_gil();
    });
}

#[test]
fn module_code_after_the_last_call_of_a_batch_has_a_deadline_too() {
    on_python_thread(|| {
        let tmp = TempDir::new();
        // The call leaves a trace function whose release (when the worker
        // clears the thread's hooks after the batch) takes 2 s.
        let tracer = counter_module(
            "e9_trace",
            "class T:\n    def __call__(self, *a):\n        return None\n    def __del__(self):\n        time.sleep(2)\nimport sys\nsys.settrace(T())",
        );
        let mut started = start(
            tmp.path(),
            &[("e9_trace", &tracer)],
            &[],
            "e9_",
            Duration::from_millis(300),
        );
        let i = index_of(&started, "e9_trace_val");
        let engine = &mut started.engine;
        let t = Instant::now();
        let value = uint(engine.collect(i, &mut Seen::default()));
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "{:?}",
            t.elapsed()
        );
        // The call itself returned in time: its value is used; what hung
        // was the hook's release, and the log says so.
        assert_eq!(value, 1);
        assert_eq!(
            lines_with(&[
                "module 'e9_trace'",
                "code the module left behind after its call of metric 'e9_trace_val'"
            ])
            .len(),
            1,
            "{:#?}",
            log_lines()
        );
        engine.cleanup();
        wait_for_gil();
    });
}

#[test]
fn an_inline_failure_report_that_hangs_meets_the_call_deadline() {
    on_python_thread(|| {
        let tmp = TempDir::new();
        // The call fails quickly, but describing its exception (the
        // traceback asks for its __str__) never ends: that is module code
        // too, and runs under the call's deadline.
        let hangs = r#"
import time
class Stubborn(Exception):
    def __str__(self):
        time.sleep(3600)
        return "never"
def value(metric):
    raise Stubborn()
def metric_init(params):
    return [{"name": "e10_str_val", "call_back": value, "value_type": "uint",
             "format": "%u", "slope": "both", "time_max": 60, "units": "", "description": "d"}]
"#;
        let mut started = start(
            tmp.path(),
            &[("e10_str", hangs)],
            &["e10_str"],
            "e10_",
            Duration::from_millis(300),
        );
        let i = index_of(&started, "e10_str_val");
        let mut seen = Seen::default();
        let t = Instant::now();
        started.engine.collect(i, &mut seen);
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(seen.timed_out, vec![i], "interrupted as a late call");
        started.engine.cleanup();
    });
}

#[test]
fn an_inline_modules_hook_release_meets_the_call_deadline() {
    on_python_thread(|| {
        let tmp = TempDir::new();
        // As the protected case below, inline: the trace function's release
        // after the batch takes 2 s, on gmond's thread.
        let tracer = counter_module(
            "e12_trace",
            "class T:\n    def __call__(self, *a):\n        return None\n    def __del__(self):\n        time.sleep(2)\nimport sys\nsys.settrace(T())",
        );
        let mut started = start(
            tmp.path(),
            &[("e12_trace", &tracer)],
            &["e12_trace"],
            "e12_",
            Duration::from_millis(300),
        );
        let i = index_of(&started, "e12_trace_val");
        let t = Instant::now();
        let value = uint(started.engine.collect(i, &mut Seen::default()));
        assert!(
            t.elapsed() < Duration::from_millis(1200),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(value, 1, "the call itself returned in time");
        started.engine.cleanup();
    });
}

#[test]
fn a_stuck_call_is_not_over_until_its_worker_has_let_go_of_python() {
    on_python_thread(|| {
        let tmp = TempDir::new();
        // e13_p's first call is stuck for a while: every call is in doubt,
        // so e13_s (inline) is called on a worker. Its first call leaves an
        // object in its worker's thread-local storage whose release holds
        // the GIL for 3 s, then runs late: when it returns, its worker ends,
        // and tearing down the thread's Python state releases the object.
        let p = counter_module("e13_p", "if n == 1:\n    time.sleep(1)");
        let s_module = r#"
import ctypes, threading, time
tl = threading.local()
class Heavy:
    def __del__(self):
        ctypes.PyDLL('libc.so.6').usleep(3000000)
calls = 0
def value(metric):
    global calls
    calls += 1
    if calls == 1:
        tl.heavy = Heavy()
        time.sleep(0.6)
    return calls
def metric_init(params):
    return [{"name": "e13_s_val", "call_back": value, "value_type": "uint",
             "format": "%u", "slope": "both", "time_max": 60, "units": "", "description": "d"}]
"#;
        let mut started = start(
            tmp.path(),
            &[("e13_p", &p), ("e13_s", s_module)],
            &["e13_s"],
            "e13_",
            Duration::from_millis(300),
        );
        let p_i = index_of(&started, "e13_p_val");
        let s_i = index_of(&started, "e13_s_val");
        let engine = &mut started.engine;
        let mut seen = Seen::default();
        engine.collect(p_i, &mut seen);
        engine.collect(s_i, &mut seen);
        assert_eq!(seen.timed_out, vec![p_i, s_i]);
        // Until that worker has let go of Python, no call may take the GIL
        // on this thread.
        let mut longest = Duration::ZERO;
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            let t = Instant::now();
            engine.collect(s_i, &mut seen);
            longest = longest.max(t.elapsed());
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            longest < Duration::from_millis(700),
            "a call kept the calling thread {longest:?}"
        );
        engine.cleanup();
        wait_for_gil();
    });
}

#[test]
fn collection_groups_make_one_batch_per_module_and_group() {
    on_python_thread(|| {
        Python::attach(|py| {
            let metrics = [(0, "x_a"), (0, "x_b"), (1, "y_a"), (0, "z_solo")];
            let entries = [
                CollectedMetric {
                    group: 0,
                    name: None,
                    name_match: Some("_a$".into()),
                },
                CollectedMetric {
                    group: 0,
                    name: Some("x_b".into()),
                    name_match: None,
                },
                CollectedMetric {
                    group: 1,
                    name: Some("z".into()),
                    name_match: None,
                },
                CollectedMetric {
                    group: 2,
                    name: Some("z_solo".into()),
                    name_match: None,
                },
            ];
            let plan = collection::plan(py, &metrics, &[], &entries);
            // x_a and x_b: module 0, group 0; y_a: module 1, group 0.
            assert_eq!(plan.batch_of[0], plan.batch_of[1]);
            assert_ne!(plan.batch_of[0], plan.batch_of[2]);
            // z_solo is selected twice (by prefix and by name): called on its own.
            assert_eq!(plan.selected_by[3], 2);
            assert_eq!(plan.batch_of[3], None);
            assert_eq!(plan.selected[0], vec![0, 2]);
            assert!(plan.bad_patterns.is_empty());
        });
    });
}
