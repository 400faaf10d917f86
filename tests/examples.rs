//! Each module in examples/ runs in the real gmond with its own pyconf and
//! publishes the metrics examples/README.md documents.
//!
//! The example pyconfs use `collect_every = 5` and `time_threshold = 10`,
//! as a real deployment would; gmond collects once at start-up, so the
//! metrics appear at once, and new values take up to 10 s.

mod common;

use std::time::Duration;

use common::{Gmond, GmondBuilder, Metric, Xml};

const TIMEOUT: Duration = Duration::from_secs(30);

/// name, TYPE, UNITS, TITLE (from the pyconf)
type Spec = (&'static str, &'static str, &'static str, &'static str);

/// Waits until every metric of `specs` is present, then checks its type,
/// units, groups, title and description.
#[track_caller]
fn wait_all(g: &Gmond, specs: &[Spec], groups: &[&str]) -> Xml {
    let x = g.wait_until(
        |x| {
            specs
                .iter()
                .all(|(n, ..)| x.metric(n).is_some())
                .then(|| x.clone())
        },
        TIMEOUT,
    );
    for (name, type_, units, title) in specs {
        let m = x.metric(name).unwrap();
        gmond_assert_eq!(g, m.type_, *type_, "{name}: TYPE");
        gmond_assert_eq!(g, m.units, *units, "{name}: UNITS");
        gmond_assert_eq!(g, m.tmax, 60, "{name}: TMAX");
        let mut got = m.extras("GROUP");
        got.sort_unstable();
        let mut want = groups.to_vec();
        want.sort_unstable();
        gmond_assert_eq!(g, got, want, "{name}: GROUP set");
        gmond_assert_eq!(g, m.extras("TITLE"), vec![*title], "{name}: TITLE");
        gmond_assert!(
            g,
            m.extra("DESC").is_some_and(|d| !d.is_empty()),
            "{name}: no DESC in {:?}",
            m.extra
        );
    }
    x
}

#[track_caller]
fn num(g: &Gmond, x: &Xml, name: &str) -> f64 {
    let m: &Metric = x.metric(name).unwrap();
    match m.val.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => v,
        _ => g.fail(&format!("{name}: VAL {:?} is not a finite number", m.val)),
    }
}

#[track_caller]
fn assert_clean_log(g: &Gmond) {
    let log = g.log();
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("[modpython] error") || l.contains("Unable to find the metric"))
        .collect();
    gmond_assert!(g, bad.is_empty(), "errors in the log: {bad:?}");
    gmond_assert!(g, g.is_running(), "gmond is no longer running");
}

/// The `value = "..."` of `param NAME` in a pyconf (the simple layout the
/// examples use).
fn pyconf_param(pyconf: &str, param: &str) -> String {
    let text = std::fs::read_to_string(common::repo_path(pyconf))
        .unwrap_or_else(|e| panic!("read {pyconf}: {e}"));
    let after = text
        .split_once(&format!("param {param} {{"))
        .unwrap_or_else(|| panic!("{pyconf} has no param {param}"))
        .1;
    let value = after
        .split_once("value =")
        .unwrap_or_else(|| panic!("param {param} in {pyconf} has no value"))
        .1
        .trim_start();
    if let Some(quoted) = value.strip_prefix('"') {
        quoted.split('"').next().unwrap_or_default().to_string()
    } else {
        value
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    }
}

#[test]
fn hello() {
    let g = GmondBuilder::new().fixture("examples/hello").start();
    let x = wait_all(
        &g,
        &[
            ("hello_greeting", "string", "", "Greeting"),
            ("hello_uptime", "double", "seconds", "Uptime"),
        ],
        &["examples"],
    );
    let greeting = pyconf_param("examples/hello/hello.pyconf", "greeting");
    gmond_assert_eq!(g, greeting, "Hello from gmond");
    gmond_assert_eq!(g, x.metric("hello_greeting").unwrap().val, greeting);
    gmond_assert_eq!(g, x.metric("hello_greeting").unwrap().slope, "zero");

    let uptime = num(&g, &x, "hello_uptime");
    let now: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    gmond_assert!(
        g,
        uptime > 0.0 && uptime <= now && now - uptime < TIMEOUT.as_secs_f64() + 5.0,
        "hello_uptime {uptime} does not match /proc/uptime {now}"
    );
    gmond_assert_eq!(g, x.metric("hello_uptime").unwrap().slope, "positive");
    assert_clean_log(&g);
}

