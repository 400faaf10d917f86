//! Adversarial modules: faulty or hostile Python code that the other suites
//! (`isolation.rs`, `resilience.rs`, `tests/fixtures/broken`) do not try.
//! The promise under test: such modules cannot stall, crash or subvert
//! gmond; they get no made-up values; every problem is logged naming the
//! module, its file and the metric; every other metric stays correct; and
//! gmond still exits 0 on SIGTERM.
//!
//! Each test runs one small gmond with a healthy neighbour (`adv_ok`, whose
//! `adv_tick` counts its own calls, collected every second) next to the
//! saboteurs. Every test here began as a host bug this file found; they
//! now guard the fixes.
//!
//! Documented limitations — things no in-process host can prevent, so there
//! is no test for them:
//!
//! * `os._exit()`, `os.abort()`, `os.kill(os.getpid(), SIGKILL)` (or any
//!   fatal signal sent on purpose with `os.kill` / `signal.pthread_kill`),
//!   `faulthandler.dump_traceback_later(…, exit=True)`;
//! * writing into `/proc/self/mem`, `ctypes` pokes into gmond's memory,
//!   loading a C extension that corrupts the heap;
//! * closing or `dup2`-ing over gmond's descriptors (`os.closerange(0,
//!   1024)`, `os.close(1)`): its sockets and log go away;
//! * `os.setuid()` / `os.setgid()` / `os.chroot()` while gmond still runs as
//!   root: the whole process changes identity;
//! * `resource.setrlimit` on `RLIMIT_NOFILE` / `RLIMIT_AS` / `RLIMIT_STACK`
//!   (gmond then cannot accept connections or allocate), and unbounded
//!   memory use (the kernel's OOM killer decides; a `MemoryError` is caught);
//! * replacing interpreter-wide state other modules rely on (`builtins`,
//!   `sys.modules` entries, `sys.setswitchinterval`): all modules share one
//!   interpreter, so a module can break its neighbours' Python code;
//! * `sys.setrecursionlimit(huge)` followed by very deep recursion: CPython
//!   itself overflows the C stack of any thread (the host's threads have
//!   16 MiB, twice a main thread's);
//! * a module whose import or `metric_init` holds the GIL forever in C
//!   code: `init_timeout` lets gmond go on, but every Python module waits
//!   for the GIL behind it.

mod common;
#[path = "common/pymod.rs"]
mod pymod;

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::{Gmond, GmondBuilder, secs};
use pymod::{pyconf, setting};

/// How long to wait for the first values of a freshly started gmond.
const FIRST_VALUES: Duration = Duration::from_secs(20);

/// The healthy neighbour. Its init says so on stderr (a warning line), so a
/// SIGHUP re-exec can be counted.
const OK_PY: &str = r#"
_n = 0

def tick(name):
    global _n
    _n += 1
    return _n

def metric_init(params):
    sys.stderr.write("adv_ok init\n")
    return [desc("adv_tick", tick, slope="positive")]
"#;

const OK_INIT_LINE: &str = "[modpython] warning: [adv_ok] adv_ok init";

fn module(body: &str) -> String {
    pymod::module("adversarial", body)
}

/// Starts gmond with `adv_ok` plus `modules` (name → body, PRELUDE added),
/// each in its own block with the given extra lines, collecting `patterns`
/// and `adv_tick`.
fn start(modules: &[(&str, &str, &str)], patterns: &[&str], host: &[(&str, &str)]) -> Gmond {
    let mut b = GmondBuilder::new().module_file("adv_ok.py", &module(OK_PY));
    let mut blocks = vec![("adv_ok", "")];
    for (name, extra, body) in modules {
        b = b.module_file(&format!("{name}.py"), &module(body));
        blocks.push((name, extra));
    }
    for (k, v) in host {
        b = b.host_param(k, v);
    }
    let mut all = vec!["^adv_tick$"];
    all.extend_from_slice(patterns);
    b.pyconf_text("adversarial", &pyconf(&blocks, &all)).start()
}

/// The failure report of `metric` of `module`: its header line and the
/// indented lines (reason or traceback) after it. Waits for it.
#[track_caller]
fn failure(g: &Gmond, module: &str, metric: &str) -> String {
    let header = g.wait_line(
        &[&format!(
            "[modpython] error: {}: metric '{metric}' failed",
            g.module_ref(module)
        )],
        FIRST_VALUES,
    );
    let log = g.log();
    let rest = log.split_once(&header).map(|(_, r)| r).unwrap_or_default();
    let body: Vec<&str> = rest
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("[modpython]   "))
        .collect();
    format!("{header}\n{}", body.join("\n"))
}

/// `adv_tick`'s current value, if it is in the XML.
fn tick(g: &Gmond) -> Option<u64> {
    g.try_xml()
        .ok()
        .and_then(|x| x.metric("adv_tick").map(|m| m.val_f64() as u64))
}

