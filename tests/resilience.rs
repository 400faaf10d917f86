//! Resilience and security against the real gmond (issue 3): hung handlers
//! (protected and inline mode), recovery, back-off, the host's self metrics,
//! `metric_cleanup` that never returns (SIGTERM and SIGHUP), module threads
//! and output, module-code ownership and modes, dropping privileges
//! (`setuid = yes`), bad handler results and descriptors, and host settings.
//!
//! Every test runs its own small gmond with modules written inline; each
//! module draws its descriptors from `pymod::module`. Collection groups use
//! `collect_every = 1`, `time_threshold = 1`, so the healthy counter
//! `res_tick` advances about once a second while gmond's loop is free.

mod common;
#[path = "common/pymod.rs"]
mod pymod;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::{Gmond, GmondBuilder, TempDir, Xml, secs};
use pymod::{pyconf, setting};

/// How long to wait for the first values of a freshly started gmond.
const FIRST_VALUES: Duration = Duration::from_secs(20);
/// gmond must answer on its XML port this fast, hung handler or not.
const XML_PROMPT: Duration = Duration::from_secs(1);
/// How long a refused module's metric must stay out of the XML once its
/// neighbour's metric is in: three collection rounds (`collect_every = 1`,
/// `time_threshold = 1`, so a collected value is in the XML within a second).
const REFUSED_STAYS_OUT: Duration = Duration::from_secs(3);

fn module(body: &str) -> String {
    pymod::module("resilience", body)
}

/// The first log line containing every needle; fails with the log otherwise.
#[track_caller]
fn line_with(g: &Gmond, needles: &[&str]) -> String {
    g.log()
        .lines()
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .map(String::from)
        .unwrap_or_else(|| g.fail(&format!("no log line contains all of {needles:?}")))
}

/// A metric's current VAL as a number (the metric must be in the XML).
#[track_caller]
fn val(g: &Gmond, name: &str) -> f64 {
    g.metric(name)
        .unwrap_or_else(|| g.fail(&format!("{name} is not in the XML")))
        .val_f64()
}

/// A counter metric's current VAL.
#[track_caller]
fn count(g: &Gmond, name: &str) -> u64 {
    val(g, name) as u64
}

/// Reads the XML once, failing unless gmond answered within [`XML_PROMPT`].
#[track_caller]
fn prompt_xml(g: &Gmond) -> common::Xml {
    let started = Instant::now();
    let x = g.try_xml().unwrap_or_else(|e| g.fail(&e));
    let took = started.elapsed();
    gmond_assert!(
        g,
        took < XML_PROMPT,
        "gmond took {took:?} to answer on its XML port"
    );
    x
}

/// Over `window`, `res_tick` must advance by at least `min`, and every XML
/// read must be prompt. Returns how far it advanced.
#[track_caller]
fn ticks_over(g: &Gmond, window: Duration, min: u64) -> u64 {
    ticks_over_holding(g, window, min, "", |_| true)
}

