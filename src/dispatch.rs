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

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::descriptor::ValueType;
use crate::python::{errors, extract, interrupt, stdio};
use crate::value::{self, ConversionError, Value};

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

/// Why a call produced no value.
pub enum Failed {
    /// The callback raised (SystemExit and KeyboardInterrupt included).
    Raised(PyErr),
    /// It returned something that does not convert to the metric's type.
    Value(ConversionError),
}

impl Failed {
    /// The traceback (or reason) in full, for the first report of a run.
    pub fn detail(&self) -> String {
        match self {
            Failed::Raised(err) => Python::attach(|py| errors::describe(py, err)),
            Failed::Value(e) => e.0.clone(),
        }
    }

    /// One line, for the periodic reminders.
    pub fn summary(&self) -> String {
        match self {
            Failed::Raised(err) => Python::attach(|py| errors::summary(py, err)),
            Failed::Value(e) => e.0.clone(),
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
/// Must run with the GIL held; every mode ends up here.
pub fn invoke(py: Python<'_>, target: &CallTarget) -> Result<Value, Failed> {
    let _scope = stdio::ModuleScope::enter(&target.module_name);
    match target.callback.bind(py).call1((target.py_name.bind(py),)) {
        Ok(obj) => {
            value::convert(&extract::returned(&obj), target.value_type).map_err(Failed::Value)
        }
        Err(err) => Err(Failed::Raised(err)),
    }
}

/// An inline call on gmond's thread, under the watchdog's deadline;
/// `started` is when the caller began timing it (one clock read per call).
pub fn call_inline(target: &CallTarget, deadline: Duration, started: Instant) -> Outcome {
    let guard = interrupt::arm(deadline);
    let result = Python::attach(|py| {
        let result = invoke(py, target);
        // A deadline exception is ours, not the module's.
        match result {
            Err(Failed::Raised(ref err)) if interrupt::is_deadline(py, err) => None,
            other => Some(other),
        }
    });
    drop(guard);
    match result {
        Some(Ok(value)) => Outcome::Value(value),
        Some(Err(failed)) => Outcome::Failed(failed),
        None => Outcome::TimedOut(started.elapsed()),
    }
}

// Worker slot states.
const IDLE: u32 = 0;
const REQUESTED: u32 = 1;
const DONE: u32 = 2;

/// How long gmond's thread spins for a result before sleeping, and how long
/// a worker spins for the next request before sleeping. Calls of one
/// collection round arrive microseconds apart.
const CALLER_SPIN: Duration = Duration::from_micros(50);
const WORKER_SPIN: Duration = Duration::from_micros(100);

/// The rendezvous between gmond's thread and one worker thread.
struct Slot {
    state: AtomicU32,
    index: AtomicUsize,
    result: Mutex<Option<Result<Value, Failed>>>,
    worker_asleep: AtomicBool,
    caller_asleep: AtomicBool,
    /// Set when gmond gave up on this worker's call: the worker exits once
    /// that call returns, instead of serving more.
    abandoned: AtomicBool,
    /// gmond's thread, woken when a result is ready.
    caller: Thread,
}

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
            index: AtomicUsize::new(0),
            result: Mutex::new(None),
            worker_asleep: AtomicBool::new(false),
            caller_asleep: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            caller: thread::current(),
        });
        let worker_slot = Arc::clone(&slot);
        let handle = thread::Builder::new()
            .name("modpython-call".to_owned())
            .spawn(move || worker_loop(&worker_slot, &targets))?;
        Ok(Worker {
            slot,
            thread: handle.thread().clone(),
        })
    }

    /// Has the worker call metric `index`, waiting at most `deadline`. On
    /// `Err`, the worker is stuck in the call and must not be used again.
    pub fn call(
        &self,
        index: usize,
        deadline: Duration,
        started: Instant,
    ) -> Result<Outcome, Stuck> {
        let slot = &self.slot;
        slot.index.store(index, Ordering::Relaxed);
        slot.state.store(REQUESTED, Ordering::SeqCst);
        if slot.worker_asleep.load(Ordering::SeqCst) {
            self.thread.unpark();
        }
        if !spin_until(CALLER_SPIN, || slot.state.load(Ordering::SeqCst) == DONE) {
            slot.caller_asleep.store(true, Ordering::SeqCst);
            while slot.state.load(Ordering::SeqCst) != DONE {
                let elapsed = started.elapsed();
                if elapsed >= deadline {
                    slot.caller_asleep.store(false, Ordering::SeqCst);
                    slot.abandoned.store(true, Ordering::SeqCst);
                    self.thread.unpark();
                    return Err(Stuck {
                        slot: Arc::clone(slot),
                        index,
                        since: started,
                    });
                }
                thread::park_timeout(deadline - elapsed);
            }
            slot.caller_asleep.store(false, Ordering::SeqCst);
        }
        let result = slot.result.lock().unwrap_or_else(|p| p.into_inner()).take();
        slot.state.store(IDLE, Ordering::SeqCst);
        Ok(match result {
            Some(Ok(value)) => Outcome::Value(value),
            Some(Err(failed)) => Outcome::Failed(failed),
            // Cannot happen: DONE is only set after the result is stored.
            None => Outcome::TimedOut(started.elapsed()),
        })
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
    loop {
        // Sleep until there is work (or we are told to go).
        if !spin_until(WORKER_SPIN, || {
            slot.state.load(Ordering::SeqCst) == REQUESTED
        }) {
            slot.worker_asleep.store(true, Ordering::SeqCst);
            while slot.state.load(Ordering::SeqCst) != REQUESTED
                && !slot.abandoned.load(Ordering::SeqCst)
            {
                thread::park();
            }
            slot.worker_asleep.store(false, Ordering::SeqCst);
        }
        if slot.abandoned.load(Ordering::SeqCst) {
            return;
        }
        // Keep the GIL across the calls of one burst: taking it per call
        // would cost more than the call.
        Python::attach(|py| {
            loop {
                let index = slot.index.load(Ordering::Relaxed);
                let result = match targets.get(index) {
                    Some(target) => invoke(py, target),
                    None => Err(Failed::Value(ConversionError(format!(
                        "no metric with index {index}"
                    )))),
                };
                *slot.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
                slot.state.store(DONE, Ordering::SeqCst);
                if slot.caller_asleep.load(Ordering::SeqCst) {
                    slot.caller.unpark();
                }
                if slot.abandoned.load(Ordering::SeqCst) {
                    return;
                }
                let next = spin_until(WORKER_SPIN, || {
                    slot.state.load(Ordering::SeqCst) == REQUESTED
                });
                if !next || slot.abandoned.load(Ordering::SeqCst) {
                    return;
                }
            }
        });
        if slot.abandoned.load(Ordering::SeqCst) {
            return;
        }
    }
}