#[test]
fn proc_rates() {
    let g = GmondBuilder::new().fixture("examples/proc_rates").start();
    let specs: [Spec; 7] = [
        ("proc_rates_cpu_busy", "float", "%", "CPU busy"),
        (
            "proc_rates_ctxt",
            "float",
            "switches/sec",
            "Context switches",
        ),
        ("proc_rates_forks", "float", "forks/sec", "Forks"),
        (
            "proc_rates_net_rx_bytes",
            "float",
            "bytes/sec",
            "Bytes received",
        ),
        (
            "proc_rates_net_tx_bytes",
            "float",
            "bytes/sec",
            "Bytes sent",
        ),
        ("proc_rates_pgfault", "float", "faults/sec", "Page faults"),
        (
            "proc_rates_pgmajfault",
            "float",
            "faults/sec",
            "Major page faults",
        ),
    ];
    let x = wait_all(&g, &specs, &["examples", "proc_rates"]);
    for (name, ..) in specs {
        let v = num(&g, &x, name);
        g.check(v >= 0.0, &format!("{name} = {v} is negative"));
        gmond_assert_eq!(g, x.metric(name).unwrap().slope, "both", "{name}: SLOPE");
        // format %.2f
        let val = &x.metric(name).unwrap().val;
        gmond_assert!(
            g,
            val.split_once('.').is_some_and(|(_, d)| d.len() == 2),
            "{name}: VAL {val:?} is not formatted with %.2f"
        );
    }
    let busy = num(&g, &x, "proc_rates_cpu_busy");
    gmond_assert!(
        g,
        (0.0..=100.0).contains(&busy),
        "proc_rates_cpu_busy = {busy} is not a percentage"
    );
    // The system switches contexts all the time; a rate of exactly zero
    // over the first interval would mean the counters were not read.
    g.wait_metric_where("proc_rates_ctxt", |m| m.val_f64() > 0.0, TIMEOUT);
    assert_clean_log(&g);
}

#[test]
fn background_thread() {
    let g = GmondBuilder::new()
        .fixture("examples/background_thread")
        .start();
    let x = wait_all(
        &g,
        &[
            ("bg_load_one", "float", "load", "Load (1 min, sampled)"),
            (
                "bg_stat_latency",
                "float",
                "microseconds",
                "os.stat latency",
            ),
            ("bg_samples_taken", "uint32", "samples", "Samples taken"),
            ("bg_sample_age", "float", "seconds", "Sample age"),
        ],
        &["examples", "background_thread"],
    );
    let load = num(&g, &x, "bg_load_one");
    g.check(load >= 0.0, &format!("bg_load_one = {load}"));
    let latency = num(&g, &x, "bg_stat_latency");
    g.check(
        (0.0..10_000_000.0).contains(&latency),
        &format!("bg_stat_latency = {latency} µs"),
    );
    // The thread samples every `interval` (2) seconds.
    let age = num(&g, &x, "bg_sample_age");
    gmond_assert!(g, (0.0..30.0).contains(&age), "bg_sample_age = {age}");
    let first = num(&g, &x, "bg_samples_taken");
    g.check(first >= 1.0, &format!("bg_samples_taken = {first}"));
    gmond_assert_eq!(g, x.metric("bg_samples_taken").unwrap().slope, "positive");

    // The thread keeps sampling between gmond's calls.
    g.wait_metric_where("bg_samples_taken", |m| m.val_f64() > first, TIMEOUT);
    assert_clean_log(&g);
}
