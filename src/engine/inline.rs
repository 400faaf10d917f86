//! Inline calls: on the calling thread (gmond's), under the watchdog's
//! deadline (`python::interrupt`), as the original host made them, for
//! sites that choose speed. A call stuck where no signal reaches it (a C
//! loop, the kernel) stalls the calling thread in this mode.

use pyo3::prelude::*;

use super::call::{
    CallTarget, Outcome, Step, Stopwatch, call_and_convert, described, in_module_scopes,
    reset_thread_hooks,
};
use crate::python::interrupt::{self, Armed};

/// Inline calls of `batch` (metrics of `targets`) in order, under one
/// acquisition of the GIL, each with its own deadline; each outcome goes to
/// `each` as it comes, with its run time when `timed`. Stops after a call
/// that ran late: the rest are not called this round.
pub fn call_batch(
    targets: &[CallTarget],
    batch: &[usize],
    deadline: std::time::Duration,
    timed: bool,
    mut each: impl FnMut(usize, Outcome, f32),
) {
    let Some(&first) = batch.first() else {
        return;
    };
    Python::attach(|py| {
        let mut armed = interrupt::arm(py, deadline, first);
        let mut last = first;
        in_module_scopes(targets, batch, |step| match step {
            Step::Call(target, index) => {
                last = index;
                let (outcome, seconds) = call_one(py, target, index, &mut armed, timed);
                let late = matches!(outcome, Outcome::TimedOut(_));
                each(index, outcome, seconds);
                !late
            }
            Step::ResetHooks => {
                // In flight again, under the last call's label: the release
                // of its hooks is module code, with a deadline of its own.
                armed.next(last);
                reset_thread_hooks(py);
                armed.pause();
                true
            }
        });
    });
}

/// One inline call under `armed`, which is moved on to this call.
fn call_one(
    py: Python<'_>,
    target: &CallTarget,
    index: usize,
    armed: &mut Armed,
    timed: bool,
) -> (Outcome, f32) {
    armed.next(index);
    let watch = Stopwatch::start(timed);
    let returned = call_and_convert(py, target);
    // A failure is described (traceback, the exception's __str__, the
    // collection of its frames) while the call is still in flight: that is
    // module code too, and a hanging __str__ must meet the call's deadline.
    let result = match returned {
        Ok(value) => Some(Ok(value)),
        // A deadline exception is ours, not the module's.
        Err(Ok(err)) if interrupt::is_deadline(py, &err) => None,
        Err(failure) => Some(Err(described(py, failure))),
    };
    // Out of flight before anything else runs: a late signal must not land
    // in our bookkeeping (or gmond's log writes) between calls.
    armed.pause();
    let seconds = watch.seconds();
    // A call the watchdog had to interrupt is late even if the module
    // caught the exception and returned something afterwards.
    let outcome = match result {
        _ if armed.fired() => Outcome::TimedOut(armed.fired_after()),
        Some(Ok(value)) => Outcome::Value(value),
        Some(Err(failed)) => Outcome::Failed(failed),
        None => Outcome::TimedOut(armed.fired_after()),
    };
    (outcome, seconds)
}
