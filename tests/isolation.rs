//! Failure isolation against the real gmond: every failure mode of
//! `tests/fixtures/broken` is reported (module, file, metric, reason, full
//! traceback), gmond keeps running, healthy neighbours keep their values,
//! refused metrics never appear, failing handlers keep their last good
//! value, and repeated failures are not logged on every call.
//!
//! A second gmond runs small inline modules for the cases the fixture does
//! not cover (param without value, KeyboardInterrupt, bytes, NaN, float
//! overflow, printing to stdout, a `"` in a metric name).

mod common;

use std::collections::BTreeSet;
use std::thread;
use std::time::{Duration, Instant};

use common::{Gmond, GmondBuilder, secs};

/// How long to wait for the first values of a freshly started gmond.
const FIRST_VALUES: Duration = Duration::from_secs(30);

/// How long `inline_failure_cases` watches its gmond once the first failures
/// are logged: five more collection rounds (its group collects every
/// second). With the calls already made, that takes each failing handler to
/// its third failure in a row, after which the back-off calls it at most
/// every 10 s; a failure logged twice, or a value that changed, shows by then.
const INLINE_STEADY: Duration = Duration::from_secs(5);

/// The lines of one log message: the header line (`[modpython] error: ...`)
/// and the continuation lines (`[modpython]   ...`) that follow it.
fn messages(log: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in log.lines() {
        if let Some(cont) = line.strip_prefix("[modpython]   ") {
            if let Some(last) = out.last_mut() {
                last.1.push(cont.to_string());
            }
        } else if line.starts_with("[modpython] ") {
            out.push((line.to_string(), Vec::new()));
        } else if !line.trim().is_empty() {
            // A gmond line ends the current message's continuation block.
            out.push((line.to_string(), Vec::new()));
        }
    }
    out
}

fn module_path(g: &Gmond, module: &str) -> String {
    g.modules_dir()
        .join(format!("{module}.py"))
        .display()
        .to_string()
}

/// Finds the message `[modpython] <level>: module '<module>' (<path>): ...`
/// whose header contains every string of `header`, and whose continuation
/// lines contain every string of `body` (each somewhere in the block).
/// Returns the header line. Fails with gmond's log otherwise.
#[track_caller]
fn expect_message(g: &Gmond, level: &str, module: &str, header: &[&str], body: &[&str]) -> String {
    let prefix = format!(
        "[modpython] {level}: module '{module}' ({}): ",
        module_path(g, module)
    );
    let log = g.log();
    let found = messages(&log).into_iter().find(|(h, cont)| {
        h.starts_with(&prefix)
            && header.iter().all(|n| h.contains(n))
            && body.iter().all(|n| cont.iter().any(|c| c.contains(n)))
    });
    match found {
        Some((h, _)) => h,
        None => g.fail(&format!(
            "no {level} message starting with {prefix:?}\n  header containing {header:?}\n  \
             followed by lines containing {body:?}"
        )),
    }
}

/// Metrics every broken-fixture gmond must serve, with their VALs.
const SERVED: &[(&str, &str)] = &[
    // the healthy neighbour
    ("broken_healthy_ok", "1"),
    ("broken_healthy_json", "[1]"),
    // siblings of refused descriptors
    ("broken_mixed_good", "3"),
    ("broken_sibling_no_name", "2"),
    ("broken_sibling_no_callback", "2"),
    ("broken_sibling_not_callable", "2"),
    ("broken_sibling_bogus_type", "2"),
    ("broken_sibling_no_value_type", "2"),
    // 'uint8' is mapped to uint with a warning (src/descriptor.rs aliases the
    // sized names real modules use); tests/fixtures/README.md still says it is
    // refused like 'bogus'.
    ("broken_uint8_type", "2"),
    // duplicates: the module loaded first keeps the name
    ("broken_dup_name", "1"),
    ("broken_dup_a_ok", "11"),
    ("broken_dup_b_ok", "22"),
    // corrected descriptors
    ("broken_fmt_s_on_uint", "11"),
    ("broken_fmt_d_on_float", "1.500000"),
    ("broken_fmt_empty_uint", "13"),
    ("broken_quote_units", "12"),
    ("broken_quote_value", "a 'quoted' value"),
    // failing handlers: last good value, or zero/empty if there never was one
    ("broken_raise_after_one", "5"),
    ("broken_none_after_one", "4"),
    ("broken_raise_always_uint", "0"),
    ("broken_raise_always_str", ""),
    ("broken_sys_exit", "0"),
    ("broken_none_string", ""),
    ("broken_wrong_type_dict", "0"),
    ("broken_unparsable_str", "0"),
    ("broken_negative_uint", "0"),
    ("broken_int_too_big", "0"),
];