/// `adv_tick` must advance by at least `min` within `window`: gmond's
/// collection is not stalled and the neighbour is still being called.
#[track_caller]
fn ticking(g: &Gmond, window: Duration, min: u64) {
    let first = g.wait_metric("adv_tick", FIRST_VALUES).val_f64() as u64;
    let deadline = Instant::now() + window;
    loop {
        if let Some(status) = g.try_status() {
            g.fail(&format!(
                "gmond exited ({status}) while adv_tick was watched"
            ));
        }
        let now = tick(g).unwrap_or(first);
        if now >= first + min {
            return;
        }
        if Instant::now() >= deadline {
            g.fail(&format!(
                "adv_tick went from {first} to {now} in {window:?} (expected +{min}): the healthy neighbour is stalled"
            ));
        }
        thread::sleep(Duration::from_millis(100));
    }
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

/// No log line blames the healthy neighbour.
#[track_caller]
fn neighbour_not_blamed(g: &Gmond) {
    let blamed = format!("[modpython] error: {}", g.module_ref("adv_ok"));
    gmond_assert!(
        g,
        !g.log().lines().any(|l| l.starts_with(&blamed)),
        "the healthy module adv_ok was blamed for another module's doing"
    );
}

// ---------------------------------------------------------------------------
// Regression tests: what the host already gets right
// ---------------------------------------------------------------------------

const CALLABLES_PY: &str = r#"
import functools, threading

class FloatRaises:
    def __float__(self): raise ValueError("no float for you")
    def __str__(self): raise ValueError("no str either")

class FloatWrong:
    def __float__(self): return "seven"

class IndexOnly:
    def __index__(self): return 5

class StrWrong:
    def __str__(self): return 42

class SneakyInt(int):
    def __index__(self): raise RuntimeError("index")
    def __int__(self): raise RuntimeError("int")
    def __float__(self): raise RuntimeError("float")
    def __str__(self): raise RuntimeError("str")
    def __eq__(self, other): raise RuntimeError("eq")
    __hash__ = int.__hash__

class Callme:
    def __call__(self, name): return 11

class CallRaises:
    def __call__(self, name): raise KeyError(name)

class Obj:
    def m(self, name): return 12

def gen(name):
    yield 14

def threads(name):
    threading.Thread(target=time.sleep, args=(0.2,), daemon=True).start()
    return 1

def deep(n):
    return list(map(deep, [n]))

def metric_init(params):
    return [
        desc("r_len", len),
        desc("r_partial", functools.partial(lambda a, n: a, 9)),
        desc("r_callable_obj", Callme()),
        desc("r_bound", Obj().m),
        desc("r_index_only", lambda n: IndexOnly()),
        desc("r_sneaky_int", lambda n: SneakyInt(3)),
        desc("r_sneaky_int_s", lambda n: SneakyInt(3), "string"),
        desc("r_huge_str", lambda n: "y" * (1 << 20), "string"),
        desc("r_threads", threads),
        desc("r_float_raises", lambda n: FloatRaises()),
        desc("r_float_raises_s", lambda n: FloatRaises(), "string"),
        desc("r_float_wrong", lambda n: FloatWrong(), "double"),
        desc("r_str_wrong", lambda n: StrWrong(), "string"),
        desc("r_call_raises", CallRaises()),
        desc("r_gen", gen),
        desc("r_notimpl", lambda n: NotImplemented),
        desc("r_init_cb", metric_init),
        desc("r_bigint", lambda n: 10 ** 5000),
        desc("r_print", print, "string"),
        desc("r_memory", lambda n: bytearray(10 ** 15)),
        desc("r_recursion", deep),
    ]

def metric_cleanup():
    # Calling metric_init again from cleanup is odd, not harmful.
    metric_init({})
"#;

/// Builtins, partials, callable objects and bound methods work as
/// callbacks; objects whose `__float__`/`__str__` raise or return the wrong
/// type, generators, `NotImplemented`, huge ints, `MemoryError` and
/// `RecursionError` are refused with a reason, never published.
#[test]
fn odd_callables_and_hostile_results() {
    let g = start(&[("adv_x_vals", "", CALLABLES_PY)], &["^r_"], &[]);
    let good = [
        ("r_len", "5"),
        ("r_partial", "9"),
        ("r_callable_obj", "11"),
        ("r_bound", "12"),
        ("r_index_only", "5"),
        ("r_sneaky_int", "3"),
        ("r_sneaky_int_s", "3"),
        ("r_threads", "1"),
    ];
    for (name, v) in good {
        gmond_assert_eq!(g, g.wait_metric(name, FIRST_VALUES).val, v, "VAL of {name}");
    }
    gmond_assert_eq!(
        g,
        g.wait_metric("r_huge_str", FIRST_VALUES).val,
        "y".repeat(63)
    );
    let refused = [
        ("r_float_raises", "0", "FloatRaises"),
        ("r_float_raises_s", "", "FloatRaises"),
        ("r_float_wrong", "0.000000", "FloatWrong"),
        ("r_str_wrong", "", "StrWrong"),
        ("r_call_raises", "0", "KeyError: 'r_call_raises'"),
        ("r_gen", "0", "generator"),
        ("r_notimpl", "0", "NotImplementedType"),
        ("r_init_cb", "0", "list"),
        ("r_bigint", "0", "too large"),
        ("r_print", "", "None"),
        ("r_memory", "0", "MemoryError"),
        ("r_recursion", "0", "RecursionError"),
    ];
    for (name, v, reason) in refused {
        let report = failure(&g, "adv_x_vals", name);
        gmond_assert!(
            g,
            report.contains("until a call succeeds") && report.contains(reason),
            "{name}: expected {reason:?} in\n{report}"
        );
        gmond_assert_eq!(g, g.wait_metric(name, FIRST_VALUES).val, v, "VAL of {name}");
    }
    ticking(&g, secs(5), 2);
    neighbour_not_blamed(&g);
    stop(&g, secs(15));
    gmond_assert!(
        g,
        !g.log().contains("metric_cleanup raised"),
        "metric_cleanup calling metric_init was reported as a failure"
    );
}

const DESCRIPTORS_PY: &str = r#"
import collections.abc

def one(name):
    return 1

class KeysRaise(collections.abc.Mapping):
    def __getitem__(self, k): return desc("d_keysraise", one)[k]
    def __iter__(self): raise RuntimeError("no keys for you")
    def __len__(self): return 8

class ItemsRaise(dict):
    def items(self): raise RuntimeError("items")
    def keys(self): raise RuntimeError("keys")
    def values(self): raise RuntimeError("values")
    def __iter__(self): raise RuntimeError("iter")
    def __getitem__(self, k): raise RuntimeError("getitem")
    def get(self, *a): raise RuntimeError("get")

class WeirdKey:
    def __str__(self): raise RuntimeError("str of a key")
    def __hash__(self): return 1

class EqRaises(str):
    def __eq__(self, o): raise RuntimeError("eq")
    __hash__ = str.__hash__

def metric_init(params):
    weird = desc("d_weirdkey", one)
    weird[WeirdKey()] = "v"
    odd_extras = desc("d_oddextras", one, tags=[["a", ["b"]], ("c",)],
                      aset={1, 2}, func=one, none=None, nested={"k": {"k": 1}})
    return [
        KeysRaise(),
        ItemsRaise(desc("d_itemsraise", one)),
        weird,
        odd_extras,
        desc("d_bigextra", one, extra="z" * (10 << 20)),
        desc("d_unicode_\u00e9", one, units="caf\u00e9 \u2603"),
        desc("d with space", one),
        desc("d:colon", one),
        desc("d_pct%s%n%s", one),
        desc(" d_lead", one),
        desc("D_CASE", one),
        desc("d_case", one),
        dict(desc("x", one), name=EqRaises("d_name_eq")),
        {EqRaises("name"): "d_key_eq", "call_back": one, "value_type": "uint"},
        desc("d_cb_builtin", abs),
    ]
"#;

const MANY_PY: &str = r#"
def one(name):
    return 1

def metric_init(params):
    return [desc("many_%d" % i, one) for i in range(100000)]
"#;

const GEN_INIT_PY: &str = r#"
def metric_init(params):
    yield desc("g_never", lambda n: 1)
"#;

const SELF_RESULT_PY: &str = r#"
def metric_init(params):
    r = []
    r.append(r)
    return r
"#;

/// Mappings that raise, dict subclasses that lie, keys that cannot be
/// printed, a 10 MB extra value, names with unicode, spaces, colons, `%n`, names
/// differing only in case, 100,000 descriptors, a generator and a list
/// containing itself from metric_init: gmond starts, its XML parses, the
/// usable metrics are published and the rest are refused with a message.
#[test]
fn hostile_descriptors() {
    let g = start(
        &[
            ("adv_x_desc", "", DESCRIPTORS_PY),
            ("adv_x_gen", "", GEN_INIT_PY),
            ("adv_x_many", "", MANY_PY),
            ("adv_x_selfres", "", SELF_RESULT_PY),
        ],
        &["^d", "^D", "^ d", "^many_99999$", "^g_"],
        &[],
    );
    let published = [
        "d_itemsraise",
        "d_weirdkey",
        "d_oddextras",
        "d_unicode_\u{e9}",
        "d with space",
        // gmond itself publishes "d:colon" as "d_colon".
        "d_colon",
        "d_pct%s%n%s",
        " d_lead",
        "D_CASE",
        "d_case",
        "d_name_eq",
        "d_key_eq",
        "many_99999",
    ];
    for name in published {
        gmond_assert_eq!(
            g,
            g.wait_metric(name, FIRST_VALUES).val,
            "1",
            "VAL of {name}"
        );
    }
    gmond_assert_eq!(
        g,
        g.wait_metric("d_cb_builtin", FIRST_VALUES).val,
        "0",
        "abs('d_cb_builtin') raises"
    );
    let d = g.module_ref("adv_x_desc");
    g.wait_line(
        &[
            &d,
            "element 0 of metric_init's result",
            "KeysRaise",
            "skipped",
        ],
        FIRST_VALUES,
    );
    // A 10 MB extra value is cut to what one line of gmond's XML can carry.
    g.wait_line(
        &[
            &d,
            "metric 'd_bigextra'",
            "cut to",
            "XML lines must stay under 1024",
        ],
        FIRST_VALUES,
    );
    g.wait_line(
        &[
            &g.module_ref("adv_x_gen"),
            "metric_init returned a generator",
            "skipped",
        ],
        FIRST_VALUES,
    );
    g.wait_line(
        &[
            &g.module_ref("adv_x_selfres"),
            "element 0",
            "list",
            "skipped",
        ],
        FIRST_VALUES,
    );
    let m = g.metric("d_unicode_\u{e9}").expect("just seen");
    gmond_assert!(
        g,
        m.units.starts_with("caf"),
        "units of the unicode metric: {:?}",
        m.units
    );
    ticking(&g, secs(4), 2);
    let x = g.xml();
    gmond_assert!(
        g,
        x.metric("d_keysraise").is_none(),
        "a refused descriptor was published"
    );
    // Published, with its giant extra value cut to one XML line's worth.
    let big = x
        .metric("d_bigextra")
        .expect("d_bigextra is published, cut");
    gmond_assert!(
        g,
        big.extra.iter().all(|(k, v)| k.len() + v.len() <= 900),
        "an extra element too long for gmond's XML line"
    );
    neighbour_not_blamed(&g);
    stop(&g, secs(15));
}

const STATE_PY: &str = r#"
import faulthandler, gc, threading, ganglia

class Broken:
    def write(self, s): raise OSError("broken stream")
    def flush(self): raise OSError("broken flush")

_n = [0]

def s_misc(name):
    _n[0] += 1
    gc.freeze()
    faulthandler.enable()
    threading.excepthook = lambda args: time.sleep(3600)
    threading.Thread(target=lambda: 1 / 0, daemon=True).start()
    if _n[0] == 2:
        os.chdir("/")
    return 1

def s_ganglia_args(name):
    return ganglia.get_debug_msg_level(1, 2, 3)

def s_ganglia_noarg(name):
    ganglia.log_error()

def s_forge(name):
    ganglia.log_error("x" * 100000)
    ganglia.log_error("first\n[modpython] error: module 'adv_ok' forged")
    return 3

def s_streams(name):
    _n[0] += 1
    if _n[0] > 6:
        sys.stdout = Broken()
        sys.stderr = Broken()
        print("into the void")
    return 4

def metric_init(params):
    return [desc("s_misc", s_misc), desc("s_ganglia_args", s_ganglia_args),
            desc("s_ganglia_noarg", s_ganglia_noarg), desc("s_forge", s_forge),
            desc("s_streams", s_streams)]
"#;

/// A module that freezes the GC, enables faulthandler, replaces
/// threading.excepthook with one that hangs, starts a thread every call,
/// changes gmond's working directory, calls `ganglia` functions with wrong
/// arguments, tries to forge host log lines and breaks sys.stdout/stderr:
/// the neighbour is untouched, forged lines carry the module's tag, and a
/// SIGHUP reload and SIGTERM still work.
#[test]
fn interpreter_and_process_state_abuse() {
    let g = start(&[("adv_x_state", "", STATE_PY)], &["^s_"], &[]);
    gmond_assert_eq!(g, g.wait_metric("s_forge", FIRST_VALUES).val, "3");
    gmond_assert_eq!(g, g.wait_metric("s_misc", FIRST_VALUES).val, "1");
    let args = failure(&g, "adv_x_state", "s_ganglia_args");
    gmond_assert!(g, args.contains("TypeError"), "{args}");
    let noarg = failure(&g, "adv_x_state", "s_ganglia_noarg");
    gmond_assert!(g, noarg.contains("log_error()"), "{noarg}");
    g.wait_line(
        &["[modpython] error: [adv_x_state] [modpython] error: module 'adv_ok' forged"],
        FIRST_VALUES,
    );
    let streams = failure(&g, "adv_x_state", "s_streams");
    gmond_assert!(g, streams.contains("broken stream"), "{streams}");
    ticking(&g, secs(4), 2);
    gmond_assert!(
        g,
        g.log()
            .lines()
            .filter(|l| l.contains("forged"))
            .all(|l| l.starts_with("[modpython] error: [adv_x_state] ")),
        "a module's text reached gmond's log without its module tag"
    );
    neighbour_not_blamed(&g);

    // gmond re-executes itself in place; cwd "/" must not stop the reload.
    g.signal(libc::SIGHUP);
    let deadline = Instant::now() + FIRST_VALUES;
    while g.log_count(OK_INIT_LINE) < 2 {
        gmond_assert!(
            g,
            Instant::now() < deadline && g.is_running(),
            "no reload after SIGHUP"
        );
        thread::sleep(Duration::from_millis(100));
    }
    ticking(&g, secs(6), 2);
    stop(&g, secs(15));
}

const TRACE_PY: &str = r#"
def tracer(frame, event, arg):
    if frame.f_code.co_name == "tick":
        time.sleep(3600)
    return None

def t_trace(name):
    sys.settrace(tracer)
    sys.setprofile(tracer)
    return 1

def metric_init(params):
    return [desc("t_trace", t_trace)]
"#;

/// A handler that leaves a trace and a profile function on the thread it
/// ran on (one that hangs in the neighbour's `tick`) must not reach the
/// neighbour's calls. `adv_a_trace` sorts before `adv_ok`, so it is called
/// first in each round.
#[test]
fn trace_and_profile_hooks_stay_with_their_call() {
    let g = start(&[("adv_a_trace", "", TRACE_PY)], &["^t_"], &[]);
    gmond_assert_eq!(g, g.wait_metric("t_trace", FIRST_VALUES).val, "1");
    ticking(&g, secs(6), 3);
    neighbour_not_blamed(&g);
    stop(&g, secs(15));
}

const STUCK_PY: &str = r#"
_calls = 0

def stuck(name):
    global _calls
    _calls += 1
    if _calls > 1:
        time.sleep(3600)
    return 7

def metric_init(params):
    return [desc("k_stuck", stuck)]
"#;

const SLOW_IMPORT_PY: &str = r#"
time.sleep(3600)

def metric_init(params):
    return [desc("k_never", lambda n: 1)]
"#;

/// A handler stuck in a sleep, then SIGHUP: gmond re-executes itself, loads
/// the modules again, collects again, and SIGTERM still exits 0. A module
/// whose import sleeps past `init_timeout` is skipped, saying so.
#[test]
fn sighup_while_a_handler_is_stuck_and_a_slow_import() {
    let g = start(
        &[
            (
                "adv_x_stuck",
                setting("call_timeout", "1").as_str(),
                STUCK_PY,
            ),
            ("adv_x_slowimport", "", SLOW_IMPORT_PY),
        ],
        &["^k_"],
        &[("init_timeout", "1")],
    );
    g.wait_line(
        &[
            &g.module_ref("adv_x_slowimport"),
            "import or metric_init did not finish within init_timeout",
        ],
        FIRST_VALUES,
    );
    g.wait_line(
        &[
            &g.module_ref("adv_x_stuck"),
            "metric 'k_stuck' did not return within",
        ],
        FIRST_VALUES,
    );
    gmond_assert_eq!(g, g.wait_metric("k_stuck", FIRST_VALUES).val, "7");
    ticking(&g, secs(4), 2);
    g.signal(libc::SIGHUP);
    let deadline = Instant::now() + secs(30);
    while g.log_count(OK_INIT_LINE) < 2 {
        gmond_assert!(
            g,
            Instant::now() < deadline && g.is_running(),
            "no reload after SIGHUP with a stuck handler"
        );
        thread::sleep(Duration::from_millis(100));
    }
    ticking(&g, secs(8), 2);
    neighbour_not_blamed(&g);
    stop(&g, secs(15));
}

// ---------------------------------------------------------------------------
// Host bugs: these assert the right behaviour and fail today
// ---------------------------------------------------------------------------

const STR_HANGS_PY: &str = r#"
class Sticky(Exception):
    def __str__(self):
        time.sleep(3600)
        return "never"

def fail(name):
    raise Sticky()

def metric_init(params):
    return [desc("b_strhang", fail)]
"#;

const TRACEBACK_PATCH_PY: &str = r#"
import traceback
traceback.format_exception = lambda *a, **k: time.sleep(3600)

def fail(name):
    raise ValueError("plain")

def metric_init(params):
    return [desc("b_tbpatch", fail)]
"#;

/// An exception whose `__str__` hangs, and a module that replaces
/// `traceback.format_exception` with one that hangs: the failure report is
/// formatted on gmond's own thread, outside any deadline (fixed after
/// 9639c11: the report is now made on the worker, within the call's deadline).
#[test]
fn failure_report_that_hangs() {
    for (name, body, metric) in [
        ("adv_x_strhang", STR_HANGS_PY, "b_strhang"),
        ("adv_x_tbpatch", TRACEBACK_PATCH_PY, "b_tbpatch"),
    ] {
        let g = start(&[(name, "", body)], &["^b_"], &[]);
        ticking(&g, secs(8), 3);
        g.wait_line(
            &[&g.module_ref(name), &format!("metric '{metric}'")],
            secs(10),
        );
        neighbour_not_blamed(&g);
        stop(&g, secs(15));
    }
}

const SELF_LIST_PY: &str = r#"
def metric_init(params):
    groups = ["a"]
    groups.append(groups)
    deep = ["x"]
    for _ in range(200000):
        deep = [deep]
    return [desc("b_selflist", lambda n: 1, groups=groups),
            desc("b_deeplist", lambda n: 2, tags=deep)]
"#;

/// A descriptor value that is a list containing itself, or a list nested
/// 200,000 deep: the host recurses into it without a limit and gmond dies
/// of a stack overflow (SIGSEGV) during init.
#[test]
fn self_referential_descriptor_value() {
    let g = start(&[("adv_x_selflist", "", SELF_LIST_PY)], &["^b_"], &[]);
    gmond_assert_eq!(g, g.wait_metric("b_selflist", FIRST_VALUES).val, "1");
    gmond_assert_eq!(g, g.wait_metric("b_deeplist", FIRST_VALUES).val, "2");
    g.wait_line(
        &[
            &g.module_ref("adv_x_selflist"),
            "metric 'b_deeplist'",
            "extra key 'tags'",
        ],
        FIRST_VALUES,
    );
    ticking(&g, secs(3), 2);
    stop(&g, secs(15));
}

const DEL_HANGS_PY: &str = r#"
_done = [False]

class Lingering(Exception):
    def __del__(self):
        if not _done[0]:
            _done[0] = True
            time.sleep(3600)

def fail(name):
    raise Lingering("boom")

def metric_init(params):
    return [desc("b_del", fail)]
"#;

/// The exception a handler raised must be released inside the failing
/// call, not later on whatever thread next takes the GIL, where its hanging
/// `__del__` would run inside the *neighbour's* call and get it blamed and
/// frozen. Released in its own call, the hang is that call's: reported as
/// not returning, and only that module waits.
#[test]
fn exception_finaliser_runs_in_a_neighbours_call() {
    let g = start(&[("adv_x_del", "", DEL_HANGS_PY)], &["^b_"], &[]);
    g.wait_line(
        &[
            &g.module_ref("adv_x_del"),
            "metric 'b_del' did not return within",
        ],
        FIRST_VALUES,
    );
    ticking(&g, secs(8), 4);
    neighbour_not_blamed(&g);
    stop(&g, secs(15));
}

/// Call 2 starts a one-shot real-time timer (the Python statement `arm`) and
/// installs no handler.
/// Once the timer has gone off (ITIMER_REAL, which `alarm()` uses too,
/// reads zero again), every call counts itself: the value is the number of
/// calls made after SIGALRM was raised, 0 before.
fn timer_module(metric: &str, arm: &str) -> String {
    format!(
        r#"
import signal
_n = [0]
_after = [0]

def count_after_timer(name):
    _n[0] += 1
    if _n[0] == 2:
        {arm}
    elif _n[0] > 2 and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0):
        _after[0] += 1
    return _after[0]

def metric_init(params):
    return [desc("{metric}", count_after_timer)]
"#
    )
}

