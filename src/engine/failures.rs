//! A metric whose calls fail: reported in full once, then summarised at
//! most once per reminder interval, however its calls come and go; after a
//! few failures in a row, called less and less often (back-off).
//!
//! A metric in trouble has a [`Trouble`] record from its first failure
//! until a whole reminder interval passes without one. While the record
//! lives, nothing about the metric is logged call by call: a handler that
//! fails every other call gets its first failure (with the traceback), its
//! first recovery, and then one line per interval ("failed in 40 of 80
//! call(s) in the last 10 minutes"), not two lines a round.

use std::time::{Duration, Instant};

use log::Level;

use super::call::Failed;
use crate::python::loader::{ModuleRef, report};

/// How often a metric in trouble is mentioned again in the log.
pub const REPEAT_LOG_EVERY: Duration = Duration::from_secs(600);
/// Failures in a row before a handler is backed off.
pub const BACKOFF_AFTER: u32 = 3;
/// The first pause of a backed-off handler; it doubles up to `retry_max_interval`.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(10);

/// What gmond publishes while a metric's calls fail: the operator must not
/// be told of a "last good value" that never was.
pub fn kept(has_good: bool, text: bool) -> &'static str {
    match (has_good, text) {
        (true, _) => "gmond keeps its last good value",
        (false, false) => "gmond publishes 0 until a call succeeds",
        (false, true) => "gmond publishes an empty string until a call succeeds",
    }
}

/// A metric's trouble: its failures from the first until a quiet interval.
pub struct Trouble {
    /// Failures since the last success (back-off counts these).
    pub in_a_row: u64,
    /// No call before this instant (back-off), if set.
    pub retry_at: Option<Instant>,
    /// The current interval: when it began, its calls and failures.
    window_start: Instant,
    window_calls: u64,
    window_failures: u64,
    /// The latest failure's one-line reason, for the summary.
    latest: String,
    last_failure: Instant,
    /// What has been said once and is not said again while the record lives.
    recovery_logged: bool,
    backoff_logged: bool,
    /// A stuck call of this metric was reported (its return is, once).
    pub stuck_logged: bool,
    pub return_logged: bool,
}

/// What is said of a metric in a failure report.
pub struct Subject<'a> {
    pub module: &'a ModuleRef,
    pub metric: &'a str,
    pub has_good: bool,
    pub text: bool,
}

/// Counts one failure (starting the record if there is none) and logs it
/// as the rules say: the first in full, later ones in the interval's
/// summary. Backs the metric off after [`BACKOFF_AFTER`] in a row, the
/// pause doubling up to `retry_max`. `log_first`: false when the caller has
/// just reported this failure itself (a stuck call).
pub fn record(
    trouble: &mut Option<Box<Trouble>>,
    subject: &Subject<'_>,
    failed: &Failed,
    retry_max: Duration,
    log_first: bool,
) {
    let now = Instant::now();
    let Some(t) = trouble else {
        if log_first {
            report(
                Level::Error,
                Some(subject.module),
                Some(subject.metric),
                format!(
                    "metric '{}' failed ({}; repeats are summarised every {} minutes)\n{}",
                    subject.metric,
                    kept(subject.has_good, subject.text),
                    REPEAT_LOG_EVERY.as_secs() / 60,
                    failed.detail()
                ),
            );
        }
        *trouble = Some(Box::new(Trouble {
            in_a_row: 1,
            retry_at: None,
            window_start: now,
            window_calls: 1,
            window_failures: 1,
            latest: failed.summary().to_owned(),
            last_failure: now,
            recovery_logged: false,
            backoff_logged: false,
            stuck_logged: !log_first,
            return_logged: false,
        }));
        return;
    };
    t.in_a_row += 1;
    t.window_calls += 1;
    t.window_failures += 1;
    t.last_failure = now;
    failed.summary().clone_into(&mut t.latest);
    if t.in_a_row >= u64::from(BACKOFF_AFTER) {
        let doublings = (t.in_a_row - u64::from(BACKOFF_AFTER)).min(16) as u32;
        let pause = BACKOFF_FIRST.saturating_mul(1 << doublings).min(retry_max);
        if !t.backoff_logged {
            t.backoff_logged = true;
            report(
                Level::Warn,
                Some(subject.module),
                Some(subject.metric),
                format!(
                    "metric '{}': {} failures in a row; it is now called at most every {}s, backing off to every {}s while it keeps failing",
                    subject.metric,
                    t.in_a_row,
                    pause.as_secs(),
                    retry_max.as_secs()
                ),
            );
        }
        t.retry_at = Some(now + pause);
    }
    summarise_if_due(t, subject, now);
}

