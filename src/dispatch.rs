//! How one gmond `handler(i)` call reaches Python, and how it is kept from
//! stalling gmond.
//!
//! Two call modes (host setting `call_mode`, per module `modpython.call_mode`):
//!
//! * **protected** (default): the call runs on a worker thread while gmond's
//!   thread waits for it up to the deadline. Past the deadline gmond gets the
//!   metric's last good value at once; the worker, stuck in that call, is
//!   abandoned to finish in the background and a fresh worker serves
//!   everyone else. Nothing a module does — a dead NFS mount, a C loop that
//!   holds the GIL — can hold gmond longer than the deadline.
//!   Waking a sleeping thread costs ~45 µs on these machines
//!   (`hung-handlers.md`), so both sides spin briefly before sleeping: in a
//!   collection round, gmond's calls follow each other within microseconds
//!   and the hand-off stays on the spinning path.
//! * **inline**: the call runs on gmond's own thread, as the original host
//!   did, for sites that choose speed. A watchdog interrupts calls that
//!   overrun (see `python::interrupt`); a call stuck where no signal reaches
//!   it (kernel D state, a C loop) does stall gmond in this mode.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::descriptor::ValueType;
use crate::python::interrupt::{self, Armed};
use crate::python::{errors, extract, stdio};
use crate::value::{ConversionError, Value};

/// Everything a worker needs to make one metric's call.
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
    fn raised(py: Python<'_>, err: PyErr) -> Failed {
        let detail = errors::describe(py, &err);
        let summary = detail.lines().last().unwrap_or_default().to_owned();
        drop(err);
        if let Ok(gc) = py.import("gc") {
            let _ = gc.call_method1("collect", (0,));
        }
        Failed::Raised { summary, detail }
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
    /// The call overran its deadline (and was interrupted, or abandoned).
    TimedOut(Duration),
}

/// Calls the metric's callback with its name and converts the result.
/// Must run with the GIL held; every mode ends up here. The exception is
/// handed back raw so the inline path can tell its own deadline apart.
/// The caller attributes output and resets the thread afterwards (see
/// [`in_module_scopes`]).
fn call_and_convert(
    py: Python<'_>,
    target: &CallTarget,
) -> Result<Value, Result<PyErr, ConversionError>> {
    let result = match target.callback.bind(py).call1((target.py_name.bind(py),)) {
        Ok(obj) => extract::converted(&obj, target.value_type).map_err(Err),
        Err(err) => Err(Ok(err)),
    };
    // A call that forked a copy of gmond (the child returns here, holding
    // gmond's sockets) ends that copy.
    crate::python::fork_guard::exit_if_forked();
    result
}

/// Runs `call` for each metric of `batch` (indices into `targets`) in
/// order, until it returns false. Each module's output is attributed to it,
/// and what a module's calls may leave in the thread's interpreter state —
/// `sys.settrace` and `sys.setprofile` hooks — is undone before another
/// module's call and at the end, so no module inherits another's. A
/// module's own later calls in the batch may inherit its hooks: they are
/// its own business, and resetting per call would cost every call.
fn in_module_scopes(
    py: Python<'_>,
    targets: &[CallTarget],
    batch: &[usize],
    mut call: impl FnMut(&CallTarget, usize) -> bool,
) {
    let mut module: Option<&Arc<str>> = None;
    let mut scope: Option<stdio::ModuleScope> = None;
    for &index in batch {
        let Some(target) = targets.get(index) else {
            continue;
        };
        if module.is_none_or(|m| !Arc::ptr_eq(m, &target.module_name)) {
            if module.is_some() {
                reset_thread_hooks(py);
            }
            drop(scope.take());
            scope = Some(stdio::ModuleScope::enter(&target.module_name));
            module = Some(&target.module_name);
        }
        if !call(target, index) {
            break;
        }
    }
    drop(scope);
    reset_thread_hooks(py);
}

/// Clears the calling thread's trace and profile functions.
fn reset_thread_hooks(_py: Python<'_>) {
    // SAFETY: the GIL is held (we have a `Python` token); clearing this
    // thread's trace and profile functions takes no other precondition.
    unsafe {
        pyo3::ffi::PyEval_SetTrace(None, std::ptr::null_mut());
        pyo3::ffi::PyEval_SetProfile(None, std::ptr::null_mut());
    }
}

