//! The `good` fixture against the real gmond: every metric of
//! tests/fixtures/README.md's `good/` tables, with its value and metadata.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Gmond, GmondBuilder, Metric, Xml, secs};

const GOOD: &str = "tests/fixtures/good";
const DYN_COUNT: usize = 1500;
const TIMEOUT: Duration = Duration::from_secs(20);

/// Every metric of the good fixture except `good_dyn_*`.
const GOOD_METRICS: [&str; 30] = [
    "good_string",
    "good_uint",
    "good_int",
    "good_float",
    "good_double",
    "good_upper_case",
    "good_slope_positive",
    "good_shape_dict",
    "good_shape_tuple_a",
    "good_shape_tuple_b",
    "good_param_echo",
    "good_param_keys",
    "good_param_count",
    "good_param_all_str",
    "good_param_number",
    "good_helper_value",
    "good_cext_modules",
    "good_cext_count",
    "good_subprocess_echo",
    "good_thread_ticks",
    "good_conv_uint_str",
    "good_conv_float_str",
    "good_conv_uint_bool",
    "good_conv_int_negfloat",
    "good_conv_uint_float",
    "good_conv_double_int",
    "good_conv_str_int",
    "good_conv_str_utf8",
    "good_conv_str_quote",
    "good_ganglia_debug",
];

/// Metrics that must never exist.
const ABSENT: [&str; 2] = ["good_helper_trap", "good_disabled_never"];

fn dyn_name(i: usize) -> String {
    format!("good_dyn_{i:04}")
}

/// Starts the good fixture with a second, buffered UDP channel pair.
///
/// With `send_metadata_interval = 0` gmond sends each metric's metadata
/// once; good_dyn's 1500 metadata and 1500 value packets arrive in one burst
/// and overflow the harness's unbuffered receive socket, and a metric whose
/// metadata packet was dropped never shows up. A second send/receive pair
/// with `buffer = 4194304` (net.core.rmem_max here; more makes gmond exit)
/// carries everything. The harness's own channel can't be changed from
/// outside, so the extra pair is added with `extra_config`.
fn start_good(extra: impl Fn(GmondBuilder) -> GmondBuilder) -> Gmond {
    let mut last = String::new();
    for _ in 0..4 {
        let port = common::free_udp_port();
        let g = extra(GmondBuilder::new().fixture(GOOD))
            .extra_config(&format!(
                "udp_send_channel {{ host = 127.0.0.1 port = {port} }}\n\
                 udp_recv_channel {{ bind = 127.0.0.1 port = {port} buffer = 4194304 }}"
            ))
            .start();
        if g.is_running() || !g.log().contains("Unable to create") {
            return g;
        }
        // Someone else took our extra port between the probe and gmond's bind.
        last = g.log();
    }
    panic!("gmond could not bind its extra UDP channel:\n{last}");
}

fn all_present(x: &Xml) -> bool {
    GOOD_METRICS.iter().all(|n| x.metric(n).is_some())
        && (0..DYN_COUNT).all(|i| x.metric(&dyn_name(i)).is_some())
}

fn set<'a>(items: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    items.into_iter().map(str::to_string).collect()
}

/// Checks the attributes and metadata of one metric.
#[allow(clippy::too_many_arguments)]
#[track_caller]
fn check(
    g: &Gmond,
    x: &Xml,
    name: &str,
    val: &str,
    type_: &str,
    units: &str,
    slope: &str,
    groups: &[&str],
) -> Metric {
    let m = match x.metric(name) {
        Some(m) => m.clone(),
        None => g.fail(&format!("metric {name} missing from the XML")),
    };
    gmond_assert_eq!(g, m.val, val, "{name}: VAL");
    gmond_assert_eq!(g, m.type_, type_, "{name}: TYPE");
    gmond_assert_eq!(g, m.units, units, "{name}: UNITS");
    gmond_assert_eq!(g, m.slope, slope, "{name}: SLOPE");
    gmond_assert_eq!(g, m.dmax, 0, "{name}: DMAX");
    gmond_assert_eq!(
        g,
        m.extras("GROUP").len(),
        groups.len(),
        "{name}: GROUP count"
    );
    gmond_assert_eq!(
        g,
        set(m.extras("GROUP")),
        set(groups.iter().copied()),
        "{name}: GROUP set"
    );
    m
}

