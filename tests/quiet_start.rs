//! Quiet starts (issue 15): a correction many of a module's metrics share
//! is one line in gmond's log, not one per metric, at every start and in
//! `gmond -m`; a descriptor metric_init returns twice is a warning, not an
//! error. Every test counts the module's lines exactly.

mod common;
#[path = "common/pymod.rs"]
mod pymod;

use std::time::Duration;

use common::{Gmond, GmondBuilder, secs};
use pymod::{module, pyconf};

const FIRST_VALUES: Duration = Duration::from_secs(30);

/// 40 uint metrics declaring '%d'; the first returns 2^32 - 1, which '%d'
/// would have shown as -1.
const FORTY_D: &str = r#"
def value(name):
    return 4294967295 if name == "qs_d_00" else 7

def metric_init(params):
    return [desc("qs_d_%02d" % i, value, format="%d") for i in range(40)]
"#;

const SUMMARY: &str = "40 metrics declare format '%d' for uint values (qs_d_00, qs_d_01, qs_d_02, …); \
     printed with '%u' instead, since '%d' shows values from 2147483648 up as negative numbers \
     (4294967295 as -1)";

/// gmond's lines about `module` (its warnings, errors and their
/// continuation lines), in order.
fn lines_about(g: &Gmond, module: &str) -> Vec<String> {
    let id = g.module_ref(module);
    g.log()
        .lines()
        .filter(|l| l.contains(&id))
        .map(str::to_owned)
        .collect()
}

#[test]
fn forty_metrics_with_the_same_bad_format_give_one_line() {
    let g = GmondBuilder::new()
        .module_file("qs_d.py", &module("qs", FORTY_D))
        .pyconf_text("qs_d", &pyconf(&[("qs_d", "")], &["^qs_d_"]))
        .start();
    // Printed with '%u': the largest uint, not -1.
    gmond_assert_eq!(g, g.wait_metric("qs_d_00", FIRST_VALUES).val, "4294967295");
    gmond_assert_eq!(g, g.wait_metric("qs_d_39", FIRST_VALUES).val, "7");
    let expected = format!("[modpython] warning: {}: {SUMMARY}", g.module_ref("qs_d"));
    gmond_assert_eq!(g, lines_about(&g, "qs_d"), vec![expected]);
    gmond_assert_eq!(g, g.log_count("metric 'qs_d_"), 0);
}

#[test]
fn gmond_m_prints_the_same_summary() {
    let g = GmondBuilder::new()
        .module_file("qs_d.py", &module("qs", FORTY_D))
        .pyconf_text("qs_d", &pyconf(&[("qs_d", "")], &["^qs_d_"]))
        .arg("-m")
        .start();
    let status = g.wait_exit(secs(20));
    gmond_assert_eq!(
        g,
        status.and_then(|s| s.code()),
        Some(0),
        "gmond -m exit status"
    );
    let expected = format!("[modpython] warning: {}: {SUMMARY}", g.module_ref("qs_d"));
    gmond_assert_eq!(g, lines_about(&g, "qs_d"), vec![expected]);
    // The metrics are listed, each once, corrected or not.
    let log = g.log();
    for i in [0, 39] {
        let name = format!("qs_d_{i:02}");
        gmond_assert_eq!(
            g,
            log.lines()
                .filter(|l| l.split_whitespace().next() == Some(name.as_str()))
                .count(),
            1,
            "gmond -m lists {name} once"
        );
    }
}

#[test]
fn each_metrics_own_line_is_logged_at_debug_level_2() {
    let g = GmondBuilder::new()
        .module_file("qs_d.py", &module("qs", FORTY_D))
        .pyconf_text("qs_d", &pyconf(&[("qs_d", "")], &["^qs_d_"]))
        .arg("-m")
        .debug_level(2)
        .start();
    gmond_assert!(g, g.wait_exit(secs(20)).is_some(), "gmond -m did not exit");
    let id = g.module_ref("qs_d");
    gmond_assert_eq!(
        g,
        g.log_count(&format!("[modpython] warning: {id}: {SUMMARY}")),
        1
    );
    for i in 0..40 {
        let own = format!(
            "[modpython] {id}: metric 'qs_d_{i:02}': format '%d' does not suit a uint metric: \
             '%d' shows values from 2147483648 up as negative numbers (4294967295 as -1); using '%u'"
        );
        gmond_assert_eq!(g, g.log_count(&own), 1, "{own}");
    }
}

/// One descriptor twice: a dict, and a copy of it built apart
/// whose callback is the same object's bound method (a new object each
/// time it is read, but the same method).
const DUP_SAME: &str = r#"
class Source:
    def read(self, name):
        return 5

source = Source()

def metric_init(params):
    d = desc("qs_same_a", source.read)
    return [d, desc("qs_same_b", source.read), dict(d, call_back=source.read)]
"#;

#[test]
fn a_descriptor_returned_twice_identically_is_one_warning() {
    let g = GmondBuilder::new()
        .module_file("qs_same.py", &module("qs", DUP_SAME))
        .pyconf_text("qs_same", &pyconf(&[("qs_same", "")], &["^qs_same_"]))
        .start();
    gmond_assert_eq!(g, g.wait_metric("qs_same_a", FIRST_VALUES).val, "5");
    gmond_assert_eq!(g, g.wait_metric("qs_same_b", FIRST_VALUES).val, "5");
    let expected = format!(
        "[modpython] warning: {}: metric 'qs_same_a' is returned twice by metric_init, \
         identically; the first is used",
        g.module_ref("qs_same")
    );
    gmond_assert_eq!(g, lines_about(&g, "qs_same"), vec![expected]);
}

/// Two copies that differ in their callback and units: the first is used.
const DUP_DIFF: &str = r#"
def value_a(name):
    return 1

def value_b(name):
    return 2

def metric_init(params):
    return [desc("qs_diff_a", value_a, units="B"), desc("qs_diff_a", value_b, units="KB")]
"#;

#[test]
fn a_descriptor_returned_twice_differently_names_the_difference() {
    let g = GmondBuilder::new()
        .module_file("qs_diff.py", &module("qs", DUP_DIFF))
        .pyconf_text("qs_diff", &pyconf(&[("qs_diff", "")], &["^qs_diff_"]))
        .start();
    let m = g.wait_metric("qs_diff_a", FIRST_VALUES);
    gmond_assert_eq!(g, (m.val.as_str(), m.units.as_str()), ("1", "B"));
    let expected = format!(
        "[modpython] warning: {}: metric 'qs_diff_a' is returned twice by metric_init, \
         differently: 'call_back' is function value_a in the first and function value_b in the \
         second, 'units' is 'B' in the first and 'KB' in the second; the first is used",
        g.module_ref("qs_diff")
    );
    gmond_assert_eq!(g, lines_about(&g, "qs_diff"), vec![expected]);
}