/// Describes a failed call while the GIL is still held.
fn described(py: Python<'_>, failure: Result<PyErr, ConversionError>) -> Failed {
    match failure {
        Ok(err) => Failed::raised(py, err),
        Err(conversion) => Failed::Value(conversion),
    }
}

/// An inline call on gmond's thread, under the watchdog's deadline.
pub fn call_inline(target: &CallTarget, index: usize, deadline: Duration) -> Outcome {
    let mut outcome = None;
    Python::attach(|py| {
        let mut armed = interrupt::arm(deadline, index);
        in_module_scopes(py, std::slice::from_ref(target), &[0], |target, _| {
            outcome = Some(inline_one(py, target, index, &mut armed));
            true
        });
    });
    outcome.unwrap_or(Outcome::TimedOut(Duration::ZERO))
}

/// Inline calls of `batch` (metrics of `targets`) in order, under one
/// acquisition of the GIL, each with its own deadline; each outcome goes to
/// `each` as it comes. Stops after a call that ran late: the rest are not
/// called this round.
pub fn call_inline_batch(
    targets: &[CallTarget],
    batch: &[usize],
    deadline: Duration,
    mut each: impl FnMut(usize, Outcome),
) {
    let Some(&first) = batch.first() else {
        return;
    };
    Python::attach(|py| {
        let mut armed = interrupt::arm(deadline, first);
        in_module_scopes(py, targets, batch, |target, index| {
            let outcome = inline_one(py, target, index, &mut armed);
            let late = matches!(outcome, Outcome::TimedOut(_));
            each(index, outcome);
            !late
        });
    });
}

/// One inline call under `armed`, which is moved on to this call.
fn inline_one(py: Python<'_>, target: &CallTarget, index: usize, armed: &mut Armed) -> Outcome {
    armed.next(index);
    let returned = call_and_convert(py, target);
    // Out of flight before anything else runs: a late signal must not land
    // in our bookkeeping (or gmond's log writes) between calls.
    armed.pause();
    let result = match returned {
        Ok(value) => Some(Ok(value)),
        // A deadline exception is ours, not the module's.
        Err(Ok(err)) if interrupt::is_deadline(py, &err) => None,
        Err(failure) => Some(Err(described(py, failure))),
    };
    // A call the watchdog had to interrupt is late even if the module
    // caught the exception and returned something afterwards.
    if armed.fired() || result.is_none() {
        return Outcome::TimedOut(armed.fired_after());
    }
    match result {
        Some(Ok(value)) => Outcome::Value(value),
        Some(Err(failed)) => Outcome::Failed(failed),
        None => Outcome::TimedOut(armed.fired_after()),
    }
}

/// Stack for threads that run module code: Python's recursion limit is
/// sized for a main thread's 8 MiB, not Rust's 2 MiB default, and a module
/// raising the limit must hit RecursionError, not a stack overflow.
pub const PYTHON_THREAD_STACK: usize = 16 * 1024 * 1024;

// Worker slot states.
const IDLE: u32 = 0;
const REQUESTED: u32 = 1;
const DONE: u32 = 2;

/// How long gmond's thread spins for a result before sleeping, and how long
/// a worker spins for the next request before sleeping. Calls of one
/// collection round arrive microseconds apart.
const CALLER_SPIN: Duration = Duration::from_micros(5);
const WORKER_SPIN: Duration = Duration::from_micros(10);
/// How long a worker holding the GIL waits for the next call of a burst
/// before releasing it (module threads and inline calls need it).
const HOT_SPIN: Duration = Duration::from_micros(10);

/// The rendezvous between gmond's thread and one worker thread.
struct Slot {
    state: AtomicU32,
    /// The metrics to call, in order (see [`Worker::call_batch`]).
    batch: Mutex<Vec<usize>>,
    /// Their results, in the same order; published a chunk at a time.
    results: Mutex<Vec<(usize, Made)>>,
    /// How many calls of the batch have returned: tells gmond's thread that
    /// a long batch is moving, and which call is stuck when it is not.
    progress: AtomicUsize,
    worker_asleep: AtomicBool,
    caller_asleep: AtomicBool,
    /// Set when gmond gave up on this worker's call: the worker exits once
    /// that call returns, instead of serving more.
    abandoned: AtomicBool,
    /// gmond's thread, woken when a result is ready.
    caller: Thread,
}