#[track_caller]
fn check_desc(g: &Gmond, m: &Metric, desc: &str) {
    gmond_assert_eq!(g, m.extras("DESC"), vec![desc], "{}: DESC", m.name);
}

#[track_caller]
fn check_tmax(g: &Gmond, m: &Metric, tmax: u64) {
    gmond_assert_eq!(g, m.tmax, tmax, "{}: TMAX", m.name);
}

/// One gmond with the whole good fixture: every metric, its metadata, the
/// log, the thread and the absent ones.
#[test]
fn good_fixture_publishes_every_metric() {
    let g = start_good(|b| b);
    let x = g.wait_until(|x| all_present(x).then(|| x.clone()), TIMEOUT);

    // --- good_types: one metric per type, groups, extra keys, time_max.
    let types = [
        // name, VAL, TYPE, UNITS, SLOPE, TMAX
        ("good_string", "fixture-string", "string", "", "zero", 60),
        ("good_uint", "4000000000", "uint32", "count", "both", 90),
        ("good_int", "-42", "int32", "degrees", "both", 60),
        ("good_float", "2.50", "float", "ratio", "both", 60),
        ("good_double", "3.250000", "double", "seconds", "both", 60),
        ("good_upper_case", "77", "uint32", "", "both", 60),
        ("good_slope_positive", "5", "uint32", "", "positive", 60),
    ];
    for (name, val, type_, units, slope, tmax) in types {
        let m = check(
            &g,
            &x,
            name,
            val,
            type_,
            units,
            slope,
            &["alpha", "beta", "gamma"],
        );
        check_tmax(&g, &m, tmax);
        check_desc(&g, &m, &format!("good fixture: {name}"));
        gmond_assert_eq!(g, m.extras("source"), vec!["fixture"], "{name}: source");
        gmond_assert_eq!(g, m.extras("revision"), vec!["3"], "{name}: revision");
    }

    // --- Return shapes: a bare dict, a tuple.
    for (name, val) in [
        ("good_shape_dict", "1"),
        ("good_shape_tuple_a", "1"),
        ("good_shape_tuple_b", "2"),
    ] {
        let m = check(&g, &x, name, val, "uint32", "", "zero", &["shapes"]);
        check_tmax(&g, &m, 60);
    }
    check_desc(
        &g,
        x.metric("good_shape_dict").unwrap(),
        "metric_init returned a bare dict",
    );
    check_desc(
        &g,
        x.metric("good_shape_tuple_b").unwrap(),
        "metric_init returned a tuple",
    );

    // --- Params.
    for (name, val, type_) in [
        ("good_param_echo", "hi there", "string"),
        ("good_param_keys", "MixedCase,greeting,number", "string"),
        ("good_param_count", "3", "uint32"),
        ("good_param_all_str", "1", "uint32"),
        ("good_param_number", "42", "int32"),
    ] {
        let m = check(&g, &x, name, val, type_, "", "zero", &["params"]);
        check_desc(&g, &m, "params passed to metric_init");
    }
    let log = g.log();
    let novalue_warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("good_params") && l.contains("novalue"))
        .collect();
    gmond_assert!(
        g,
        novalue_warnings.len() == 1 && novalue_warnings[0].contains("[modpython] warning"),
        "expected one `[modpython] warning` naming good_params and novalue, got {novalue_warnings:?}"
    );

    // --- Helper module imported by a sibling; the helper itself is no module.
    let m = check(
        &g,
        &x,
        "good_helper_value",
        "from-helper",
        "string",
        "",
        "zero",
        &["imports"],
    );
    check_desc(&g, &m, "value imported from good_helper.py");

    // --- C extensions and subprocesses.
    check(
        &g,
        &x,
        "good_cext_modules",
        "json,ctypes,decimal,sqlite3,ssl",
        "string",
        "",
        "zero",
        &["cext"],
    );
    check(
        &g,
        &x,
        "good_cext_count",
        "5",
        "uint32",
        "",
        "zero",
        &["cext"],
    );
    check(
        &g,
        &x,
        "good_subprocess_echo",
        "7",
        "int32",
        "",
        "zero",
        &["subprocess"],
    );

    // --- The ganglia module, at debug level 0.
    let m = check(
        &g,
        &x,
        "good_ganglia_debug",
        "0",
        "int32",
        "",
        "zero",
        &["ganglia"],
    );
    check_desc(&g, &m, "ganglia.get_debug_msg_level()");

    // --- Conversions: each value converted to the declared type.
    let utf8_expected = format!("ab{}", "?".repeat(61));
    let conversions = [
        ("good_conv_uint_str", "123", "uint32"),
        ("good_conv_float_str", "1500.0", "float"),
        ("good_conv_uint_bool", "1", "uint32"),
        ("good_conv_int_negfloat", "-2", "int32"),
        ("good_conv_uint_float", "3", "uint32"),
        ("good_conv_double_int", "7.0", "double"),
        ("good_conv_str_int", "42", "string"),
        // Non-ASCII characters of string values become `?` (gmond 3.7.2
        // would write their bytes into the XML as malformed character
        // references), then the value is cut to 63 bytes.
        ("good_conv_str_utf8", utf8_expected.as_str(), "string"),
        ("good_conv_str_quote", "say 'hi'", "string"),
    ];
    for (name, val, type_) in conversions {
        let m = check(&g, &x, name, val, type_, "", "both", &["convert"]);
        check_desc(&g, &m, &format!("value conversion: {name}"));
    }
    gmond_assert_eq!(g, utf8_expected.len(), 63);

    // --- good_dyn: 1500 metrics, VAL = index.
    for i in 0..DYN_COUNT {
        let name = dyn_name(i);
        let m = check(
            &g,
            &x,
            &name,
            &i.to_string(),
            "uint32",
            "",
            "zero",
            &["dyn"],
        );
        check_desc(&g, &m, "dynamic metric");
    }
    let dyn_count = x
        .metric_names()
        .iter()
        .filter(|n| n.starts_with("good_dyn_"))
        .count();
    gmond_assert_eq!(g, dyn_count, DYN_COUNT, "number of good_dyn_ metrics");

    // --- Metrics that must not exist, and nothing that is not ours.
    for name in ABSENT {
        gmond_assert!(g, x.metric(name).is_none(), "{name} must not exist");
    }
    let unexpected: Vec<&str> = x
        .metric_names()
        .into_iter()
        .filter(|n| !n.starts_with("good_dyn_") && !GOOD_METRICS.contains(n))
        .collect();
    gmond_assert!(
        g,
        unexpected.is_empty(),
        "unexpected metrics {unexpected:?}"
    );

    // --- enabled = no: never imported, never mentioned by the host.
    gmond_assert!(
        g,
        !g.modules_dir().join("good_disabled.IMPORTED").exists(),
        "good_disabled.py was imported although its block says enabled = no"
    );

    // --- The thread keeps ticking between gmond's calls (20 ticks/s).
    thread_ticks_between_calls(&g);

    // --- The log: no host error; only gmond mentions good_disabled.
    let log = g.log();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("[modpython] error"))
        .collect();
    gmond_assert!(g, errors.is_empty(), "host errors in the log: {errors:?}");
    let disabled: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("good_disabled"))
        .filter(|l| {
            !l.starts_with("Unable to find the metric information for 'good_disabled_never'")
        })
        .collect();
    gmond_assert!(
        g,
        disabled.is_empty(),
        "log lines mention the disabled module: {disabled:?}"
    );
    gmond_assert!(g, g.is_running(), "gmond is no longer running");
}