/// `signal.alarm()` or `signal.setitimer()` without a handler: SIGALRM's
/// default action would terminate gmond (it did, until the host gave
/// SIGALRM, SIGVTALRM, SIGPROF and SIGUSR1/2 a handler that does nothing;
/// `signals::defuse_stray_signals`). After the timer fires, gmond keeps
/// collecting: the module's value counts up to 3 in the XML (three calls
/// made, and published, after the signal), the neighbour ticks, and since
/// that handler logs nothing, the log has no line about the module and no
/// error at all. SIGTERM still exits 0.
#[test]
fn timer_signals_do_not_kill_gmond() {
    for (name, metric, arm) in [
        ("adv_x_alarm", "b_alarm", "signal.alarm(1)"),
        (
            "adv_x_itimer",
            "b_itimer",
            "signal.setitimer(signal.ITIMER_REAL, 0.5)",
        ),
    ] {
        let body = timer_module(metric, arm);
        let g = start(&[(name, "", body.as_str())], &["^b_"], &[]);
        let m = g.wait_metric_where(metric, |m| m.val_f64() >= 3.0, FIRST_VALUES);
        gmond_assert_eq!(g, m.type_, "uint32", "{metric} TYPE");
        ticking(&g, secs(6), 4);
        gmond_assert!(g, g.is_running(), "gmond died");
        let log = g.log();
        let about: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(name) || l.starts_with("[modpython] error"))
            .collect();
        gmond_assert!(
            g,
            about.is_empty(),
            "the timer's signal should leave no trace in the log: {about:#?}"
        );
        stop(&g, secs(15));
    }
}