/// Metrics of refused modules and descriptors: never in the XML.
const REFUSED: &[&str] = &[
    "broken_py2_syntax",
    "broken_missing_import",
    "broken_init_no_args",
    "broken_no_callback",
    "broken_callback_not_callable",
    "broken_bogus_type",
    "broken_no_value_type",
    "broken_json_shadow",
];

/// An extra module counting gmond's calls, so the test knows how many
/// collection rounds have passed (collect_every = 1).
const ROUNDS_PY: &str = r#"
_calls = 0

def handler(name):
    global _calls
    _calls += 1
    return _calls

def metric_init(params):
    return [{"name": "iso_rounds", "call_back": handler, "time_max": 60,
             "value_type": "uint", "units": "calls", "slope": "positive",
             "format": "%u", "description": "collection rounds"}]
"#;

const ROUNDS_PYCONF: &str = r#"
modules { module { name = "iso_rounds" language = "python" } }
collection_group {
  collect_every = 1
  time_threshold = 1
  metric { name = "iso_rounds" }
}
"#;

fn rounds(g: &Gmond) -> u64 {
    g.metric("iso_rounds").map_or(0, |m| m.val_f64() as u64)
}

#[test]
fn broken_fixture_is_isolated() {
    let g = GmondBuilder::new()
        .fixture("tests/fixtures/broken")
        .module_file("iso_rounds.py", ROUNDS_PY)
        .pyconf_text("iso_rounds", ROUNDS_PYCONF)
        .start();
    let pid = g.pid();
    let started = Instant::now();

    // Every served metric shows up with its value.
    for (name, val) in SERVED {
        let m = g.wait_metric(name, FIRST_VALUES);
        gmond_assert_eq!(g, m.val, *val, "VAL of {name}");
    }
    let x = g.xml();
    let q = x.metric("broken_quote_units").unwrap();
    gmond_assert_eq!(g, q.units, "in'ch");
    gmond_assert_eq!(g, q.extra("DESC"), Some("a 'quoted' description"));
    gmond_assert_eq!(g, x.metric("broken_fmt_s_on_uint").unwrap().type_, "uint32");
    gmond_assert_eq!(g, x.metric("broken_fmt_d_on_float").unwrap().type_, "float");
    gmond_assert_eq!(g, x.metric("broken_uint8_type").unwrap().type_, "uint32");
    gmond_assert_eq!(g, x.metric("broken_int_too_big").unwrap().type_, "int32");
    gmond_assert_eq!(
        g,
        x.metric("broken_raise_always_str").unwrap().type_,
        "string"
    );
    gmond_assert_eq!(
        g,
        x.metric("broken_healthy_ok").unwrap().extras("GROUP"),
        vec!["healthy"]
    );

    // Over several collection rounds: gmond stays up (same pid), the kept
    // values never change (no fabricated zero for raise_after_one), the
    // values are re-sent (TN stays small) and refused metrics stay away.
    let first_round = rounds(&g);
    let mut samples = 0;
    while rounds(&g) < first_round + 6 || started.elapsed() < secs(6) {
        gmond_assert!(g, g.is_running(), "gmond died during collection");
        gmond_assert!(
            g,
            started.elapsed() < secs(60),
            "iso_rounds did not advance by 6 within 60 s (at {})",
            rounds(&g)
        );
        let x = g.xml();
        for (name, val) in SERVED {
            let m = x
                .metric(name)
                .unwrap_or_else(|| g.fail(&format!("{name} vanished from the XML")));
            gmond_assert_eq!(g, m.val, *val, "VAL of {name} after {samples} samples");
        }
        for name in ["broken_raise_after_one", "broken_none_after_one"] {
            let tn = x.metric(name).unwrap().tn;
            gmond_assert!(g, tn <= 5, "{name} is no longer re-sent (TN {tn})");
        }
        for name in REFUSED {
            gmond_assert!(g, x.metric(name).is_none(), "refused {name} is in the XML");
        }
        samples += 1;
        thread::sleep(Duration::from_millis(500));
    }
    gmond_assert!(g, samples >= 5);
    gmond_assert!(g, g.is_running(), "gmond exited");
    gmond_assert_eq!(g, g.pid(), pid);

    // Exactly the expected metric names, nothing from a refused module.
    let names: BTreeSet<String> = g
        .xml()
        .metric_names()
        .into_iter()
        .map(String::from)
        .collect();
    let mut expected: BTreeSet<String> = SERVED.iter().map(|(n, _)| n.to_string()).collect();
    expected.insert("iso_rounds".into());
    gmond_assert_eq!(g, names, expected, "metric names in the XML");

    // --- the log ---------------------------------------------------------
    // Module-level failures.
    expect_message(
        &g,
        "error",
        "bad_py2_syntax",
        &[
            "import failed; the module is skipped",
            "written for Python 2",
        ],
        &[
            &format!("File \"{}\", line 3", module_path(&g, "bad_py2_syntax")),
            "SyntaxError: Missing parentheses in call to 'print'",
        ],
    );
    expect_message(
        &g,
        "error",
        "bad_missing_import",
        &["import failed; the module is skipped"],
        &[
            "Traceback (most recent call last):",
            &format!("File \"{}\", line", module_path(&g, "bad_missing_import")),
            "ModuleNotFoundError: No module named 'modpython_fixture_no_such_package'",
        ],
    );
    expect_message(
        &g,
        "error",
        "bad_no_metric_init",
        &["has no metric_init(params) function; the module is skipped"],
        &[],
    );
    expect_message(
        &g,
        "error",
        "bad_init_raises",
        &["metric_init raised an exception; the module is skipped"],
        &[
            "Traceback (most recent call last):",
            &format!(
                "File \"{}\", line 9, in metric_init",
                module_path(&g, "bad_init_raises")
            ),
            "raise RuntimeError(\"boom from bad_init_raises.metric_init\")",
            "RuntimeError: boom from bad_init_raises.metric_init",
        ],
    );
    expect_message(
        &g,
        "error",
        "bad_init_no_args",
        &["metric_init raised an exception; the module is skipped"],
        &["TypeError: metric_init() takes 0 positional arguments but 1 was given"],
    );
    expect_message(
        &g,
        "error",
        "bad_init_returns_none",
        &[
            "metric_init returned None, not a list of metric descriptor dicts; the module is skipped",
        ],
        &[],
    );
    expect_message(
        &g,
        "error",
        "bad_init_returns_str",
        &[
            "metric_init returned a str, not a list of metric descriptor dicts; the module is skipped",
        ],
        &[],
    );
    // The standard library of whichever CPython the host was built against.
    let stdlib_json = format!(
        "the name 'json' is already taken by {}/lib/python{}/json/__init__.py",
        modpython::python::PYTHON_HOME,
        modpython::python::PYTHON_VERSION
    );
    expect_message(
        &g,
        "error",
        "json",
        &[
            stdlib_json.as_str(),
            "a standard-library or installed module",
            "rename",
        ],
        &[],
    );

    // Descriptor-level failures.
    expect_message(
        &g,
        "error",
        "bad_init_mixed_list",
        &["element 0 of metric_init's result is a str, not a descriptor dict; it is skipped"],
        &[],
    );
    expect_message(
        &g,
        "error",
        "bad_desc_no_name",
        &["descriptor 0: the descriptor has no 'name' key; the metric is skipped"],
        &[],
    );
    expect_message(
        &g,
        "error",
        "bad_desc_no_callback",
        &[
            "metric 'broken_no_callback': ",
            "the descriptor has no 'call_back' key",
            "the metric is skipped",
        ],
        &[],
    );
    expect_message(
        &g,
        "error",
        "bad_desc_callback_not_callable",
        &[
            "metric 'broken_callback_not_callable': ",
            "'call_back' must be a callable",
            "not str; the metric is skipped",
        ],
        &[],
    );
    expect_message(
        &g,
        "error",
        "bad_desc_bogus_type",
        &[
            "metric 'broken_bogus_type': ",
            "value_type 'bogus' is not one of string, uint, int, float, double; the metric is skipped",
        ],
        &[],
    );
    expect_message(
        &g,
        "warning",
        "bad_desc_bogus_type",
        &[
            "metric 'broken_uint8_type': ",
            "value_type 'uint8' is not a gmond type; using 'uint'",
        ],
        &[],
    );
    expect_message(
        &g,
        "error",
        "bad_desc_no_value_type",
        &[
            "metric 'broken_no_value_type': ",
            "the descriptor has no 'value_type' key",
            "the metric is skipped",
        ],
        &[],
    );
    expect_message(
        &g,
        "error",
        "bad_dup_b",
        &[
            "metric 'broken_dup_name' is already defined by module 'bad_dup_a'",
            &format!("({})", module_path(&g, "bad_dup_a")),
            "this second definition is refused",
        ],
        &[],
    );
    gmond_assert!(
        g,
        !g.log().contains("[modpython] error: module 'bad_dup_a'"),
        "bad_dup_a (loaded first) must not be reported"
    );

    // Corrected descriptors.
    expect_message(
        &g,
        "warning",
        "bad_format_mismatch",
        &[
            "metric 'broken_fmt_s_on_uint': ",
            "format '%s' does not suit a uint metric",
            "using '%u'",
        ],
        &[],
    );
    expect_message(
        &g,
        "warning",
        "bad_format_mismatch",
        &[
            "metric 'broken_fmt_d_on_float': ",
            "format '%d' does not suit a float metric",
            "using '%f'",
        ],
        &[],
    );
    expect_message(
        &g,
        "warning",
        "bad_format_mismatch",
        &[
            "metric 'broken_fmt_empty_uint': ",
            "format '' does not suit a uint metric",
            "using '%u'",
        ],
        &[],
    );
    expect_message(
        &g,
        "warning",
        "bad_quote_in_units",
        &[
            "metric 'broken_quote_units': ",
            r#"units "in\"ch" contains characters gmond cannot carry"#,
            r#"using "in'ch""#,
        ],
        &[],
    );

    // The summary names every failed module.
    let summary = g
        .log()
        .lines()
        .find(|l| l.contains("Python module(s) loaded from"))
        .map(String::from)
        .unwrap_or_else(|| g.fail("no load summary in the log"));
    gmond_assert!(
        g,
        summary.contains(&format!("loaded from {}", g.modules_dir().display()))
            && summary.contains(
                "8 module(s) failed: bad_init_no_args, bad_init_raises, bad_init_returns_none, \
                 bad_init_returns_str, bad_missing_import, bad_no_metric_init, bad_py2_syntax, json"
            ),
        "unexpected summary: {summary}"
    );

    // Handler failures: module, file, metric, reason, traceback.
    let no_good = "failed (gmond publishes ";
    let kept = "failed (gmond keeps its last good value";
    let always = module_path(&g, "bad_handler_raise_always");
    for metric in ["broken_raise_always_uint", "broken_raise_always_str"] {
        expect_message(
            &g,
            "error",
            "bad_handler_raise_always",
            &[&format!("metric '{metric}' {no_good}")],
            &[
                "Traceback (most recent call last):",
                &format!("File \"{always}\", line 8, in handler"),
                &format!("RuntimeError: bad_handler_raise_always: {metric} always fails"),
            ],
        );
    }
    expect_message(
        &g,
        "error",
        "bad_handler_sys_exit",
        &[&format!("metric 'broken_sys_exit' {no_good}")],
        &[
            "Traceback (most recent call last):",
            "sys.exit(3)",
            "SystemExit: 3",
        ],
    );
    expect_message(
        &g,
        "error",
        "bad_handler_returns_none",
        &[&format!("metric 'broken_none_string' {no_good}")],
        &["the callback returned None instead of a value"],
    );
    expect_message(
        &g,
        "error",
        "bad_handler_returns_none",
        &[&format!("metric 'broken_none_after_one' {kept}")],
        &["the callback returned None instead of a value"],
    );
    expect_message(
        &g,
        "error",
        "bad_handler_raise_after_one",
        &[&format!("metric 'broken_raise_after_one' {kept}")],
        &[
            "Traceback (most recent call last):",
            &format!(
                "File \"{}\", line 14, in handler",
                module_path(&g, "bad_handler_raise_after_one")
            ),
            "ValueError: bad_handler_raise_after_one: call 2 fails",
        ],
    );
    for (metric, reason) in [
        (
            "broken_wrong_type_dict",
            "an object of type dict, which is not a number",
        ),
        ("broken_unparsable_str", "\"12abc\", which is not a number"),
        ("broken_negative_uint", "-1 is outside the uint range"),
        (
            "broken_int_too_big",
            "1099511627776 is outside the int range",
        ),
    ] {
        expect_message(
            &g,
            "error",
            "bad_handler_wrong_type",
            &[&format!("metric '{metric}' {no_good}")],
            &[reason],
        );
    }

    // Repeats are not logged on every call: one report per failing metric
    // after well over 5 rounds.
    gmond_assert!(g, rounds(&g) >= first_round + 5);
    for metric in [
        "broken_raise_always_uint",
        "broken_raise_always_str",
        "broken_sys_exit",
        "broken_none_string",
        "broken_none_after_one",
        "broken_raise_after_one",
        "broken_wrong_type_dict",
        "broken_unparsable_str",
        "broken_negative_uint",
        "broken_int_too_big",
    ] {
        gmond_assert_eq!(
            g,
            g.log_count(&format!("metric '{metric}' failed")),
            1,
            "{metric}'s failure is logged more than once (or never)"
        );
    }
    // Nothing from the healthy modules, and no stray errors at shutdown.
    for healthy in ["broken_healthy", "iso_rounds", "bad_dup_a"] {
        gmond_assert!(
            g,
            !g.log().contains(&format!("error: module '{healthy}'")),
            "an error names the healthy module {healthy}"
        );
    }
    gmond_assert!(g, g.is_running(), "gmond exited");
    gmond_assert!(g, started.elapsed() >= secs(5));
    let before_stop = g.log().len();
    g.signal(libc::SIGTERM);
    gmond_assert_eq!(g, g.wait_exit(secs(10)).and_then(|s| s.code()), Some(0));
    let tail = g.log()[before_stop..].to_string();
    gmond_assert!(
        g,
        !tail.contains("error") && !tail.contains("AttributeError"),
        "errors at shutdown:\n{tail}"
    );
}

