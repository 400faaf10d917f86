//! Stuck calls against the real gmond, protected mode, `call_timeout = 2`:
//!
//! * one module holding Python's GIL in C (where no deadline can interrupt
//!   it) costs gmond's loop at most one deadline, not one per module of the
//!   round; its neighbours are not timed out, the log names the holder, and
//!   the neighbours are called again in the first rounds after the hold;
//! * a stuck call that returns late delivers its value as gmond's last good
//!   value; a metric that never had a good value says that gmond publishes 0.
//!
//! Modules are written inline; descriptors come from `pymod::module`.

mod common;
#[path = "common/pymod.rs"]
mod pymod;

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Gmond, GmondBuilder, Xml, secs};

/// The host's deadline for one call in both scenarios (host param).
const CALL_TIMEOUT: f64 = 2.0;
/// How long gilhog holds the GIL: twice the deadline.
const HOLD: f64 = 2.0 * CALL_TIMEOUT;
/// collect_every of the group holding gilhog and the two counters.
const COLLECT_EVERY: f64 = 2.0;
/// How long to wait for the first values of a freshly started gmond.
const FIRST_VALUES: Duration = Duration::from_secs(20);
/// gmond must answer on its XML port this fast, whatever a module does.
const XML_PROMPT: Duration = Duration::from_secs(1);
/// How often the XML is read while watching a stall.
const XML_POLL: Duration = Duration::from_millis(200);

fn module(body: &str) -> String {
    pymod::module("stall", body)
}

/// Seconds since the epoch, as Python's `time.time()` gives them.
fn wall(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// The text of `line` after `before`, a number of seconds and "s; ": in
/// "... did not return within 2.0s; gmond keeps ...", what follows "2.0s; ".
#[track_caller]
fn after_seconds<'a>(g: &Gmond, line: &'a str, before: &str) -> &'a str {
    line.split_once(before)
        .and_then(|(_, rest)| rest.split_once("s; "))
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| g.fail(&format!("no {before:?}, seconds and \"s; \" in {line:?}")))
}

/// Reads the XML once; it must come, and come within [`XML_PROMPT`].
#[track_caller]
fn prompt_xml(g: &Gmond) -> Xml {
    let started = Instant::now();
    let x = g
        .try_xml()
        .unwrap_or_else(|e| g.fail(&format!("an XML read failed: {e}")));
    let took = started.elapsed();
    gmond_assert!(
        g,
        took < XML_PROMPT,
        "gmond took {took:?} to answer on its XML port"
    );
    x
}

/// A wall-clock time (`time.time()`) a module wrote to `path`, once it has.
fn read_stamp(path: &Path) -> Option<f64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

// ---------------------------------------------------------------------------
// A: one module holds the GIL for twice the deadline
// ---------------------------------------------------------------------------

/// Counts its calls. On its third call (once: the marker file keeps it from
/// ever doing it again, even in a re-imported copy) it holds the GIL for
/// [`HOLD`] seconds in C: ctypes.PyDLL keeps the GIL across a foreign call,
/// so nothing else in Python runs and no signal handler or deadline gets in.
/// When the hold starts and ends goes to files in TMPDIR (gmond's dir).
const GILHOG_PY: &str = r#"
import ctypes

_DIR = os.environ["TMPDIR"]
_calls = 0

def _stamp(name):
    tmp = os.path.join(_DIR, name + ".tmp")
    with open(tmp, "w") as f:
        f.write("%.6f\n" % time.time())
    os.replace(tmp, os.path.join(_DIR, name))

def calls(name):
    global _calls
    _calls += 1
    marker = os.path.join(_DIR, "gilhog.done")
    if _calls == 3 and not os.path.exists(marker):
        open(marker, "w").close()
        libc = ctypes.PyDLL("libc.so.6")
        _stamp("gilhog.start")
        libc.sleep(HOLD)
        _stamp("gilhog.end")
    return _calls

def metric_init(params):
    return [desc("gilhog_calls", calls, slope="positive")]
"#;

/// One XML read during the hold test: when it was made, and what it showed.
struct Poll {
    at: f64,
    /// The smallest TN of the `modpython_*` metrics: seconds since gmond's
    /// loop last sent its own metrics (None before they first arrive).
    self_tn: Option<u64>,
    counter_a: Option<f64>,
    counter_b: Option<f64>,
}