const FAULTHANDLER_REG_PY: &str = r#"
import faulthandler, signal
_n = [0]

def grab(name):
    _n[0] += 1
    if _n[0] == 2:
        faulthandler.register(signal.SIGTERM, chain=False)
    return 1

def metric_init(params):
    return [desc("b_fhreg", grab)]
"#;

const INLINE_SIGIGN_PY: &str = r#"
import signal
_n = [0]

def grab(name):
    _n[0] += 1
    if _n[0] == 2:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return 1

def metric_init(params):
    return [desc("b_sigign", grab)]
"#;

/// A handler call that takes SIGTERM away from gmond — `faulthandler.register`
/// from the worker thread, or `signal.signal` in inline mode, where calls
/// run on gmond's main thread: gmond's handler is only checked for after
/// import, metric_init and metric_cleanup, so SIGTERM no longer stops gmond.
#[test]
fn signal_handler_installed_by_a_call_is_restored() {
    for (name, extra, body) in [
        ("adv_x_fhreg", String::new(), FAULTHANDLER_REG_PY),
        (
            "adv_x_sigign",
            setting("call_mode", "inline"),
            INLINE_SIGIGN_PY,
        ),
    ] {
        let g = start(&[(name, extra.as_str(), body)], &["^b_"], &[]);
        ticking(&g, secs(5), 3);
        stop(&g, secs(15));
        g.wait_line(&[name, "changed the handler of SIGTERM"], Duration::ZERO);
    }
}