// ---------------------------------------------------------------------------
// Inline cases
// ---------------------------------------------------------------------------

const INLINE_PY: &str = r#"
import sys

def kbd(name):
    raise KeyboardInterrupt("kbd from iso_inline")

def as_bytes(name):
    return b'12'

def nan(name):
    return float('nan')

def huge(name):
    return 1e300

def chatty(name):
    print("iso_inline chatty handler says hello")
    sys.stdout.flush()
    print("iso_inline chatty to stderr", file=sys.stderr)
    return 9

def ok(name):
    return 1

PARAMS = None

def params_keys(name):
    return ",".join(sorted(PARAMS))

def metric_init(params):
    global PARAMS
    PARAMS = dict(params)
    print("iso_inline metric_init prints to stdout")
    common = {"time_max": 60, "units": "", "slope": "both",
              "description": "iso_inline"}
    return [
        dict(common, name="iso_kbd", call_back=kbd, value_type="uint", format="%u"),
        dict(common, name="iso_bytes", call_back=as_bytes, value_type="uint", format="%u"),
        dict(common, name="iso_nan", call_back=nan, value_type="double", format="%f"),
        dict(common, name="iso_huge", call_back=huge, value_type="float", format="%f"),
        dict(common, name="iso_chatty", call_back=chatty, value_type="uint", format="%u"),
        dict(common, name='iso_bad"quote', call_back=ok, value_type="uint", format="%u"),
        dict(common, name="iso_ok", call_back=ok, value_type="uint", format="%u"),
        dict(common, name="iso_params", call_back=params_keys, value_type="string",
             format="%s", slope="zero"),
    ]