impl Poll {
    fn of(at: SystemTime, x: &Xml) -> Poll {
        Poll {
            at: wall(at),
            self_tn: x
                .metrics()
                .filter(|m| m.name.starts_with("modpython_"))
                .map(|m| m.tn)
                .min(),
            counter_a: x.metric("counter_a").map(|m| m.val_f64()),
            counter_b: x.metric("counter_b").map(|m| m.val_f64()),
        }
    }
}

/// The longest time gmond's loop went without sending its own metrics.
struct Gap {
    /// Seconds, at least and at most (TN is whole seconds, reads 200 ms apart).
    at_least: f64,
    at_most: f64,
    /// When the send before the gap was made, at the latest.
    began: f64,
}

/// Finds the longest gap between two sends of the `modpython_*` metrics
/// from the reads' TN. A read at time `at` showing TN `n` places the last
/// send in `(at - n - 1, at - n]`; while TN does not drop no new send was
/// seen, and once it is 1 or more, every read until it drops sees the same
/// send (a newer one would show TN 0, and reads are well under a second
/// apart). The next send falls between the last read of that run and the
/// first read whose TN dropped.
fn longest_gap(polls: &[&Poll]) -> Option<Gap> {
    let reads: Vec<(f64, u64)> = polls
        .iter()
        .filter_map(|p| p.self_tn.map(|tn| (p.at, tn)))
        .collect();
    let mut longest: Option<Gap> = None;
    let mut i = 0;
    while i < reads.len() {
        let mut j = i + 1;
        while j < reads.len() && reads[j].1 >= reads[j - 1].1 {
            j += 1;
        }
        let stuck: Vec<(f64, f64)> = reads[i..j]
            .iter()
            .filter(|(_, tn)| *tn >= 1)
            .map(|&(at, tn)| (at, tn as f64))
            .collect();
        if let Some(&(last_at, _)) = stuck.last() {
            let sent_latest = stuck
                .iter()
                .map(|(at, tn)| at - tn)
                .fold(f64::INFINITY, f64::min);
            let sent_earliest = stuck
                .iter()
                .map(|(at, tn)| at - tn - 1.0)
                .fold(f64::NEG_INFINITY, f64::max);
            let gap = Gap {
                at_least: last_at - sent_latest,
                at_most: reads.get(j).map_or(f64::INFINITY, |r| r.0 - sent_earliest),
                began: sent_latest,
            };
            if longest.as_ref().is_none_or(|l| gap.at_least > l.at_least) {
                longest = Some(gap);
            }
        }
        i = j;
    }
    longest
}

/// The first rounds after the hold: the one running into its end and the
/// next, each collect_every apart, plus 2 s for the wake-up, the UDP round
/// trip and the 200 ms between reads.
const MOVE_AGAIN_WITHIN: f64 = COLLECT_EVERY * 2.0 + 2.0;

/// The counters' values in the last reads up to `end`, and whether both
/// were read higher after `end` (by [`MOVE_AGAIN_WITHIN`]).
struct Moved {
    a0: f64,
    b0: f64,
    moved: bool,
}

fn counters_after(polls: &[Poll], end: f64) -> Moved {
    let before = |f: fn(&Poll) -> Option<f64>| {
        polls
            .iter()
            .filter(|p| p.at <= end)
            .filter_map(f)
            .fold(0.0, f64::max)
    };
    let moved = |f: fn(&Poll) -> Option<f64>, v0: f64| {
        polls
            .iter()
            .any(|p| p.at > end && p.at <= end + MOVE_AGAIN_WITHIN && f(p).is_some_and(|v| v > v0))
    };
    let (a0, b0) = (before(|p| p.counter_a), before(|p| p.counter_b));
    Moved {
        a0,
        b0,
        moved: moved(|p| p.counter_a, a0) && moved(|p| p.counter_b, b0),
    }
}