/// Two XML reads at least 2 s apart must differ by at least 10 ticks. If
/// Python threads only ran during handler calls (the GIL held while gmond
/// has control), the count would grow by about one per second.
fn thread_ticks_between_calls(g: &Gmond) {
    let first = g.wait_metric("good_thread_ticks", TIMEOUT);
    gmond_assert_eq!(g, first.type_, "uint32", "good_thread_ticks: TYPE");
    gmond_assert_eq!(g, first.units, "ticks", "good_thread_ticks: UNITS");
    gmond_assert_eq!(g, first.slope, "positive", "good_thread_ticks: SLOPE");
    gmond_assert_eq!(
        g,
        first.extras("GROUP"),
        vec!["threads"],
        "good_thread_ticks: GROUP"
    );
    let v1 = first.val_f64();
    let t1 = Instant::now();
    let limit = secs(8);
    loop {
        let v2 = g.wait_metric("good_thread_ticks", TIMEOUT).val_f64();
        let elapsed = t1.elapsed();
        if elapsed >= secs(2) && v2 - v1 >= 10.0 {
            return;
        }
        if elapsed > limit {
            g.fail(&format!(
                "good_thread_ticks went from {v1} to {v2} in {elapsed:?}: the \
                 module's thread does not run between gmond's calls (the GIL \
                 is not released?)"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `ganglia.get_debug_msg_level()` follows gmond's debug level. Only the
/// good_ganglia module runs here, so the level-2 trace stays small.
#[test]
fn ganglia_debug_level_follows_gmond() {
    let g = GmondBuilder::new()
        .debug_level(2)
        .module_file(
            "good_ganglia.py",
            &std::fs::read_to_string(common::repo_path("tests/fixtures/good/good_ganglia.py"))
                .expect("read good_ganglia.py"),
        )
        .pyconf_text(
            "good_ganglia",
            r#"
modules { module { name = "good_ganglia" language = "python" } }
collection_group {
  collect_every = 1
  time_threshold = 2
  metric { name = "good_ganglia_debug" }
}
"#,
        )
        .start();
    let m = g.wait_metric("good_ganglia_debug", TIMEOUT);
    gmond_assert_eq!(g, m.val, "2");
    gmond_assert_eq!(g, m.type_, "int32");
    gmond_assert!(
        g,
        !g.log().contains("[modpython] error"),
        "host error in the log"
    );
}

/// `gmond -m` runs every metric_init, lists the metrics and exits 0.
#[test]
fn gmond_m_lists_good_metrics() {
    let g = GmondBuilder::new().fixture(GOOD).arg("-m").start();
    let status = g.wait_exit(TIMEOUT);
    gmond_assert!(g, status.is_some(), "gmond -m did not exit");
    gmond_assert_eq!(
        g,
        status.and_then(|s| s.code()),
        Some(0),
        "gmond -m exit code"
    );

    let log = g.log();
    // One line per metric: `name\tdescription (module python_module)`.
    let listed: BTreeSet<&str> = log
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut missing: Vec<String> = GOOD_METRICS
        .iter()
        .filter(|n| !listed.contains(**n))
        .map(|n| n.to_string())
        .collect();
    missing.extend(
        (0..DYN_COUNT)
            .map(dyn_name)
            .filter(|n| !listed.contains(n.as_str())),
    );
    gmond_assert!(
        g,
        missing.is_empty(),
        "gmond -m does not list {} metric(s), e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    gmond_assert!(g, listed.contains("good_dyn_1499"));
    for name in ABSENT {
        gmond_assert!(g, !listed.contains(name), "gmond -m lists {name}");
    }
    gmond_assert!(
        g,
        !log.contains("[modpython] error"),
        "host error in the gmond -m output"
    );
    gmond_assert!(
        g,
        !g.modules_dir().join("good_disabled.IMPORTED").exists(),
        "gmond -m imported good_disabled.py"
    );
}