/// What the worker made of one call; failures (rare) boxed to keep the
/// hand-over buffer small.
type Made = Result<Value, Box<Failed>>;

/// Results are handed over this many at a time: one lock per call would
/// cost as much as a trivial call, while a stuck batch should still give
/// up what it made before the stuck call.
const PUBLISH_EVERY: usize = 32;

/// While a batch runs longer than the spin, gmond's thread looks at its
/// progress this often; a call's deadline is therefore kept to within this.
const PROGRESS_POLL: Duration = Duration::from_millis(100);

/// A thread that makes calls for gmond's thread.
pub struct Worker {
    slot: Arc<Slot>,
    thread: Thread,
}

/// A call gmond stopped waiting for; its worker still runs it.
pub struct Stuck {
    slot: Arc<Slot>,
    /// The metric whose call is stuck.
    pub index: usize,
    pub since: Instant,
}

impl Stuck {
    /// Whether the abandoned call has returned by now.
    pub fn finished(&self) -> bool {
        self.slot.state.load(Ordering::SeqCst) == DONE
    }
}

impl Worker {
    /// Starts a worker for calls made from the current thread (gmond's).
    pub fn spawn(targets: Targets) -> std::io::Result<Worker> {
        let slot = Arc::new(Slot {
            state: AtomicU32::new(IDLE),
            batch: Mutex::new(Vec::new()),
            results: Mutex::new(Vec::new()),
            progress: AtomicUsize::new(0),
            worker_asleep: AtomicBool::new(false),
            caller_asleep: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            caller: thread::current(),
        });
        let worker_slot = Arc::clone(&slot);
        let handle = thread::Builder::new()
            .name("modpython-call".to_owned())
            .stack_size(PYTHON_THREAD_STACK)
            .spawn(move || {
                crate::signals::block_in_this_thread();
                worker_loop(&worker_slot, &targets)
            })?;
        Ok(Worker {
            slot,
            thread: handle.thread().clone(),
        })
    }

    /// One call, as a batch of one; `Err` when the worker got stuck in it.
    pub fn call(&self, index: usize, deadline: Duration) -> Result<Outcome, Stuck> {
        let mut outcome = None;
        match self.call_batch(&[index], deadline, |_, o| outcome = Some(o)) {
            Some(stuck) => Err(stuck),
            None => Ok(outcome.unwrap_or(Outcome::TimedOut(Duration::ZERO))),
        }
    }

    /// Has the worker call the metrics of `batch`, in order, each within
    /// `deadline`. Handing a whole collection round's worth of one module's
    /// calls over at once costs one wake-up instead of one per call, which
    /// on these machines is most of the price (see the module docs). When a
    /// call overruns, `stuck` is returned and the worker must not be used
    /// again; the outcomes it published before (all but at most the last
    /// [`PUBLISH_EVERY`]) are still handed to `each`.
    pub fn call_batch(
        &self,
        batch: &[usize],
        deadline: Duration,
        mut each: impl FnMut(usize, Outcome),
    ) -> Option<Stuck> {
        let slot = &self.slot;
        slot.progress.store(0, Ordering::Relaxed);
        {
            let mut requested = slot.batch.lock().unwrap_or_else(|p| p.into_inner());
            requested.clear();
            requested.extend_from_slice(batch);
        }
        slot.state.store(REQUESTED, Ordering::SeqCst);
        if slot.worker_asleep.load(Ordering::SeqCst) {
            self.thread.unpark();
        }
        let mut stuck = None;
        if !spin_until(CALLER_SPIN, || slot.state.load(Ordering::SeqCst) == DONE) {
            // The clock is read only on this slow path; the spin is part of the wait.
            let mut since = Instant::now()
                .checked_sub(CALLER_SPIN)
                .unwrap_or_else(Instant::now);
            let mut seen = slot.progress.load(Ordering::Acquire);
            slot.caller_asleep.store(true, Ordering::SeqCst);
            while slot.state.load(Ordering::SeqCst) != DONE {
                let progress = slot.progress.load(Ordering::Acquire);
                if progress != seen {
                    // Another call has returned: the deadline is the current call's.
                    seen = progress;
                    since = Instant::now();
                }
                let elapsed = since.elapsed();
                // Every call has returned: the worker is only finishing up.
                if elapsed >= deadline && progress < batch.len() {
                    slot.abandoned.store(true, Ordering::SeqCst);
                    self.thread.unpark();
                    stuck = Some(Stuck {
                        slot: Arc::clone(slot),
                        index: batch.get(progress).copied().unwrap_or_default(),
                        since,
                    });
                    break;
                }
                thread::park_timeout((deadline - elapsed).min(PROGRESS_POLL));
            }
            slot.caller_asleep.store(false, Ordering::SeqCst);
        }
        {
            // Drained, not taken: the buffer keeps its capacity from round to
            // round (the worker appends to it under the same lock).
            let mut results = slot.results.lock().unwrap_or_else(|p| p.into_inner());
            for (index, result) in results.drain(..) {
                each(
                    index,
                    match result {
                        Ok(value) => Outcome::Value(value),
                        Err(failed) => Outcome::Failed(*failed),
                    },
                );
            }
        }
        if stuck.is_none() {
            slot.state.store(IDLE, Ordering::SeqCst);
        }
        stuck
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // A dropped worker (host shutting down) exits when it next wakes.
        self.slot.abandoned.store(true, Ordering::SeqCst);
        self.thread.unpark();
    }
}