#[test]
fn a_module_holding_the_gil_costs_gmond_one_deadline_not_one_per_module() {
    let g = GmondBuilder::new()
        .host_param("call_timeout", "2")
        .module_file(
            "gilhog.py",
            &module(&GILHOG_PY.replace("HOLD", &format!("{}", HOLD as u32))),
        )
        .module_file("counter_a.py", &module(&pymod::counter("counter_a")))
        .module_file("counter_b.py", &module(&pymod::counter("counter_b")))
        .pyconf_text(
            "stall",
            "modules {\n\
               module { name = \"gilhog\" language = \"python\" }\n\
               module { name = \"counter_a\" language = \"python\" }\n\
               module { name = \"counter_b\" language = \"python\" }\n\
             }\n\
             /* One batch per round, the GIL holder first. */\n\
             collection_group {\n  collect_every = 2\n  time_threshold = 1\n\
               metric { name = \"gilhog_calls\" }\n\
               metric { name = \"counter_a\" }\n\
               metric { name = \"counter_b\" }\n\
             }\n\
             /* gmond's loop sends these every second while it is free, so their\n\
                TN says how long it has been stuck. */\n\
             collection_group {\n  collect_every = 1\n  time_threshold = 1\n\
               metric { name_match = \"^modpython_\" }\n\
             }\n",
        )
        .start();
    let start_file = g.dir().join("gilhog.start");
    let end_file = g.dir().join("gilhog.end");
    let first_poll = wall(SystemTime::now());

    // Read the XML every 200 ms from now until both counters have moved
    // after the hold (or the bounds below pass). Every read must succeed,
    // promptly: gmond serves its XML from another thread whatever its loop
    // is doing.
    let mut polls: Vec<Poll> = Vec::new();
    let started = Instant::now();
    let mut hold: Option<(f64, f64)> = None;
    loop {
        let at = SystemTime::now();
        let x = prompt_xml(&g);
        polls.push(Poll::of(at, &x));
        gmond_assert!(g, g.is_running(), "gmond exited");
        if hold.is_none() {
            if let (Some(s), Some(e)) = (read_stamp(&start_file), read_stamp(&end_file)) {
                hold = Some((s, e));
            }
        }
        match hold {
            None => {
                // The third call comes 2 collect_every after the first:
                // ~4 s after startup, plus the hold itself.
                gmond_assert!(
                    g,
                    started.elapsed() < secs(40),
                    "gilhog's hold did not start and end within 40 s (start {:?}, end {:?})",
                    read_stamp(&start_file),
                    read_stamp(&end_file)
                );
            }
            Some((_, end)) => {
                // Enough reads once both counters moved, or once the time
                // they had for it (checked below) has passed.
                if counters_after(&polls, end).moved
                    || wall(SystemTime::now()) > end + MOVE_AGAIN_WITHIN
                {
                    break;
                }
            }
        }
        thread::sleep(XML_POLL);
    }
    let (hold_start, hold_end) = hold.expect("the loop ends only after the hold");
    gmond_assert!(
        g,
        (..hold_start).contains(&first_poll),
        "the hold began at {hold_start} before the XML was first read at {first_poll}"
    );
    gmond_assert!(
        g,
        (HOLD - 0.1..).contains(&(hold_end - hold_start)),
        "gilhog held the GIL for only {}s",
        hold_end - hold_start
    );
    // The self metrics were in the XML before the hold, so their TN covers it.
    gmond_assert!(
        g,
        polls
            .iter()
            .any(|p| p.at < hold_start && p.self_tn.is_some()),
        "the modpython_ self metrics were not in the XML before the hold began"
    );

    // Each round during the hold is bounded: no gap between two sends of
    // gmond's own metrics longer than call_timeout + 2 s. They are sent
    // about every second while the loop is free, so a gap is the time the
    // loop was stuck plus up to a second. In the round that meets the hold,
    // gmond waits one call_timeout (2 s) for gilhog and must then go on
    // without waiting for the neighbours, whose calls cannot start while
    // the GIL is held: a gap of about call_timeout + 1 = 3 s, and the bound
    // leaves a second for scheduling. An engine that waits a deadline for
    // each module of the batch in turn costs up to 3 x 2 s; with this 4 s
    // hold, the one before this work stalled for the whole hold (2 s for
    // gilhog, then counter_a's call waiting for the GIL until it was
    // free), a gap of about 5 s. TN itself is whole seconds, so a TN bound
    // of call_timeout + 2 = 4 would let that through (it showed TN 4).
    println!("reads around the hold (s after its start, self TN, counter_a, counter_b):");
    for p in polls.iter().filter(|p| p.at >= hold_start - 3.0) {
        println!(
            "  {:+6.2} {:?} {:?} {:?}",
            p.at - hold_start,
            p.self_tn,
            p.counter_a,
            p.counter_b
        );
    }
    let bound = CALL_TIMEOUT + 2.0;
    let window: Vec<&Poll> = polls.iter().filter(|p| p.at >= hold_start - 2.0).collect();
    if let Some(gap) = longest_gap(&window) {
        println!(
            "longest gap between the loop's sends: {:.2}..{:.2} s, from {:+.2} s",
            gap.at_least,
            gap.at_most,
            gap.began - hold_start
        );
        gmond_assert!(
            g,
            (..=bound).contains(&gap.at_least),
            "gmond's loop stalled: its own metrics were not sent for at least {:.2} s (at most \
             {:.2} s) from {:+.2} s after the hold began; the bound is call_timeout + 2 = {bound} s",
            gap.at_least,
            gap.at_most,
            gap.began - hold_start
        );
    }

    // Both counters move again in the first rounds after the hold.
    let after = counters_after(&polls, hold_end);
    gmond_assert!(
        g,
        after.moved,
        "the counters did not both move within {MOVE_AGAIN_WITHIN}s after the hold ended \
         (counter_a was {} before it, counter_b {}; values since: {:?})",
        after.a0,
        after.b0,
        polls
            .iter()
            .filter(|p| p.at > hold_end)
            .map(|p| (p.counter_a, p.counter_b))
            .collect::<Vec<_>>()
    );

    // The log names the holder, then says when the GIL is free again.
    let gil = g.module_ref("gilhog");
    let holder = format!("{gil}: metric 'gilhog_calls'");
    let held = g.wait_line(&["Python's GIL", &holder], secs(5));
    let free = g.wait_line(&["Python's GIL is free again"], secs(10));
    let log = g.log();
    gmond_assert!(
        g,
        log.find(&held) < log.find(&free),
        "\"{free}\" comes before \"{held}\""
    );

    // gilhog's own call: stuck past its deadline with a good value from
    // calls 1 and 2, then returned after the hold with the value of call 3.
    let stuck = g.wait_line(
        &[&gil, "metric 'gilhog_calls' did not return within "],
        secs(5),
    );
    gmond_assert!(
        g,
        after_seconds(&g, &stuck, "did not return within ")
            == "gmond keeps its last good value; the call is left to finish in the \
                background and the module's metrics are not called until it does",
        "{stuck}"
    );
    let returned = g.wait_line(
        &[
            &gil,
            "the stuck call of metric 'gilhog_calls' returned after ",
        ],
        secs(10),
    );
    let ran = g.number_in(&returned, "returned after ", "s;");
    gmond_assert!(
        g,
        (HOLD..HOLD + 1.0).contains(&ran),
        "the {HOLD}s hold returned after {ran}s: {returned}"
    );
    gmond_assert!(
        g,
        returned.ends_with(
            "; its value 3 is gmond's last good value now; the module's metrics are called again"
        ),
        "{returned}"
    );

    // The neighbours were held up by the GIL, not stuck in their own code:
    // none of their calls is reported as late, and none counted as one.
    for counter in ["counter_a", "counter_b"] {
        let late = format!("metric '{counter}' did not return within");
        gmond_assert!(g, !g.log().contains(&late), "the log says {late:?}");
        let timeouts = format!("modpython_{counter}_timeouts");
        let m = g.wait_metric(&timeouts, secs(5));
        gmond_assert_eq!(g, m.val_f64(), 0.0, "{timeouts}");
    }
    gmond_assert!(g, g.is_running(), "gmond exited");
}

