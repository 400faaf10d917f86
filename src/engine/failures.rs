//! A metric whose calls fail: reported in full once, then summarised; after
//! a few failures in a row, called less and less often (back-off).

use std::time::{Duration, Instant};

use log::Level;

use super::call::Failed;
use crate::python::loader::{ModuleRef, report};

/// How often a metric that keeps failing is mentioned again in the log.
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

/// A run of failed calls.
pub struct Failure {
    pub since: Instant,
    pub count: u64,
    last_logged: Instant,
    /// No call before this instant (back-off), if set.
    pub retry_at: Option<Instant>,
}

/// What is said of a metric in a failure report.
pub struct Subject<'a> {
    pub module: &'a ModuleRef,
    pub metric: &'a str,
    pub has_good: bool,
    pub text: bool,
}

/// Counts one failure of a run (starting the run if there is none), logs
/// it as the rules say, and backs the metric off after [`BACKOFF_AFTER`]
/// in a row, the pause doubling up to `retry_max`. `log_first`: false when
/// the caller has just reported this failure itself (a stuck call).
pub fn record(
    run: &mut Option<Box<Failure>>,
    subject: &Subject<'_>,
    failed: &Failed,
    retry_max: Duration,
    log_first: bool,
) {
    let now = Instant::now();
    let Some(failure) = run else {
        if log_first {
            report(
                Level::Error,
                Some(subject.module),
                Some(subject.metric),
                format!(
                    "metric '{}' failed ({}; repeats are logged every {} minutes)\n{}",
                    subject.metric,
                    kept(subject.has_good, subject.text),
                    REPEAT_LOG_EVERY.as_secs() / 60,
                    failed.detail()
                ),
            );
        }
        *run = Some(Box::new(Failure {
            since: now,
            count: 1,
            last_logged: now,
            retry_at: None,
        }));
        return;
    };
    failure.count += 1;
    if failure.count >= u64::from(BACKOFF_AFTER) {
        let doublings = (failure.count - u64::from(BACKOFF_AFTER)).min(16) as u32;
        let pause = BACKOFF_FIRST.saturating_mul(1 << doublings).min(retry_max);
        if failure.count == u64::from(BACKOFF_AFTER) {
            report(
                Level::Warn,
                Some(subject.module),
                Some(subject.metric),
                format!(
                    "metric '{}': {} failures in a row; it is now called at most every {}s, backing off to every {}s while it keeps failing",
                    subject.metric,
                    failure.count,
                    pause.as_secs(),
                    retry_max.as_secs()
                ),
            );
        }
        failure.retry_at = Some(now + pause);
    }
    if now.duration_since(failure.last_logged) >= REPEAT_LOG_EVERY {
        failure.last_logged = now;
        report(
            Level::Error,
            Some(subject.module),
            Some(subject.metric),
            format!(
                "metric '{}' still failing: {} failed call(s) in {}s; latest: {}",
                subject.metric,
                failure.count,
                failure.since.elapsed().as_secs(),
                failed.summary()
            ),
        );
    }
}

/// Ends a run of failures with a success, saying so.
pub fn recovered(run: &Failure, module: &ModuleRef, metric: &str) {
    report(
        Level::Warn,
        Some(module),
        Some(metric),
        format!(
            "metric '{metric}' recovered after {} failed call(s) over {}s",
            run.count,
            run.since.elapsed().as_secs()
        ),
    );
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

    #[test]
    fn back_off_starts_after_three_failures_and_doubles_up_to_the_maximum() {
        let module = ModuleRef {
            name: "m".into(),
            path: "/m.py".into(),
        };
        let subject = Subject {
            module: &module,
            metric: "x",
            has_good: false,
            text: false,
        };
        let failed = Failed::Value(crate::value::ConversionError("bad".into()));
        let mut run = None;
        let max = Duration::from_secs(35);
        let pause = |run: &Option<Box<Failure>>| {
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
        assert_eq!(run.as_ref().map(|f| f.count), Some(5));
    }
}