/// Spins until `ready()` or `limit` elapses; true if ready.
fn spin_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        for _ in 0..64 {
            if ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= limit {
            return ready();
        }
    }
}

fn worker_loop(slot: &Slot, targets: &[CallTarget]) {
    // One Python thread state for the worker's whole life: modules that
    // keep per-thread state (threading.local, a cached connection) keep it
    // from one round to the next.
    Python::attach(|py| {
        let mut made: Vec<(usize, Made)> = Vec::new();
        // Swapped with the slot's request, so neither side allocates per batch.
        let mut batch: Vec<usize> = Vec::new();
        loop {
            // Between batches the GIL is released, so module threads run.
            let work = py.detach(|| wait_for_request(slot));
            if !work {
                return;
            }
            loop {
                std::mem::swap(
                    &mut batch,
                    &mut *slot.batch.lock().unwrap_or_else(|p| p.into_inner()),
                );
                let mut abandoned = false;
                in_module_scopes(py, targets, &batch, |target, index| {
                    // A panic must not kill the worker with the request
                    // pending: gmond's thread would take the module for hung.
                    let result = panic::catch_unwind(AssertUnwindSafe(|| {
                        call_and_convert(py, target)
                            .map_err(|failure| Box::new(described(py, failure)))
                    }))
                    .unwrap_or_else(|_| {
                        Err(Box::new(Failed::Value(ConversionError(
                            "internal error in modpython while making the call (please report it)"
                                .to_owned(),
                        ))))
                    });
                    made.push((index, result));
                    slot.progress.fetch_add(1, Ordering::Release);
                    abandoned = slot.abandoned.load(Ordering::SeqCst);
                    if made.len() >= PUBLISH_EVERY || abandoned {
                        publish(slot, &mut made);
                    }
                    !abandoned
                });
                publish(slot, &mut made);
                // A batch with a target missing counts as made in full.
                slot.state.store(DONE, Ordering::SeqCst);
                if abandoned || slot.abandoned.load(Ordering::SeqCst) {
                    // gmond gave up on this batch: the stuck call has
                    // returned (DONE says so); serve no more.
                    return;
                }
                if slot.caller_asleep.load(Ordering::SeqCst) {
                    slot.caller.unpark();
                }
                // Keep the GIL for a request that follows at once (another
                // module's batch in the same round).
                if !spin_until(HOT_SPIN, || slot.state.load(Ordering::SeqCst) == REQUESTED) {
                    break;
                }
            }
        }
    })
}

/// Hands the results made so far to gmond's thread.
fn publish(slot: &Slot, made: &mut Vec<(usize, Made)>) {
    if !made.is_empty() {
        slot.results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .append(made);
    }
}

/// Waits (spinning briefly, then asleep) for the next request; false when
/// the worker is to exit.
fn wait_for_request(slot: &Slot) -> bool {
    let requested = || slot.state.load(Ordering::SeqCst) == REQUESTED;
    if !spin_until(WORKER_SPIN, requested) {
        slot.worker_asleep.store(true, Ordering::SeqCst);
        while !requested() && !slot.abandoned.load(Ordering::SeqCst) {
            thread::park();
        }
        slot.worker_asleep.store(false, Ordering::SeqCst);
    }
    !slot.abandoned.load(Ordering::SeqCst)
}