// ---------------------------------------------------------------------------
// B: a late value, and the wording for a metric with no good value yet
// ---------------------------------------------------------------------------

/// The first call sleeps 3 s (the GIL released) and returns 42; later calls
/// return 43, 44, ... at once.
const LATE_PY: &str = r#"
_calls = 0

def late(name):
    global _calls
    _calls += 1
    if _calls == 1:
        time.sleep(3)
        return 42
    return 41 + _calls

def metric_init(params):
    return [desc("late_val", late, slope="positive")]
"#;

/// Every call sleeps far past the deadline: it never succeeds.
const NEVER_PY: &str = r#"
def never(name):
    time.sleep(3600)
    return 1

def metric_init(params):
    return [desc("never_val", never)]
"#;

/// The part of the stuck-call message after the seconds, for a metric
/// without a good value yet.
const NO_GOOD_YET: &str = "gmond publishes 0 until a call succeeds; the call is left to finish \
                           in the background and the module's metrics are not called until it does";

#[test]
fn a_late_value_becomes_the_last_good_one_and_no_good_value_publishes_zero() {
    let g = GmondBuilder::new()
        .host_param("call_timeout", "2")
        .module_file("late.py", &module(LATE_PY))
        .module_file("never.py", &module(NEVER_PY))
        .pyconf_text(
            "stall",
            &pymod::pyconf(&[("late", ""), ("never", "")], &["^late_", "^never_"]),
        )
        .start();
    let late = g.module_ref("late");
    let never = g.module_ref("never");

    // The first call of each is stuck: neither has a good value yet.
    for (module_ref, metric) in [(&late, "late_val"), (&never, "never_val")] {
        let stuck = g.wait_line(
            &[
                module_ref,
                &format!("metric '{metric}' did not return within "),
            ],
            FIRST_VALUES,
        );
        let within = g.number_in(&stuck, "did not return within ", "s;");
        gmond_assert!(
            g,
            (CALL_TIMEOUT..CALL_TIMEOUT + 1.0).contains(&within),
            "{stuck}"
        );
        gmond_assert!(
            g,
            after_seconds(&g, &stuck, "did not return within ") == NO_GOOD_YET,
            "expected \"...; {NO_GOOD_YET}\", got {stuck}"
        );
    }

    // The late call returns after its 3 s with 42, which becomes gmond's
    // last good value.
    let returned = g.wait_line(
        &[&late, "the stuck call of metric 'late_val' returned after "],
        secs(10),
    );
    let seen_at = Instant::now();
    let ran = g.number_in(&returned, "returned after ", "s;");
    gmond_assert!(
        g,
        (2.9..=3.3).contains(&ran),
        "the 3 s call returned after {ran}s: {returned}"
    );
    gmond_assert!(
        g,
        returned.ends_with(
            "; its value 42 is gmond's last good value now; the module's metrics are called again"
        ),
        "{returned}"
    );
    gmond_assert!(
        g,
        !g.log()
            .lines()
            .any(|l| l.contains("metric 'late_val'") && l.contains("keeps its last good value")),
        "the first stuck call of late_val claimed a last good value"
    );

    // In the XML: from the first value gmond publishes after that line on,
    // late_val is 42 or a later value, never 0 again. (A read in the first
    // moments after the line may still show the 0 sent before it.)
    let mut seen: Vec<f64> = Vec::new();
    let first = loop {
        let v = g.metric("late_val").map(|m| m.val_f64());
        if let Some(v) = v {
            seen.push(v);
            if v != 0.0 {
                break v;
            }
        }
        gmond_assert!(
            g,
            seen_at.elapsed() < secs(5),
            "late_val still 0 (or absent) 5 s after its stuck call returned: {seen:?}"
        );
        thread::sleep(Duration::from_millis(100));
    };
    gmond_assert!(
        g,
        (42.0..).contains(&first),
        "after the late call returned gmond published {first} (reads: {seen:?})"
    );
    // A few more rounds (collect_every = 1): values go on from there.
    let mut last = first;
    while seen_at.elapsed() < secs(8) {
        let v = g
            .metric("late_val")
            .unwrap_or_else(|| g.fail("late_val left the XML"))
            .val_f64();
        seen.push(v);
        gmond_assert!(
            g,
            v >= last && v != 0.0,
            "late_val went from {last} to {v} (reads since the line: {seen:?})"
        );
        last = v;
        thread::sleep(Duration::from_millis(100));
    }
    gmond_assert!(
        g,
        last.total_cmp(&first).is_gt(),
        "late_val did not move on after the late value {first}: {seen:?}"
    );
    println!(
        "late_val: 42 {} in the XML; reads since the returned line: {seen:?}",
        if seen.contains(&42.0) {
            "was seen"
        } else {
            "was not seen"
        }
    );

    // never_val never had a good value: gmond publishes 0 for it, and its
    // call, still stuck after the rounds above, was reported once.
    gmond_assert_eq!(g, g.wait_metric("never_val", secs(5)).val_f64(), 0.0);
    gmond_assert_eq!(
        g,
        g.log_count("metric 'never_val' did not return within"),
        1,
        "never_val's stuck call reported more than once"
    );
    gmond_assert!(g, g.is_running(), "gmond exited");
}