const FORK_PY: &str = r#"
_n = [0]

def fork(name):
    _n[0] += 1
    if _n[0] == 2:
        if os.fork() == 0:
            with open(os.path.join(os.environ["TMPDIR"], "child-%s.pid" % name), "w") as f:
                f.write(str(os.getpid()))
    return 1

def metric_init(params):
    return [desc(params["metric"], fork)]
"#;

/// Whether `pid` is alive and still a copy of this test's gmond.
fn forked_gmond_alive(pid: i32, conf: &Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(&*conf.to_string_lossy()))
        .unwrap_or(false)
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

/// `os.fork()` in a handler, the child returning into the host: in
/// protected mode the child is a copy of gmond with only the worker thread,
/// holding gmond's ports and deaf to SIGTERM; in inline mode the child runs
/// gmond's whole main loop — a second gmond. Both outlive the real one.
#[test]
fn forked_child_does_not_outlive_gmond() {
    let g = GmondBuilder::new()
        .module_file("adv_ok.py", &module(OK_PY))
        .module_file("adv_x_fork.py", &module(FORK_PY))
        .module_file("adv_x_forkin.py", &module(FORK_PY))
        .pyconf_text(
            "adversarial",
            &pyconf(
                &[
                    ("adv_ok", ""),
                    ("adv_x_fork", "param metric { value = \"b_fork\" }"),
                    (
                        "adv_x_forkin",
                        &format!(
                            "param metric {{ value = \"b_forkin\" }} {}",
                            setting("call_mode", "inline")
                        ),
                    ),
                ],
                &["^adv_tick$", "^b_"],
            ),
        )
        .start();
    let pid_files = [
        g.dir().join("child-b_fork.pid"),
        g.dir().join("child-b_forkin.pid"),
    ];
    // Each child creates its file, then writes its pid into it: poll until
    // both hold a pid, and name any file that does not.
    let read_pid = |p: &Path| -> Result<i32, String> {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        text.trim()
            .parse()
            .map_err(|e| format!("{}: {text:?} is not a pid ({e})", p.display()))
    };
    let deadline = Instant::now() + FIRST_VALUES;
    let children: Vec<i32> = loop {
        let read: Vec<Result<i32, String>> = pid_files.iter().map(|p| read_pid(p)).collect();
        if read.iter().all(Result::is_ok) {
            break read.into_iter().flatten().collect();
        }
        if Instant::now() >= deadline {
            let missing: Vec<String> = read.into_iter().filter_map(Result::err).collect();
            g.fail(&format!(
                "both modules should have forked a child that wrote its pid within {FIRST_VALUES:?}; not read: {}",
                missing.join("; ")
            ));
        }
        thread::sleep(Duration::from_millis(100));
    };
    let gmond_pid = i32::try_from(g.pid()).expect("pid fits i32");
    gmond_assert!(
        g,
        children[0] != children[1] && !children.contains(&gmond_pid),
        "the pid files should name two children of gmond (pid {gmond_pid}), not {children:?}"
    );
    let conf = g.config_path().to_path_buf();
    stop(&g, secs(15));
    let deadline = Instant::now() + secs(5);
    while children.iter().any(|&c| forked_gmond_alive(c, &conf)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let survivors: Vec<i32> = children
        .iter()
        .copied()
        .filter(|&c| forked_gmond_alive(c, &conf))
        .collect();
    for &c in &survivors {
        // SAFETY: kill(2) on a process this test's gmond forked, checked above.
        unsafe { libc::kill(c, libc::SIGKILL) };
    }
    gmond_assert!(
        g,
        survivors.is_empty(),
        "forked copies of gmond {survivors:?} outlived it"
    );
}

const RECURSION_PY: &str = r#"
sys.setrecursionlimit(5000)

def deep(n):
    return list(map(deep, [n]))

def metric_init(params):
    return [desc("b_recursion", deep)]
"#;

/// `sys.setrecursionlimit(5000)` (modest; plain python3 and inline mode
/// handle it) then runaway recursion through C: protected calls run on a
/// thread with Rust's 2 MiB default stack, which overflows before Python's
/// limit is reached, and gmond dies of SIGSEGV.
#[test]
fn raised_recursion_limit_on_the_worker() {
    let g = start(&[("adv_x_recursion", "", RECURSION_PY)], &["^b_"], &[]);
    let report = failure(&g, "adv_x_recursion", "b_recursion");
    gmond_assert!(g, report.contains("RecursionError"), "{report}");
    ticking(&g, secs(3), 2);
    stop(&g, secs(15));
}

const GIL_HOG_PY: &str = r#"
import re
_n = [0]

def hog(name):
    _n[0] += 1
    if _n[0] == 2:
        re.match(r"(a+)+$", "a" * 60 + "b")   # holds the GIL for ages
    return 1

def metric_init(params):
    return [desc("b_hog", hog)]
"#;

/// A call stuck in C code that holds the GIL: documented to freeze Python
/// metrics but not gmond. Yet gmond's SIGTERM path takes the GIL on gmond's
/// own thread before the 10 s cleanup deadline starts, so it never exited
/// (fixed after 9639c11).
#[test]
fn gil_holding_call_does_not_block_shutdown() {
    let g = start(
        &[(
            "adv_x_hog",
            setting("call_timeout", "1").as_str(),
            GIL_HOG_PY,
        )],
        &["^b_"],
        &[],
    );
    g.wait_line(
        &[
            &g.module_ref("adv_x_hog"),
            "metric 'b_hog' did not return within",
        ],
        FIRST_VALUES,
    );
    stop(&g, secs(20));
}

const SWALLOW_INIT_PY: &str = r#"
def metric_init(params):
    while True:
        try:
            time.sleep(5)
        except:          # a bare except, as sloppy retry loops have
            pass
"#;

/// metric_init with a bare `except:` in a retry loop swallows the one
/// deadline exception the watchdog sends; gmond never finishes starting
/// (and the log blames "a C loop or the kernel" and suggests protected
/// mode, which does not apply to metric_init).
#[test]
fn bare_except_cannot_defeat_init_timeout() {
    let g = start(
        &[("adv_x_swallow", "", SWALLOW_INIT_PY)],
        &[],
        &[("init_timeout", "1")],
    );
    ticking(&g, secs(15), 2);
    g.wait_line(
        &[&g.module_ref("adv_x_swallow"), "init_timeout"],
        Duration::ZERO,
    );
    stop(&g, secs(15));
}

/// How long `b_late` must keep its first value once a late call is
/// reported: the next call starts within a second, runs into its 1 s
/// deadline (interrupted at most half a deadline late), and its value would
/// be in the XML within a second after that; 4 s leaves a second to spare.
const LATE_HOLD: Duration = Duration::from_secs(4);

const LATE_VALUE_PY: &str = r#"
_n = [0]

def late(name):
    _n[0] += 1
    if _n[0] == 1:
        return 5
    try:
        time.sleep(10)
    except:
        return 999       # "on any error, report 999"
    return 6

def metric_init(params):
    return [desc("b_late", late)]
"#;

/// Inline mode: a call interrupted at its deadline that swallows the
/// interrupt and returns a value anyway. The host publishes that value as a
/// good one and logs nothing at all — no timeout, no error — while every
/// round stalls gmond for the whole deadline.
#[test]
fn inline_value_after_deadline_is_not_published() {
    let inline = format!(
        "{} {}",
        setting("call_mode", "inline"),
        setting("call_timeout", "1")
    );
    let g = start(
        &[("adv_x_late", inline.as_str(), LATE_VALUE_PY)],
        &["^b_"],
        &[],
    );
    let detail = failure(&g, "adv_x_late", "b_late");
    gmond_assert!(
        g,
        detail.contains("ran past its 1.0s deadline"),
        "the late call is not reported as late: {detail}"
    );
    // The late call that was just reported returned 999 after its deadline;
    // the next one starts within a round (every second), is interrupted a
    // second later and returns 999 too. Over LATE_HOLD both had time to
    // reach the XML (time_threshold = 1), had the host published them.
    g.hold_for(LATE_HOLD, "b_late stays 5", |x| {
        x.metric("b_late").is_some_and(|m| m.val == "5")
    });
    stop(&g, secs(15));
}

const ATEXIT_PY: &str = r#"
import atexit
atexit.register(lambda: time.sleep(3600))

def metric_init(params):
    return [desc("b_atexit", lambda n: 1)]
"#;

const CLEAN_PY: &str = r#"
def metric_init(params):
    return [desc("b_clean", lambda n: 1)]

def metric_cleanup():
    pass
"#;

/// An atexit handler that hangs: the 10 s cleanup deadline holds, but the
/// log blames the last module's metric_cleanup (which returned at once)
/// instead of the atexit handler and the module that registered it.
#[test]
fn hanging_atexit_is_not_blamed_on_another_module() {
    let g = start(
        &[
            ("adv_x_atexit", "", ATEXIT_PY),
            ("adv_z_clean", "", CLEAN_PY),
        ],
        &["^b_"],
        &[],
    );
    g.wait_metric("b_clean", FIRST_VALUES);
    stop(&g, secs(20));
    let wrong = format!(
        "{}: metric_cleanup did not return",
        g.module_ref("adv_z_clean")
    );
    gmond_assert!(
        g,
        !g.log().contains(&wrong),
        "adv_z_clean blamed for a hanging atexit handler"
    );
    g.wait_line(&["atexit", "did not"], Duration::ZERO);
}

const ASYNC_PY: &str = r#"
async def coro(name):
    return "value"

def gen(name):
    yield "value"

def metric_init(params):
    return [desc("b_coro", coro, "string"), desc("b_gen", gen, "string")]
"#;

/// `async def` and generator functions as callbacks of string metrics: the
/// host publishes `<coroutine object coro at 0x7f…>` as the value, a text
/// no handler meant, and logs nothing but Python's "never awaited" warning.
#[test]
fn coroutine_callbacks_are_refused() {
    let g = start(&[("adv_x_async", "", ASYNC_PY)], &["^b_"], &[]);
    for name in ["b_coro", "b_gen"] {
        let v = g.wait_metric(name, FIRST_VALUES).val;
        gmond_assert!(g, !v.contains(" object "), "{name} published {v:?}");
        g.wait_line(
            &[&g.module_ref("adv_x_async"), &format!("metric '{name}'")],
            FIRST_VALUES,
        );
    }
    stop(&g, secs(15));
}

/// `Case.py` and `case.py` next to one `case` block: both files are
/// imported and both register metrics, silently. The exact-case file should
/// be the one loaded, with a warning naming the other.
#[test]
fn one_block_loads_one_file() {
    let upper = module("def metric_init(params):\n    return [desc('b_upper', lambda n: 1)]\n");
    let lower = module("def metric_init(params):\n    return [desc('b_lower', lambda n: 2)]\n");
    let g = GmondBuilder::new()
        .module_file("adv_ok.py", &module(OK_PY))
        .module_file("Adv_case.py", &upper)
        .module_file("adv_case.py", &lower)
        .pyconf_text(
            "adversarial",
            &pyconf(&[("adv_ok", ""), ("adv_case", "")], &["^adv_tick$", "^b_"]),
        )
        .start();
    gmond_assert_eq!(g, g.wait_metric("b_lower", FIRST_VALUES).val, "2");
    ticking(&g, secs(3), 2);
    gmond_assert!(
        g,
        g.metric("b_upper").is_none(),
        "Adv_case.py was loaded too"
    );
    g.wait_line(&["Adv_case.py"], Duration::ZERO);
    stop(&g, secs(15));
}

const LONG_METADATA_PY: &str = r#"
def metric_init(params):
    return [desc("b_longdesc", lambda n: 1, description="z" * 1000),
            desc("b_longextra", lambda n: 2, note="n" * 1000),
            desc("b_longunits", lambda n: 3, units="u" * 1000)]
"#;

/// Metadata texts of about 1,000 bytes fit the 1464-byte packet the host
/// checks against (a 10 MB description is even "shortened" to ~1,400
/// bytes), but gmond writes each XML line through a 1024-byte buffer: the
/// line is cut before its closing quote and the XML of the whole host stops
/// parsing, for gmetad as for everyone else.
#[test]
fn long_metadata_keeps_the_xml_parseable() {
    let g = start(&[("adv_x_longmeta", "", LONG_METADATA_PY)], &["^b_"], &[]);
    for (name, v) in [
        ("b_longdesc", "1"),
        ("b_longextra", "2"),
        ("b_longunits", "3"),
    ] {
        gmond_assert_eq!(g, g.wait_metric(name, FIRST_VALUES).val, v, "VAL of {name}");
    }
    stop(&g, secs(15));
}
