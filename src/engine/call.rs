//! One call of a metric's callback, whatever thread makes it: the target,
//! what became of the call, and the scope a module's calls run in.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::descriptor::ValueType;
use crate::python::{errors, extract, fork_guard, stdio};
use crate::value::{ConversionError, Value};

/// Everything a thread needs to make one metric's call.
pub struct CallTarget {
    /// The module's name, for attributing the call's output (print, logging).
    pub module_name: Arc<str>,
    pub callback: Py<PyAny>,
    pub py_name: Py<PyString>,
    pub value_type: ValueType,
}

/// The metrics' call targets, shared with the workers.
pub type Targets = Arc<Vec<CallTarget>>;

/// Why a call produced no value. The texts are made while the GIL is
/// held, where the call ran: gmond's thread must never wait for the GIL just
/// to log, since a stuck call elsewhere may hold it indefinitely.
pub enum Failed {
    /// The callback raised (SystemExit and KeyboardInterrupt included).
    Raised {
        /// The exception's last line.
        summary: String,
        /// The whole traceback.
        detail: String,
    },
    /// It returned something that does not convert to the metric's type.
    Value(ConversionError),
}

impl Failed {
    /// Describes and then releases the exception inside the failing call's
    /// own context: its traceback keeps the call's frames alive, and
    /// whatever their release runs (a `__del__`, a cycle the collector
    /// finds) must not run, hang or be blamed inside another module's call.
    pub(crate) fn raised(py: Python<'_>, err: PyErr) -> Failed {
        let detail = errors::describe(py, &err);
        let summary = detail.lines().last().unwrap_or_default().to_owned();
        drop(err);
        if let Ok(gc) = py.import("gc") {
            let _ = gc.call_method1("collect", (0,));
        }
        Failed::Raised { summary, detail }
    }

    pub(crate) fn internal() -> Failed {
        Failed::Value(ConversionError(
            "internal error in modpython while making the call (please report it)".to_owned(),
        ))
    }

    /// The traceback (or reason) in full, for the first report of a run.
    pub fn detail(&self) -> &str {
        match self {
            Failed::Raised { detail, .. } => detail,
            Failed::Value(e) => &e.0,
        }
    }

    /// One line, for the periodic reminders.
    pub fn summary(&self) -> &str {
        match self {
            Failed::Raised { summary, .. } => summary,
            Failed::Value(e) => &e.0,
        }
    }
}

/// What became of one call.
pub enum Outcome {
    Value(Value),
    Failed(Failed),
    /// The call overran its deadline (and was interrupted, or abandoned);
    /// how long it had run then.
    TimedOut(Duration),
}

/// Calls the metric's callback with its name and converts the result.
/// Must run with the GIL held; every mode ends up here. The exception is
/// handed back raw so the inline path can tell its own deadline apart.
/// The caller attributes output and resets the thread afterwards (see
/// [`in_module_scopes`]).
pub(crate) fn call_and_convert(
    py: Python<'_>,
    target: &CallTarget,
) -> Result<Value, Result<PyErr, ConversionError>> {
    let result = match target.callback.bind(py).call1((target.py_name.bind(py),)) {
        Ok(obj) => extract::converted(&obj, target.value_type).map_err(Err),
        Err(err) => Err(Ok(err)),
    };
    // A call that forked a copy of gmond (the child returns here, holding
    // gmond's sockets) ends that copy.
    fork_guard::exit_if_forked();
    result
}

/// Describes a failed call while the GIL is still held.
pub(crate) fn described(py: Python<'_>, failure: Result<PyErr, ConversionError>) -> Failed {
    match failure {
        Ok(err) => Failed::raised(py, err),
        Err(conversion) => Failed::Value(conversion),
    }
}

/// A clock read around each call, only for those who show per-call times
/// (`modpython-check`); gmond's calls read no clock per call.
#[derive(Clone, Copy)]
pub(crate) struct Stopwatch(Option<Instant>);

impl Stopwatch {
    pub(crate) fn start(timed: bool) -> Stopwatch {
        Stopwatch(timed.then(Instant::now))
    }

    pub(crate) fn seconds(self) -> f32 {
        self.0.map_or(0.0, |t| t.elapsed().as_secs_f32())
    }
}

/// Runs `call` for each metric of `batch` (indices into `targets`) in
/// order, until it returns false. Each module's output is attributed to it,
/// and what a module's calls may leave in the thread's interpreter state —
/// `sys.settrace` and `sys.setprofile` hooks — is undone before another
/// module's call and at the end, so no module inherits another's. A
/// module's own later calls in the batch may inherit its hooks: they are
/// its own business, and resetting per call would cost every call.
pub(crate) fn in_module_scopes(
    targets: &[CallTarget],
    batch: &[usize],
    mut step: impl FnMut(Step<'_>) -> bool,
) {
    let mut module: Option<&Arc<str>> = None;
    let mut scope: Option<stdio::ModuleScope> = None;
    for &index in batch {
        let Some(target) = targets.get(index) else {
            continue;
        };
        if module.is_none_or(|m| !Arc::ptr_eq(m, &target.module_name)) {
            if module.is_some() {
                step(Step::ResetHooks);
            }
            drop(scope.take());
            scope = Some(stdio::ModuleScope::enter(&target.module_name));
            module = Some(&target.module_name);
        }
        if !step(Step::Call(target, index)) {
            break;
        }
    }
    drop(scope);
    step(Step::ResetHooks);
}

/// What [`in_module_scopes`] asks of its caller next.
pub(crate) enum Step<'a> {
    /// Make this metric's call; false stops the batch.
    Call(&'a CallTarget, usize),
    /// Clear the thread's hooks ([`reset_thread_hooks`]): releasing a
    /// module's hook runs its code, so the caller gives it the deadline
    /// its calls have.
    ResetHooks,
}

/// Clears the calling thread's trace and profile functions.
pub(crate) fn reset_thread_hooks(_py: Python<'_>) {
    // SAFETY: the GIL is held (we have a `Python` token); clearing this
    // thread's trace and profile functions takes no other precondition.
    unsafe {
        pyo3::ffi::PyEval_SetTrace(None, std::ptr::null_mut());
        pyo3::ffi::PyEval_SetProfile(None, std::ptr::null_mut());
    }
}