/// [`ticks_over`], and `holds` must be true of every XML read in the window
/// (one every 200 ms, the last after the window), or the test fails at once
/// naming `what`.
#[track_caller]
fn ticks_over_holding(
    g: &Gmond,
    window: Duration,
    min: u64,
    what: &str,
    mut holds: impl FnMut(&Xml) -> bool,
) -> u64 {
    let first = count(g, "res_tick");
    let started = Instant::now();
    loop {
        let x = prompt_xml(g);
        gmond_assert!(
            g,
            holds(&x),
            "{what:?} stopped holding {:?} into the {window:?} it must hold; XML:\n{}",
            started.elapsed(),
            x.text
        );
        if started.elapsed() >= window {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let advanced = count(g, "res_tick") - first;
    gmond_assert!(
        g,
        advanced >= min,
        "res_tick advanced by {advanced} in {window:?} (expected at least {min}): gmond's collection is stalled"
    );
    advanced
}

/// SIGTERM, then exit status 0 within `timeout`.
#[track_caller]
fn stop(g: &Gmond, timeout: Duration) {
    g.signal(libc::SIGTERM);
    let status = g.wait_exit(timeout);
    gmond_assert!(
        g,
        status.is_some(),
        "gmond still running {timeout:?} after SIGTERM"
    );
    gmond_assert_eq!(g, status.and_then(|s| s.code()), Some(0), "exit status");
}

// ---------------------------------------------------------------------------
// (1), (2), (6): protected mode, hung handlers, self metrics
// ---------------------------------------------------------------------------

/// Each hung module returns a value on its first call and hangs from the
/// second on, each in its own way.
const SLEEP_PY: &str = r#"
_calls = 0

def hang(name):
    global _calls
    _calls += 1
    if _calls > 1:
        time.sleep(3600)
    return 7

def metric_init(params):
    return [desc("res_hang_sleep", hang)]
"#;

const SOCK_PY: &str = r#"
import socket
_a, _b = socket.socketpair()
_calls = 0

def hang(name):
    global _calls
    _calls += 1
    if _calls > 1:
        _a.recv(1)   # nothing is ever sent, and there is no timeout
    return 8

def metric_init(params):
    return [desc("res_hang_sock", hang)]
"#;

const LOCK_PY: &str = r#"
import threading
_lock = threading.Lock()
_calls = 0

def hang(name):
    global _calls
    _calls += 1
    if _calls > 1:
        with _lock:
            with _lock:   # deadlock: a Lock is not re-entrant
                pass
    return 9

def metric_init(params):
    return [desc("res_hang_lock", hang)]
"#;

/// Stuck where no signal reaches it: every signal blocked, then a C sleep.
const NOSIG_PY: &str = r#"
import ctypes, signal
_libc = ctypes.CDLL(None)
_calls = 0

def hang(name):
    global _calls
    _calls += 1
    if _calls > 1:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            _libc.sleep(600)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return 10

def metric_init(params):
    return [desc("res_hang_nosig", hang)]
"#;

const RAISE_PY: &str = r#"
def fail(name):
    raise RuntimeError("res_raise always fails")

def metric_init(params):
    return [desc("res_raise_val", fail)]
"#;

const BROKEN_PY: &str = r#"
import modpython_resilience_no_such_package

def metric_init(params):
    return []
"#;

#[test]
fn protected_hangs_do_not_stall_gmond() {
    let one = setting("call_timeout", "1");
    let hung: [(&str, &str, &str, f64); 4] = [
        // (module, metric, last good value, deadline): res_sleep keeps the
        // host's default deadline of 3 s, the others set 1 s.
        ("res_sleep", "res_hang_sleep", "7", 3.0),
        ("res_sock", "res_hang_sock", "8", 1.0),
        ("res_lock", "res_hang_lock", "9", 1.0),
        ("res_nosig", "res_hang_nosig", "10", 1.0),
    ];
    let g = GmondBuilder::new()
        .module_file("res_tick.py", &module(&pymod::counter("res_tick")))
        .module_file("res_sleep.py", &module(SLEEP_PY))
        .module_file("res_sock.py", &module(SOCK_PY))
        .module_file("res_lock.py", &module(LOCK_PY))
        .module_file("res_nosig.py", &module(NOSIG_PY))
        .module_file("res_raise.py", &module(RAISE_PY))
        .module_file("res_broken.py", &module(BROKEN_PY))
        .pyconf_text(
            "resilience",
            &pyconf(
                &[
                    ("res_tick", ""),
                    ("res_sleep", ""),
                    ("res_sock", &one),
                    ("res_lock", &one),
                    ("res_nosig", &one),
                    ("res_raise", ""),
                    ("res_broken", ""),
                ],
                &["^res_", "^modpython_"],
            ),
        )
        .start();
    let pid = g.pid();

    // First call: a good value each.
    for (_, metric, good, _) in &hung {
        g.wait_metric_where(metric, |m| m.val == *good, FIRST_VALUES);
    }
    // Second call: each hangs. While they do, the XML port answers promptly.
    let started = Instant::now();
    loop {
        prompt_xml(&g);
        let log = g.log();
        if hung
            .iter()
            .all(|(_, m, _, _)| log.contains(&format!("metric '{m}' did not return within")))
        {
            break;
        }
        gmond_assert!(
            g,
            started.elapsed() < secs(20),
            "not every hung call was given up on within 20 s"
        );
        gmond_assert!(g, g.is_running(), "gmond exited");
        thread::sleep(Duration::from_millis(100));
    }
    // Each timeout is logged once, naming module, metric and elapsed time.
    for (module, metric, _, deadline) in &hung {
        let line = line_with(&g, &[&format!("metric '{metric}' did not return within")]);
        gmond_assert!(
            g,
            line.starts_with(&format!("[modpython] error: {}: ", g.module_ref(module))),
            "the timeout line does not name the module and its file: {line}"
        );
        gmond_assert!(
            g,
            line.contains("left to finish in the background"),
            "{line}"
        );
        let elapsed = g.number_in(&line, "within ", "s;");
        gmond_assert!(
            g,
            elapsed >= *deadline && elapsed < deadline + 1.0,
            "{metric}: gave up after {elapsed}s, deadline {deadline}s"
        );
    }

    // Now all four are stuck for good. For 5 s (five collection rounds;
    // a stuck module called again would time out within its 1 s or 3 s
    // deadline, so a second timeout would be logged inside the window) the
    // healthy metric advances on schedule, XML answers promptly, and at
    // every look the hung metrics keep their last good value and are still
    // sent (small TN), and each timeout is logged once.
    ticks_over_holding(
        &g,
        secs(5),
        4,
        "hung metrics keep their values; one timeout each",
        |x| {
            for (_, metric, good, _) in &hung {
                let m = x
                    .metric(metric)
                    .unwrap_or_else(|| g.fail(&format!("{metric} vanished")));
                gmond_assert_eq!(g, m.val, *good, "{metric} lost its last good value");
                gmond_assert!(g, m.tn <= 5, "{metric} is no longer sent (TN {})", m.tn);
                gmond_assert_eq!(
                    g,
                    g.log_count(&format!("metric '{metric}' did not return within")),
                    1,
                    "{metric}'s timeout logged more than once"
                );
            }
            true
        },
    );

    // (6) self metrics: group modpython, sane values.
    let calls = val(&g, "modpython_calls");
    let m = g.wait_metric_where("modpython_res_tick_calls", |m| m.val_f64() >= 5.0, secs(10));
    gmond_assert_eq!(g, m.extras("GROUP"), vec!["modpython"]);
    gmond_assert_eq!(g, m.type_, "uint32");
    gmond_assert_eq!(g, val(&g, "modpython_modules_loaded"), 6.0);
    gmond_assert_eq!(g, val(&g, "modpython_modules_failed"), 1.0);
    for (module, _, _, deadline) in &hung {
        gmond_assert_eq!(g, val(&g, &format!("modpython_{module}_timeouts")), 1.0);
        gmond_assert_eq!(g, val(&g, &format!("modpython_{module}_errors")), 0.0);
        // Time in calls, in whole milliseconds (an RRD COUNTER takes integers).
        let seconds = val(&g, &format!("modpython_{module}_ms")) / 1000.0;
        gmond_assert!(
            g,
            seconds >= *deadline && seconds < deadline + 1.0,
            "modpython_{module}_ms = {seconds}s"
        );
    }
    gmond_assert!(g, count(&g, "modpython_timeouts") >= 4);
    gmond_assert!(g, count(&g, "modpython_res_raise_errors") >= 1);
    gmond_assert!(g, count(&g, "modpython_errors") >= 1);
    gmond_assert_eq!(g, val(&g, "modpython_res_tick_errors"), 0.0);
    gmond_assert_eq!(g, val(&g, "modpython_res_tick_timeouts"), 0.0);
    gmond_assert_eq!(
        g,
        g.metric("modpython_ms")
            .map(|m| (m.type_, m.units, m.slope)),
        Some((
            "uint32".to_string(),
            "ms".to_string(),
            "positive".to_string()
        ))
    );
    gmond_assert!(
        g,
        g.metric("modpython_res_broken_calls").is_none(),
        "a module that failed to load has self metrics"
    );
    g.wait_metric_where("modpython_calls", |m| m.val_f64() > calls, secs(5));

    gmond_assert_eq!(g, g.pid(), pid);
    // Threads stuck in calls do not keep gmond from stopping.
    stop(&g, secs(15));
}

// ---------------------------------------------------------------------------
// (3), (5): recovery from a stuck call, back-off of a failing handler
// ---------------------------------------------------------------------------

const SLOW_PY: &str = r#"
_calls = 0

def slow(name):
    global _calls
    _calls += 1
    if _calls == 2:
        time.sleep(5)
    return _calls

def metric_init(params):
    return [desc("res_slow_val", slow)]
"#;

const FAIL_PY: &str = r#"
_calls = 0

def fail(name):
    global _calls
    _calls += 1
    raise RuntimeError("res_fail fails (call %d)" % _calls)

def calls(name):
    return _calls

def metric_init(params):
    return [desc("res_fail_val", fail), desc("res_fail_calls", calls)]
"#;

const FLAKY_PY: &str = r#"
_calls = 0

def flaky(name):
    global _calls
    _calls += 1
    if _calls <= 2:
        raise ValueError("res_flaky fails (call %d)" % _calls)
    return 5

def metric_init(params):
    return [desc("res_flaky_val", flaky)]
"#;

#[test]
fn stuck_call_recovers_and_failing_handler_backs_off() {
    let g = GmondBuilder::new()
        .host_param("retry_max_interval", "20")
        .module_file("res_tick.py", &module(&pymod::counter("res_tick")))
        .module_file("res_slow.py", &module(SLOW_PY))
        .module_file("res_fail.py", &module(FAIL_PY))
        .module_file("res_flaky.py", &module(FLAKY_PY))
        .pyconf_text(
            "resilience",
            &pyconf(
                &[
                    ("res_tick", ""),
                    ("res_slow", &setting("call_timeout", "1")),
                    ("res_fail", ""),
                    ("res_flaky", ""),
                ],
                &["^res_"],
            ),
        )
        .start();
    // (5) A handler that always fails: three calls, then at most one every
    // 10 s. Its calls so far are res_fail_calls, read while gmond collects
    // every second: over 8 s from its first value, at most 5 calls, and none
    // within 6 s of the third.
    let first_seen = Instant::now();
    g.wait_metric("res_fail_calls", FIRST_VALUES);
    let fail = g.module_ref("res_fail");
    let mut third_seen: Option<Instant> = None;
    while first_seen.elapsed() < secs(8) {
        let calls = count(&g, "res_fail_calls");
        gmond_assert!(
            g,
            calls <= 5,
            "res_fail_val was called {calls} times in {:?}",
            first_seen.elapsed()
        );
        if calls >= 3 {
            let since = *third_seen.get_or_insert_with(Instant::now);
            gmond_assert!(
                g,
                calls == 3 || since.elapsed() >= secs(6),
                "res_fail_val called again {:?} after its third failure",
                since.elapsed()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
    gmond_assert!(
        g,
        third_seen.is_some(),
        "res_fail_val was not called 3 times in 8 s"
    );
    let backoff = line_with(
        &g,
        &[
            &fail,
            "metric 'res_fail_val': 3 failures in a row; it is now called at most every 10s",
        ],
    );
    gmond_assert!(
        g,
        backoff.starts_with("[modpython] warning: ")
            && backoff.contains("backing off to every 20s"),
        "{backoff}"
    );
    gmond_assert_eq!(g, g.log_count("metric 'res_fail_val' failed"), 1);
    gmond_assert_eq!(g, val(&g, "res_fail_val"), 0.0);

    let slow = g.module_ref("res_slow");

    // (3) The second call hangs 5 s: given up on after 1 s, then its return
    // is noticed and the module is called again: the value moves on.
    let timeout = g.wait_line(
        &[&slow, "metric 'res_slow_val' did not return within"],
        secs(10),
    );
    gmond_assert!(
        g,
        (1.0..2.0).contains(&g.number_in(&timeout, "within ", "s;")),
        "{timeout}"
    );
    let returned = g.wait_line(
        &[
            &slow,
            "the stuck call of metric 'res_slow_val' returned after",
            "the module's metrics are called again",
        ],
        secs(15),
    );
    gmond_assert!(
        g,
        returned.starts_with("[modpython] warning: "),
        "{returned}"
    );
    let after = g.number_in(&returned, "returned after ", "s;");
    gmond_assert!(
        g,
        // The call's own run time, not when its return was noticed.
        (4.9..5.6).contains(&after),
        "the 5 s call returned after {after}s?"
    );
    // Call 1 gave 1, call 2 is the stuck one (its 2 becomes the last good
    // value when it returns), then 3, 4, ...
    let v = g
        .wait_metric_where("res_slow_val", |m| m.val_f64() >= 3.0, secs(10))
        .val_f64();
    g.wait_metric_where("res_slow_val", |m| m.val_f64() > v, secs(10));
    gmond_assert_eq!(g, g.log_count("did not return within"), 1);
    gmond_assert_eq!(g, g.log_count("returned after"), 1);

    // A handler that fails twice, then works: recovery is logged.
    gmond_assert_eq!(g, val(&g, "res_flaky_val"), 5.0);
    let flaky = line_with(
        &g,
        &[
            &g.module_ref("res_flaky"),
            "metric 'res_flaky_val' recovered after 2 failed call(s)",
        ],
    );
    gmond_assert!(g, flaky.starts_with("[modpython] warning: "), "{flaky}");
    // Meanwhile the healthy neighbour kept going.
    ticks_over(&g, secs(3), 2);
    gmond_assert!(g, g.is_running());
}

// ---------------------------------------------------------------------------
// (4) inline mode: the watchdog interrupts late calls
// ---------------------------------------------------------------------------

const INLINE_PY: &str = r#"
_calls = 0

def sleepy(name):
    global _calls
    _calls += 1
    if _calls > 1:
        start = time.monotonic()
        try:
            time.sleep(60)
        finally:
            # The module's own clock, not the watchdog's estimate.
            sys.stderr.write("res_inl_sleep ran %.3fs\n" % (time.monotonic() - start))
    return 5

def ok(name):
    return 1

def metric_init(params):
    return [desc("res_inl_sleep", sleepy), desc("res_inl_ok", ok)]
"#;

const INLINE2_PY: &str = r#"
_swallow_calls = 0
_loop_calls = 0

def swallow(name):
    global _swallow_calls
    _swallow_calls += 1
    if _swallow_calls == 1:
        return 6
    try:
        time.sleep(60)
    except Exception:
        pass
    return 99

def spin(name):
    global _loop_calls
    _loop_calls += 1
    if _loop_calls == 1:
        return 7
    while True:
        pass

def metric_init(params):
    return [desc("res_inl_swallow", swallow), desc("res_inl_loop", spin)]
"#;

#[test]
fn inline_mode_interrupts_late_calls() {
    let inline = setting("call_mode", "inline");
    let g = GmondBuilder::new()
        .module_file("res_tick.py", &module(&pymod::counter("res_tick")))
        .module_file("res_inl.py", &module(INLINE_PY))
        .module_file("res_inl2.py", &module(INLINE2_PY))
        .pyconf_text(
            "resilience",
            &pyconf(
                &[
                    ("res_tick", ""),
                    (
                        "res_inl",
                        &format!("{inline}\n    {}", setting("call_timeout", "1")),
                    ),
                    (
                        "res_inl2",
                        &format!("{inline}\n    {}", setting("call_timeout", "0.5")),
                    ),
                ],
                &["^res_"],
            ),
        )
        .start();
    let pid = g.pid();
    for (metric, first) in [
        ("res_inl_sleep", "5"),
        ("res_inl_swallow", "6"),
        ("res_inl_loop", "7"),
    ] {
        g.wait_metric_where(metric, |m| m.val == first, FIRST_VALUES);
    }
    // Each late call is a failure that names the deadline and how long the
    // call ran: interrupted right after its deadline.
    for (module, metric, deadline) in [
        ("res_inl", "res_inl_sleep", 1.0),
        ("res_inl2", "res_inl_swallow", 0.5),
        ("res_inl2", "res_inl_loop", 0.5),
    ] {
        let header = g.wait_line(
            &[
                &format!("[modpython] error: {}: ", g.module_ref(module)),
                &format!("metric '{metric}' failed (gmond keeps its last good value"),
            ],
            secs(15),
        );
        let log = g.log();
        let detail = log
            .split_once(&header)
            .and_then(|(_, rest)| rest.lines().nth(1))
            .unwrap_or_default()
            .to_string();
        let reason = format!("the call ran past its {deadline:.1}s deadline (");
        gmond_assert!(
            g,
            detail.contains(&reason) && detail.contains("s) and was interrupted"),
            "{metric}: the line after the failure is {detail:?}, expected {reason:?}"
        );
        let ran = g.number_in(&detail, "deadline (", "s)");
        gmond_assert!(
            g,
            ran >= deadline && ran < deadline + 1.0,
            "{metric} ran {ran}s with a {deadline}s deadline"
        );
    }
    // How long the call really ran, by the module's own clock: interrupted
    // at its deadline, and at most half a deadline later (the watchdog,
    // which reads no clock per call, may see a call start late by up to a
    // quarter of its deadline or half the shortest one, 0.25 s here).
    let line = g.wait_line(&["res_inl_sleep ran "], secs(15));
    let ran = g.number_in(&line, "res_inl_sleep ran ", "s");
    gmond_assert!(
        g,
        (1.0..1.5).contains(&ran),
        "res_inl_sleep really ran {ran}s with a 1s deadline"
    );
    // Back-off takes the late handlers out of most rounds; gmond collects on.
    for metric in ["res_inl_sleep", "res_inl_swallow", "res_inl_loop"] {
        g.wait_line(
            &[&format!("metric '{metric}': 3 failures in a row")],
            secs(15),
        );
    }
    // For 4 s (four collection rounds, right after each late handler's
    // third failure) res_tick advances, and every look finds the kept
    // values and a log with no call that could not be interrupted and no
    // word about the healthy metric.
    ticks_over_holding(
        &g,
        secs(4),
        3,
        "late inline metrics keep their values; no uninterrupted call",
        |x| {
            for (metric, kept) in [
                ("res_inl_sleep", "5"),
                ("res_inl_swallow", "6"),
                ("res_inl_loop", "7"),
                ("res_inl_ok", "1"),
            ] {
                gmond_assert_eq!(
                    g,
                    x.metric(metric).map(|m| m.val.clone()),
                    Some(kept.to_string()),
                    "{metric}"
                );
            }
            let log = g.log();
            gmond_assert!(
                g,
                !log.contains("did not return within") && !log.contains("cannot be interrupted"),
                "inline calls were not interrupted"
            );
            gmond_assert!(
                g,
                !log.contains("res_inl_ok"),
                "the healthy inline metric is reported"
            );
            true
        },
    );
    gmond_assert_eq!(g, g.pid(), pid);
    stop(&g, secs(10));
}

// ---------------------------------------------------------------------------
// (6), (12): self metrics off; unknown settings reported
// ---------------------------------------------------------------------------

#[test]
fn self_metrics_off_and_unknown_settings_reported() {
    let g = GmondBuilder::new()
        .host_param("self_metrics", "no")
        .host_param("call_timout", "5")
        .module_file("res_tick.py", &module(&pymod::counter("res_tick")))
        .pyconf_text(
            "resilience",
            &pyconf(
                &[("res_tick", &setting("call_tmeout", "2"))],
                &["^res_", "^modpython_"],
            ),
        )
        .start();
    g.wait_metric_where("res_tick", |m| m.val_f64() >= 2.0, FIRST_VALUES);
    let names: Vec<String> = g
        .xml()
        .metric_names()
        .into_iter()
        .map(String::from)
        .collect();
    gmond_assert_eq!(g, names, vec!["res_tick".to_string()]);
    let host = line_with(&g, &["unknown host setting 'call_timout'"]);
    gmond_assert!(
        g,
        host.starts_with("[modpython] warning: ")
            && host.contains("python_module block")
            && host.contains("call_timeout"),
        "{host}"
    );
    let per_module = line_with(&g, &[&g.module_ref("res_tick"), "modpython.call_tmeout"]);
    gmond_assert!(
        g,
        per_module.contains("unknown per-module setting"),
        "{per_module}"
    );
    gmond_assert!(g, !g.log().contains("[modpython] error"), "host error");
    stop(&g, secs(10));
}

// ---------------------------------------------------------------------------
// (7) metric_cleanup that never returns
// ---------------------------------------------------------------------------

const HANGCLEAN_PY: &str = r#"
_start = time.time()

def started(name):
    return int(_start)

def metric_init(params):
    return [desc("res_hc_started", started)]

def metric_cleanup():
    time.sleep(3600)
"#;

fn hangclean_gmond() -> Gmond {
    let g = GmondBuilder::new()
        .module_file("res_hangclean.py", &module(HANGCLEAN_PY))
        .pyconf_text("resilience", &pyconf(&[("res_hangclean", "")], &["^res_"]))
        .start();
    g.wait_metric("res_hc_started", FIRST_VALUES);
    g
}

#[track_caller]
fn cleanup_abandoned(g: &Gmond) {
    let line = line_with(
        g,
        &[&format!(
            "[modpython] error: {}: metric_cleanup did not return within 10s; gmond goes on without waiting for it",
            g.module_ref("res_hangclean")
        )],
    );
    gmond_assert_eq!(g, g.log_count("metric_cleanup did not return"), 1, "{line}");
}

#[test]
fn hung_cleanup_does_not_block_sigterm() {
    let g = hangclean_gmond();
    let sent = Instant::now();
    g.signal(libc::SIGTERM);
    let status = g.wait_exit(secs(15));
    let took = sent.elapsed();
    gmond_assert!(
        g,
        status.is_some(),
        "gmond still running 15 s after SIGTERM"
    );
    cleanup_abandoned(&g);
    gmond_assert!(
        g,
        took >= secs(9),
        "exited after {took:?}: was cleanup called?"
    );
    gmond_assert_eq!(
        g,
        status.and_then(|s| s.code()),
        Some(0),
        "exit status after SIGTERM with a metric_cleanup that never returns"
    );
}

#[test]
fn hung_cleanup_does_not_block_sighup() {
    let g = hangclean_gmond();
    let first = val(&g, "res_hc_started");
    let pid = g.pid();
    // The module's start time changes once gmond has re-executed.
    thread::sleep(Duration::from_millis(1100));
    g.signal(libc::SIGHUP);
    g.wait_metric_where("res_hc_started", |m| m.val_f64() > first, secs(25));
    cleanup_abandoned(&g);
    gmond_assert_eq!(g, g.pid(), pid);
    gmond_assert!(g, !g.log().contains("execve failed"));
}

// ---------------------------------------------------------------------------
// (8) non-daemon threads and output
// ---------------------------------------------------------------------------

const NONDAEMON_PY: &str = r#"
import threading

def _forever():
    while True:
        time.sleep(0.1)

def alive(name):
    return 1

def metric_init(params):
    threading.Thread(target=_forever, name="res-nondaemon", daemon=False).start()
    return [desc("res_nd_alive", alive)]
"#;

const CHATTY_PY: &str = r#"
def chatty(name):
    print("res_chatty handler to stdout")
    print("res_chatty handler to stderr", file=sys.stderr)
    sys.stdout.write("res_chatty no newline ")
    return 3

def metric_init(params):
    print("res_chatty init to stdout")
    print("res_chatty init to stderr", file=sys.stderr)
    return [desc("res_chatty_val", chatty)]

def metric_cleanup():
    print("res_chatty cleanup to stderr", file=sys.stderr)
    os.write(1, b"res_chatty raw write to fd 1\n")
"#;

#[test]
fn nondaemon_threads_and_output_are_harmless() {
    let g = GmondBuilder::new()
        .module_file("res_tick.py", &module(&pymod::counter("res_tick")))
        .module_file("res_nondaemon.py", &module(NONDAEMON_PY))
        .module_file("res_chatty.py", &module(CHATTY_PY))
        .pyconf_text(
            "resilience",
            &pyconf(
                &[("res_tick", ""), ("res_nondaemon", ""), ("res_chatty", "")],
                &["^res_"],
            ),
        )
        .start();
    gmond_assert_eq!(g, g.wait_metric("res_nd_alive", FIRST_VALUES).val, "1");
    gmond_assert_eq!(g, g.wait_metric("res_chatty_val", FIRST_VALUES).val, "3");
    g.wait_metric_where("res_tick", |m| m.val_f64() >= 3.0, FIRST_VALUES);
    for text in ["res_chatty init to stderr", "res_chatty handler to stderr"] {
        let line = line_with(&g, &[text]);
        gmond_assert!(
            g,
            line.contains("[res_chatty]"),
            "module output is not tagged with the module: {line}"
        );
    }
    gmond_assert!(g, !g.log().contains("[modpython] error"), "host error");
    stop(&g, secs(10));
    gmond_assert!(g, g.log().contains("res_chatty cleanup to stderr"));
}

// ---------------------------------------------------------------------------
// (9) who may own module code
// ---------------------------------------------------------------------------

const OWNED_PY: &str = r#"
def one(name):
    return 1

def metric_init(params):
    return [desc(params["metric"], one)]
"#;

fn nobody_ids() -> (u32, u32) {
    // SAFETY: getpwnam with a NUL-terminated name; the result is read at once.
    unsafe {
        let pw = libc::getpwnam(c"nobody".as_ptr());
        assert!(!pw.is_null(), "no user nobody on this machine");
        ((*pw).pw_uid, (*pw).pw_gid)
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn chown_nobody(path: &Path) {
    let (uid, gid) = nobody_ids();
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

/// A module dir of our own (the harness's is made inside `start()`), with
/// `res_mine` and `res_theirs`.
fn owned_dir() -> (TempDir, std::path::PathBuf) {
    let tmp = TempDir::new();
    let dir = tmp.path().join("pymodules");
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o755);
    for m in ["res_mine", "res_theirs"] {
        let file = dir.join(format!("{m}.py"));
        std::fs::write(&file, module(OWNED_PY)).unwrap();
        chmod(&file, 0o644);
    }
    (tmp, dir)
}

fn owned_gmond(dir: &Path, strict: Option<&str>) -> Gmond {
    let metric = |m: &str| format!("param metric {{ value = \"{m}_val\" }}");
    let mut b = GmondBuilder::new()
        .module_params(&dir.display().to_string())
        .pyconf_text(
            "resilience",
            &pyconf(
                &[
                    ("res_mine", &metric("res_mine")),
                    ("res_theirs", &metric("res_theirs")),
                ],
                // The host's own metrics too: a refused directory must
                // still show in monitoring.
                &["^res_", "^modpython_"],
            ),
        );
    if let Some(strict) = strict {
        b = b.host_param("strict_permissions", strict);
    }
    b.start()
}

#[test]
fn writable_module_dir_is_refused() {
    let (_tmp_g, dir_g) = owned_dir();
    let (_tmp_o, dir_o) = owned_dir();
    chmod(&dir_g, 0o775);
    chmod(&dir_o, 0o757);
    // Both gmonds run at once.
    let runs = [
        (owned_gmond(&dir_g, None), &dir_g, "its group (mode 775)"),
        (owned_gmond(&dir_o, None), &dir_o, "others (mode 757)"),
    ];
    for (g, dir, who) in &runs {
        let dir = dir.display().to_string();
        // The host starts without modules and counts both as failed.
        refused_but_counted(g);
        let line = line_with(
            g,
            &["[modpython] error: ", "refusing to load Python modules"],
        );
        gmond_assert!(
            g,
            line.contains(&format!("{dir} is writable by {who}"))
                && line.contains(&format!("(chmod go-w {dir})"))
                && line.contains("strict_permissions"),
            "{line}"
        );
        gmond_assert!(g, g.is_running(), "gmond exited");
        let x = g.xml();
        gmond_assert!(
            g,
            x.metric("res_mine_val").is_none() && x.metric("res_theirs_val").is_none(),
            "a module was loaded from a writable directory"
        );
    }
}

/// A refused module directory: the host still initialises, publishes its
/// own metrics, and counts the two configured modules as failed.
#[track_caller]
fn refused_but_counted(g: &Gmond) {
    let failed = g.wait_metric("modpython_modules_failed", secs(20));
    gmond_assert_eq!(g, failed.val, "2", "modpython_modules_failed");
    gmond_assert_eq!(
        g,
        g.wait_metric("modpython_modules_loaded", secs(5)).val,
        "0"
    );
    gmond_assert!(
        g,
        !g.log()
            .contains("Module python_module failed to initialize"),
        "the host itself failed"
    );
    g.wait_line(
        &[
            "refusing to load Python modules",
            "none of the 2 configured module(s) is loaded",
        ],
        secs(5),
    );
}

/// Any module can import any file of the directory (helpers, and the
/// bytecode Python caches in `__pycache__`), as root: a writable one makes
/// the whole directory untrusted.
#[test]
fn writable_helper_or_bytecode_cache_is_refused() {
    let (_tmp_h, dir_h) = owned_dir();
    let helper = dir_h.join("res_helper.py");
    std::fs::write(&helper, "VALUE = 1\n").unwrap();
    chmod(&helper, 0o666);
    let (_tmp_c, dir_c) = owned_dir();
    let cache = dir_c.join("__pycache__");
    std::fs::create_dir(&cache).unwrap();
    chmod(&cache, 0o777);
    let runs = [
        (owned_gmond(&dir_h, None), helper.display().to_string()),
        (owned_gmond(&dir_c, None), cache.display().to_string()),
    ];
    for (g, path) in &runs {
        refused_but_counted(g);
        let line = line_with(
            g,
            &["[modpython] error: ", "refusing to load Python modules"],
        );
        gmond_assert!(
            g,
            line.contains(&format!("{path} is writable by")) && line.contains("chmod go-w"),
            "{line}"
        );
        gmond_assert!(g, g.is_running(), "gmond exited");
        gmond_assert!(
            g,
            g.xml().metric("res_mine_val").is_none(),
            "a module was loaded"
        );
    }
}

#[test]
fn module_owned_by_another_user_is_refused() {
    let (_tmp, dir) = owned_dir();
    let theirs = dir.join("res_theirs.py");
    chown_nobody(&theirs);
    let (nobody, _) = nobody_ids();
    let g = owned_gmond(&dir, None);
    gmond_assert_eq!(g, g.wait_metric("res_mine_val", FIRST_VALUES).val, "1");
    let line = line_with(&g, &[&mref_in(&dir, "res_theirs"), "not imported"]);
    gmond_assert!(
        g,
        line.starts_with("[modpython] error: ")
            && line.contains(&format!(
                "{} is owned by uid {nobody}, not by root or gmond's user",
                theirs.display()
            ))
            && line.contains(&format!("(chown root {})", theirs.display())),
        "{line}"
    );
    // Refused at load: had it been loaded anyway, its metric would be
    // collected every second like res_mine_val, which is already there.
    g.hold_for(
        REFUSED_STAYS_OUT,
        "res_theirs_val stays out of the XML",
        |x| x.metric("res_theirs_val").is_none(),
    );
    gmond_assert!(
        g,
        line_with(&g, &["Python module(s) loaded from"]).contains("1 module(s) failed: res_theirs")
    );
    gmond_assert!(g, !g.log().contains(&mref_in(&dir, "res_mine")));
    stop(&g, secs(10));
}

#[test]
fn strict_permissions_no_only_warns() {
    let (_tmp, dir) = owned_dir();
    chmod(&dir, 0o777);
    let theirs = dir.join("res_theirs.py");
    chown_nobody(&theirs);
    let g = owned_gmond(&dir, Some("no"));
    gmond_assert_eq!(g, g.wait_metric("res_mine_val", FIRST_VALUES).val, "1");
    gmond_assert_eq!(g, g.wait_metric("res_theirs_val", FIRST_VALUES).val, "1");
    let dir_line = line_with(&g, &[&format!("{} is writable by", dir.display())]);
    gmond_assert!(
        g,
        dir_line.starts_with("[modpython] warning: "),
        "{dir_line}"
    );
    let file_line = line_with(&g, &[&format!("{} is owned by uid", theirs.display())]);
    gmond_assert!(
        g,
        file_line.starts_with(&format!(
            "[modpython] warning: {}: ",
            mref_in(&dir, "res_theirs")
        )),
        "{file_line}"
    );
    gmond_assert!(g, !g.log().contains("[modpython] error"), "host error");
    stop(&g, secs(10));
}

fn mref_in(dir: &Path, module: &str) -> String {
    format!(
        "module '{module}' ({})",
        dir.join(format!("{module}.py")).display()
    )
}

// ---------------------------------------------------------------------------
// (10) setuid: handlers run unprivileged, SIGHUP re-runs init as gmond's user
// ---------------------------------------------------------------------------

const PRIV_PY: &str = r#"
_init_euid = None

def init_euid(name):
    return _init_euid

def euid(name):
    return os.geteuid()

def metric_init(params):
    global _init_euid
    _init_euid = os.geteuid()
    return [desc("res_priv_init_euid", init_euid), desc("res_priv_euid", euid)]
"#;

#[test]
fn handlers_run_as_gmonds_user_after_setuid_and_sighup() {
    let (nobody, _) = nobody_ids();
    let nobody_val = nobody.to_string();
    // After SIGHUP gmond re-executes itself as nobody and loads the .so
    // again: it must be where nobody can read it (a checkout under /root,
    // as on a fresh CI machine, is not).
    let (_so_dir, so) = common::host_readable_by_all();
    let g = GmondBuilder::new()
        .setuid_user("nobody")
        .so_path(&so)
        .module_file("res_tick.py", &module(&pymod::counter("res_tick")))
        .module_file("res_priv.py", &module(PRIV_PY))
        .pyconf_text(
            "resilience",
            &pyconf(&[("res_tick", ""), ("res_priv", "")], &["^res_"]),
        )
        .start();
    let pid = g.pid();
    // init ran as root; handlers run after gmond dropped to nobody.
    gmond_assert_eq!(
        g,
        g.wait_metric("res_priv_init_euid", FIRST_VALUES).val,
        "0"
    );
    gmond_assert_eq!(
        g,
        g.wait_metric("res_priv_euid", FIRST_VALUES).val,
        nobody_val
    );
    gmond_assert!(g, !g.log().contains("[modpython] error"), "host error");

    // SIGHUP: gmond re-executes itself as nobody; init runs as nobody, the
    // root-owned 0644 module files are still trusted, metrics come back.
    g.signal(libc::SIGHUP);
    g.wait_metric_where("res_priv_init_euid", |m| m.val == nobody_val, secs(25));
    gmond_assert_eq!(
        g,
        g.wait_metric("res_priv_euid", FIRST_VALUES).val,
        nobody_val
    );
    let first = val(&g, "res_tick");
    g.wait_metric_where("res_tick", |m| m.val_f64() > first, secs(10));
    gmond_assert!(g, !g.log().contains("[modpython] error"), "host error");
    gmond_assert!(g, !g.log().contains("execve failed"));
    gmond_assert!(g, g.is_running());
    gmond_assert_eq!(g, g.pid(), pid);
    stop(&g, secs(10));
}

// ---------------------------------------------------------------------------
// (11) bad handler results, descriptors, exits in init and cleanup
// (complementing tests/isolation.rs)
// ---------------------------------------------------------------------------

const VALUES_PY: &str = r#"
def const(v):
    return lambda name: v

def metric_init(params):
    return [
        desc("res_v_inf", const(float("inf")), "double"),
        desc("res_v_ninf", const(float("-inf")), "double"),
        desc("res_v_u32", const(2**32)),
        desc("res_v_i31", const(2**31), "int"),
        desc("res_v_ffe", const(b"\xff\xfe"), "string", slope="zero"),
        desc("res_v_surr", const("\ud800"), "string", slope="zero"),
        desc("res_v_long", const("x" * 200), "string", slope="zero"),
        desc("res_v_umax", const(2**32 - 1)),
        desc("res_v_imin", const(-2**31), "int"),
        desc("res_v_ok", const(42)),
    ]
"#;

const DESC_PY: &str = r#"
def one(name):
    return 1

def text(name):
    return "hello"

def metric_init(params):
    misspelt = desc("res_d_misspelt", one)
    misspelt["valu_type"] = misspelt.pop("value_type")
    return [
        misspelt,
        desc("res_d_slope", one, slope="sideways"),
        desc("res_d_strfmt", text, "string", format="%d", slope="zero"),
        desc("res_d_" + "n" * 294, one),
        desc("res_d_ok", one),
    ]
"#;

/// `body` raises in metric_init; the module also has a metric_cleanup.
fn init_raises(body: &str) -> String {
    module(&format!(
        "def metric_init(params):\n    {body}\n\ndef metric_cleanup():\n    pass\n"
    ))
}

/// A module whose metric works and whose metric_cleanup does `body`.
fn cleanup_raises(metric: &str, body: &str) -> String {
    module(&format!(
        "def one(name):\n    return 1\n\ndef metric_init(params):\n    return [desc(\"{metric}\", one)]\n\n\
         def metric_cleanup():\n    {body}\n"
    ))
}

#[test]
fn bad_results_descriptors_and_exits() {
    let inits = [
        ("res_ie_exit", "sys.exit(2)", "SystemExit: 2"),
        (
            "res_ie_sysexit",
            "raise SystemExit(\"bye\")",
            "SystemExit: bye",
        ),
        ("res_ie_kbd", "raise KeyboardInterrupt", "KeyboardInterrupt"),
    ];
    let cleanups = [
        (
            "res_ce_exit",
            "res_ce_exit_val",
            "sys.exit(1)",
            "SystemExit: 1",
        ),
        (
            "res_ce_sysexit",
            "res_ce_sysexit_val",
            "raise SystemExit(\"later\")",
            "SystemExit: later",
        ),
        (
            "res_ce_kbd",
            "res_ce_kbd_val",
            "raise KeyboardInterrupt(\"ctrl-c\")",
            "KeyboardInterrupt: ctrl-c",
        ),
    ];
    let mut b = GmondBuilder::new()
        .module_file("res_tick.py", &module(&pymod::counter("res_tick")))
        .module_file("res_values.py", &module(VALUES_PY))
        .module_file("res_desc.py", &module(DESC_PY));
    let mut blocks: Vec<(&str, &str)> =
        vec![("res_tick", ""), ("res_values", ""), ("res_desc", "")];
    for (m, body, _) in &inits {
        b = b.module_file(&format!("{m}.py"), &init_raises(body));
        blocks.push((m, ""));
    }
    for (m, metric, body, _) in &cleanups {
        b = b.module_file(&format!("{m}.py"), &cleanup_raises(metric, body));
        blocks.push((m, ""));
    }
    let g = b
        .pyconf_text("resilience", &pyconf(&blocks, &["^res_"]))
        .start();
    let pid = g.pid();

    // Values: errors give zero/empty (no good value yet), sanitised text is
    // published, boundary values are exact.
    let expected = [
        ("res_v_inf", "0.000000"),
        ("res_v_ninf", "0.000000"),
        ("res_v_u32", "0"),
        ("res_v_i31", "0"),
        ("res_v_ffe", "??"),
        ("res_v_surr", "?"),
        ("res_v_umax", "4294967295"),
        ("res_v_imin", "-2147483648"),
        ("res_v_ok", "42"),
        ("res_d_slope", "1"),
        ("res_d_strfmt", "hello"),
        ("res_d_ok", "1"),
    ];
    let long = "x".repeat(63);
    for (name, v) in expected {
        gmond_assert_eq!(g, g.wait_metric(name, FIRST_VALUES).val, v, "VAL of {name}");
    }
    gmond_assert_eq!(g, g.wait_metric("res_v_long", FIRST_VALUES).val, long);
    for (_, metric, _, _) in &cleanups {
        gmond_assert_eq!(g, g.wait_metric(metric, FIRST_VALUES).val, "1");
    }
    gmond_assert_eq!(g, g.metric("res_d_slope").unwrap().slope, "both");

    let values = g.module_ref("res_values");
    let no_good = "failed (gmond publishes ";
    for (metric, reason) in [
        ("res_v_inf", "inf cannot be published as a double metric"),
        ("res_v_ninf", "-inf cannot be published as a double metric"),
        ("res_v_u32", "4294967296 is outside the uint range"),
        ("res_v_i31", "2147483648 is outside the int range"),
    ] {
        let header = line_with(
            &g,
            &[
                &format!("[modpython] error: {values}: metric '{metric}' "),
                no_good,
            ],
        );
        let log = g.log();
        let detail = log
            .split_once(&header)
            .and_then(|(_, rest)| rest.lines().nth(1))
            .unwrap_or_default();
        gmond_assert!(
            g,
            detail.contains(reason),
            "{metric}: {detail:?}, expected {reason:?}"
        );
    }

    let d = g.module_ref("res_desc");
    let no_type = line_with(&g, &[&d, "metric 'res_d_misspelt'", "no 'value_type' key"]);
    gmond_assert!(
        g,
        no_type.starts_with("[modpython] error: ") && no_type.contains("the metric is skipped"),
        "{no_type}"
    );
    line_with(
        &g,
        &[
            &format!("[modpython] warning: {d}: metric 'res_d_slope'"),
            "slope 'sideways' is not one of",
            "using 'both'",
        ],
    );
    line_with(
        &g,
        &[
            &format!("[modpython] warning: {d}: metric 'res_d_strfmt'"),
            "format '%d' does not suit a string metric",
            "using '%s'",
        ],
    );
    line_with(
        &g,
        &[
            &format!("[modpython] error: {d}: descriptor 3: name 'res_d_nnn"),
            "is 300 bytes long; gmetad's limit is 251; the metric is skipped",
        ],
    );

    for (m, _, exc) in &inits {
        let header = line_with(
            &g,
            &[&format!(
                "[modpython] error: {}: metric_init raised an exception; the module is skipped",
                g.module_ref(m)
            )],
        );
        let log = g.log();
        let block = log.split_once(&header).map(|(_, r)| r).unwrap_or_default();
        let body: Vec<&str> = block
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with("[modpython]   "))
            .collect();
        gmond_assert!(
            g,
            body.iter().any(|l| l.contains(exc)),
            "{m}: no {exc:?} in the traceback {body:?}"
        );
    }

    // For 3 s more (three collection rounds), at every look: all still
    // there with the same values, nothing refused showed up, gmond alive.
    ticks_over_holding(
        &g,
        secs(3),
        2,
        "values kept; refused descriptors absent",
        |x| {
            for (name, v) in expected {
                gmond_assert_eq!(
                    g,
                    x.metric(name).map(|m| m.val.clone()),
                    Some(v.to_string()),
                    "{name}"
                );
            }
            gmond_assert!(
                g,
                x.metric_names()
                    .iter()
                    .all(|n| !n.starts_with("res_d_n") && *n != "res_d_misspelt"),
                "a refused descriptor is in the XML"
            );
            true
        },
    );
    gmond_assert_eq!(g, g.pid(), pid);

    // Exits and interrupts in metric_cleanup are reported; gmond exits 0.
    stop(&g, secs(10));
    for (m, _, _, exc) in &cleanups {
        let header = line_with(
            &g,
            &[&format!(
                "[modpython] error: {}: metric_cleanup raised an exception",
                g.module_ref(m)
            )],
        );
        let log = g.log();
        let block = log.split_once(&header).map(|(_, r)| r).unwrap_or_default();
        gmond_assert!(
            g,
            block
                .lines()
                .skip(1)
                .take_while(|l| l.starts_with("[modpython]   "))
                .any(|l| l.contains(exc)),
            "{m}: no {exc:?} after {header}"
        );
    }

    // The descriptor that lost its value_type to a typo says so: the error
    // above, plus a hint naming the misspelt key.
    let misspelt = line_with(
        &g,
        &[
            &g.module_ref("res_desc"),
            "metric 'res_d_misspelt'",
            "'valu_type' looks like a misspelling of 'value_type'",
        ],
    );
    gmond_assert!(
        g,
        misspelt.starts_with("[modpython] warning: "),
        "{misspelt}"
    );
}