"#;

const INLINE_PYCONF: &str = r#"
modules {
  module {
    name = "iso_inline"
    language = "python"
    param novalue { }
    param given { value = "yes" }
  }
}
collection_group {
  collect_every = 1
  time_threshold = 1
  metric { name = "iso_kbd" }
  metric { name = "iso_bytes" }
  metric { name = "iso_nan" }
  metric { name = "iso_huge" }
  metric { name = "iso_chatty" }
  metric { name = "iso_ok" }
  metric { name = "iso_params" }
}
"#;

#[test]
fn inline_failure_cases() {
    let g = GmondBuilder::new()
        .module_file("iso_inline.py", INLINE_PY)
        .pyconf_text("iso_inline", INLINE_PYCONF)
        .start();
    let pid = g.pid();
    let path = module_path(&g, "iso_inline");

    // A param without a value: gmond survives, the param is left out, and
    // a warning names it.
    let p = g.wait_metric("iso_params", FIRST_VALUES);
    gmond_assert_eq!(g, p.val, "given");
    expect_message(
        &g,
        "warning",
        "iso_inline",
        &["param 'novalue' has no value", "left out"],
        &[],
    );

    gmond_assert_eq!(g, g.wait_metric("iso_ok", FIRST_VALUES).val, "1");
    // bytes convert like a numeric string.
    gmond_assert_eq!(g, g.wait_metric("iso_bytes", FIRST_VALUES).val, "12");
    // Printing to stdout/stderr in init and in a handler is harmless.
    gmond_assert_eq!(g, g.wait_metric("iso_chatty", FIRST_VALUES).val, "9");
    // KeyboardInterrupt is an ordinary handler failure, not a shutdown.
    gmond_assert_eq!(g, g.wait_metric("iso_kbd", FIRST_VALUES).val, "0");
    // NaN and an overflowing float are errors; no good value, so zero.
    let nan = g.wait_metric("iso_nan", FIRST_VALUES);
    gmond_assert_eq!(g, nan.val_f64(), 0.0, "iso_nan VAL {:?}", nan.val);
    let huge = g.wait_metric("iso_huge", FIRST_VALUES);
    gmond_assert_eq!(g, huge.val_f64(), 0.0, "iso_huge VAL {:?}", huge.val);
    gmond_assert_eq!(g, huge.type_, "float");

    let no_good = "failed (gmond publishes ";
    expect_message(
        &g,
        "error",
        "iso_inline",
        &[&format!("metric 'iso_kbd' {no_good}")],
        &[
            "Traceback (most recent call last):",
            &format!("File \"{path}\", line"),
            "KeyboardInterrupt: kbd from iso_inline",
        ],
    );
    expect_message(
        &g,
        "error",
        "iso_inline",
        &[&format!("metric 'iso_nan' {no_good}")],
        &["NaN cannot be published as a double metric"],
    );
    expect_message(
        &g,
        "error",
        "iso_inline",
        &[&format!("metric 'iso_huge' {no_good}")],
        &["outside the range of a float metric; declare it double"],
    );
    // A '"' in a metric name: refused at init with an error naming it.
    expect_message(
        &g,
        "error",
        "iso_inline",
        &[
            r#"name "iso_bad\"quote" contains '"'"#,
            "cannot carry in a metric name",
        ],
        &[],
    );

    // Keep collecting for a while: at every look, the refused name is
    // absent, the values are the same, no failure is logged a second time
    // and the healthy metrics are never reported.
    let kept = [
        ("iso_ok", "1"),
        ("iso_bytes", "12"),
        ("iso_chatty", "9"),
        ("iso_kbd", "0"),
    ];
    g.hold_for(
        INLINE_STEADY,
        "no quote metric; iso_* values kept; failures logged once; healthy metrics not reported",
        |x| {
            let log = g.log();
            x.metric_names().iter().all(|n| !n.contains("quote"))
                && kept
                    .iter()
                    .all(|(name, val)| x.metric(name).is_some_and(|m| m.val == *val))
                && ["iso_kbd", "iso_nan", "iso_huge"]
                    .iter()
                    .all(|m| log.matches(&format!("metric '{m}' failed")).count() == 1)
                && ["iso_ok", "iso_bytes", "iso_chatty", "iso_params"]
                    .iter()
                    .all(|m| !log.contains(&format!("metric '{m}'")))
        },
    );
    gmond_assert!(g, g.is_running(), "gmond exited");
    gmond_assert_eq!(g, g.pid(), pid);
    g.signal(libc::SIGTERM);
    gmond_assert_eq!(g, g.wait_exit(secs(10)).and_then(|s| s.code()), Some(0));
}