/// Counts a success. The first after the first report is logged; later
/// ones go into the summary. After a whole interval without a failure the
/// record is dropped (its last failures summarised first).
pub fn succeeded(trouble: &mut Option<Box<Trouble>>, subject: &Subject<'_>) {
    let Some(t) = trouble else { return };
    let now = Instant::now();
    let failed_in_a_row = t.in_a_row;
    t.in_a_row = 0;
    t.retry_at = None;
    t.window_calls += 1;
    if !t.recovery_logged && failed_in_a_row > 0 {
        t.recovery_logged = true;
        report(
            Level::Warn,
            Some(subject.module),
            Some(subject.metric),
            format!(
                "metric '{}' recovered after {failed_in_a_row} failed call(s); if it fails again within {} minutes, that is summarised rather than logged call by call",
                subject.metric,
                REPEAT_LOG_EVERY.as_secs() / 60
            ),
        );
    }
    if now.duration_since(t.last_failure) >= REPEAT_LOG_EVERY {
        // A whole interval without a failure: the trouble is over. Its
        // failures since the last summary are summarised first.
        summarise(t, subject, now);
        *trouble = None;
        return;
    }
    summarise_if_due(t, subject, now);
}

fn summarise_if_due(t: &mut Trouble, subject: &Subject<'_>, now: Instant) {
    if now.duration_since(t.window_start) >= REPEAT_LOG_EVERY {
        summarise(t, subject, now);
    }
}

/// Logs the interval's summary, if it had failures, and starts the next.
fn summarise(t: &mut Trouble, subject: &Subject<'_>, now: Instant) {
    if t.window_failures > 0 {
        let minutes = now.duration_since(t.window_start).as_secs().div_ceil(60);
        report(
            Level::Error,
            Some(subject.module),
            Some(subject.metric),
            format!(
                "metric '{}' failed in {} of {} call(s) in the last {minutes} minutes; latest: {}",
                subject.metric, t.window_failures, t.window_calls, t.latest
            ),
        );
    }
    t.window_start = now;
    t.window_calls = 0;
    t.window_failures = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wording_never_claims_a_value_that_never_was() {
        assert_eq!(kept(true, false), "gmond keeps its last good value");
        assert_eq!(kept(true, true), "gmond keeps its last good value");
        assert_eq!(
            kept(false, false),
            "gmond publishes 0 until a call succeeds"
        );
        assert!(kept(false, true).contains("empty string"));
    }

    fn module() -> ModuleRef {
        ModuleRef {
            name: "m".into(),
            path: "/m.py".into(),
        }
    }

    #[test]
    fn back_off_starts_after_three_failures_and_doubles_up_to_the_maximum() {
        let module = module();
        let subject = Subject {
            module: &module,
            metric: "x",
            has_good: false,
            text: false,
        };
        let failed = Failed::Value(crate::value::ConversionError("bad".into()));
        let mut run = None;
        let max = Duration::from_secs(35);
        let pause = |run: &Option<Box<Trouble>>| {
            run.as_ref()
                .and_then(|f| f.retry_at)
                .map(|at| at.duration_since(Instant::now()).as_secs_f64().round() as u64)
        };
        record(&mut run, &subject, &failed, max, false);
        record(&mut run, &subject, &failed, max, false);
        assert_eq!(pause(&run), None, "two failures: not backed off yet");
        record(&mut run, &subject, &failed, max, false);
        assert_eq!(pause(&run), Some(10));
        record(&mut run, &subject, &failed, max, false);
        assert_eq!(pause(&run), Some(20));
        record(&mut run, &subject, &failed, max, false);
        assert_eq!(pause(&run), Some(35), "capped at retry_max_interval");
        assert_eq!(run.as_ref().map(|f| f.in_a_row), Some(5));
        // A success ends the back-off but not the record.
        succeeded(&mut run, &subject);
        assert_eq!(pause(&run), None);
        assert!(run.is_some());
    }

    #[test]
    fn alternating_failures_count_in_one_window() {
        let module = module();
        let subject = Subject {
            module: &module,
            metric: "x",
            has_good: true,
            text: false,
        };
        let failed = Failed::Value(crate::value::ConversionError("bad".into()));
        let mut run = None;
        for _ in 0..40 {
            record(&mut run, &subject, &failed, Duration::from_secs(300), true);
            succeeded(&mut run, &subject);
        }
        let t = run.as_ref().expect("still in trouble");
        assert_eq!((t.window_failures, t.window_calls), (40, 80));
        assert!(t.recovery_logged && !t.backoff_logged);
        assert_eq!(t.in_a_row, 0);
    }
}
