//! A failure that comes and goes is reported, not replayed: a metric that
//! fails every other call gets its first failure (with the traceback) and
//! its first recovery, then nothing more until the ten-minute summary
//! (`engine::failures`; the summary itself is covered by its unit tests,
//! since a test cannot wait ten minutes).

mod common;
#[path = "common/pymod.rs"]
mod pymod;

use std::time::Duration;

use common::{GmondBuilder, secs};

#[test]
fn a_metric_failing_every_other_call_is_not_logged_every_round() {
    let body = r#"
calls = 0
def flappy(name):
    global calls
    calls += 1
    if calls % 2 == 0:
        raise ValueError("flappy call %d fails" % calls)
    return calls
def steady(name):
    return 1
def metric_init(params):
    return [desc("flap_val", flappy), desc("flap_steady", steady)]
"#;
    let g = GmondBuilder::new()
        .module_file("flap.py", &pymod::module("flap", body))
        .pyconf_text("flap", &pymod::pyconf(&[("flap", "")], &["^flap_"]))
        .start();
    let metric = |needle: &str| g.log_count(needle);
    // The first failure, in full, and the first recovery.
    g.wait_line(
        &["metric 'flap_val' failed (gmond keeps its last good value"],
        secs(20),
    );
    g.wait_line(
        &["metric 'flap_val' recovered after 1 failed call(s)"],
        secs(10),
    );
    // Then at least 15 more failures (one a round, every second), and not
    // one more line about the metric: before, each round added two.
    let start = std::time::Instant::now();
    g.wait_metric_where("flap_val", |m| m.val_f64() >= 33.0, secs(60));
    let ran = start.elapsed();
    gmond_assert!(g, ran >= Duration::from_secs(10), "too fast: {ran:?}");
    gmond_assert_eq!(g, metric("metric 'flap_val'"), 2, "lines about flap_val");
    gmond_assert_eq!(g, metric("Traceback"), 1);
    gmond_assert_eq!(
        g,
        metric("failures in a row"),
        0,
        "alternating is never backed off"
    );
    // The healthy neighbour is untouched.
    gmond_assert_eq!(
        g,
        g.metric("flap_steady").map(|m| m.val),
        Some("1".to_owned())
    );
}
