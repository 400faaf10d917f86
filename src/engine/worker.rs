//! Protected calls: made on a worker thread while the calling thread
//! (gmond's) waits for them, up to a deadline per call.
//!
//! Past a call's deadline the caller stops waiting: the worker stays with
//! that call (it cannot be stopped), and a fresh worker serves everyone
//! else. Waking a sleeping thread costs ~45 µs on these machines
//! (`hung-handlers.md`), so both sides spin briefly before sleeping: in a
//! collection round, calls follow each other within microseconds and the
//! hand-off stays on the spinning path.
//!
//! # The hand-off
//!
//! One `Slot` per worker holds the state both threads move along:
//!
//! ```text
//!  caller: post            worker (holding the GIL): take
//!  IDLE ─────────► REQUESTED ───────────────────────► RUNNING
//!   ▲                 │ caller: withdraw                 │ worker: batch over
//!   │                 ▼ (no GIL in time)                 ▼
//!   ├──────────────  IDLE                               DONE
//!   └────────────────────────── caller: results taken ───┘
//!
//!  worker thread ends, whatever the path (stop, panic): EXITED (final)
//! ```
//!
//! The worker takes a request only once it holds the GIL, and takes it with
//! a compare-and-swap the caller's withdrawal races against: exactly one of
//! them wins. So a worker still waiting for the GIL — held by a C extension,
//! or by another module's stuck call — is never taken for a hung call: its
//! request is withdrawn and the worker stays usable. Only a call that has
//! started (RUNNING) can be abandoned. Abandoning call k is exact: the
//! caller marks `progress` k as abandoned with a compare-and-swap that the
//! worker's own k → k+1 (the call returned) races against, so either the
//! call returned in time or it is the late one, never both. The caller then
//! sets `stop` and never touches the slot's state again; the worker, once
//! that call returns, publishes its result (the late value) and ends in
//! DONE, then EXITED.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use super::call::{
    CallTarget, Failed, Outcome, Step, Stopwatch, Targets, call_and_convert, described,
    in_module_scopes, reset_thread_hooks,
};
use crate::clock;
use crate::fatal_signal::CallMarker;

// Slot states.
const IDLE: u32 = 0;
const REQUESTED: u32 = 1;
const RUNNING: u32 = 2;
const DONE: u32 = 3;
const EXITED: u32 = 4;

/// Marks the `progress` of a batch whose current call the caller gave up on.
const ABANDONED: usize = 1 << (usize::BITS - 1);
/// Marks the `progress` of a batch the worker has finished with: nothing is
/// left to give up on.
const SEALED: usize = 1 << (usize::BITS - 2);

/// How long gmond's thread spins for a result before sleeping, and how long
/// a worker spins for the next request before sleeping. Calls of one
/// collection round arrive microseconds apart.
const CALLER_SPIN: Duration = Duration::from_micros(5);
const WORKER_SPIN: Duration = Duration::from_micros(10);
/// How long a worker holding the GIL waits for the next call of a burst
/// before releasing it (module threads and inline calls need it).
const HOT_SPIN: Duration = Duration::from_micros(10);

/// While a batch runs longer than the spin, the caller looks at it this
/// often (a deadline wakes it sooner).
const POLL: Duration = Duration::from_millis(100);

/// What the worker made of one call (failures, rare, boxed to keep the
/// hand-over buffer small), and its run time when timed.
type Made = (usize, Result<crate::value::Value, Box<Failed>>, f32);

/// The rendezvous between the calling thread and one worker thread.
struct Slot {
    state: AtomicU32,
    /// Set by the caller: the worker is to end after its current call (a
    /// stuck one) or at once when idle.
    stop: AtomicBool,
    /// The metrics to call, in order; written by the caller while IDLE,
    /// taken by the worker on RUNNING.
    batch: Mutex<Vec<usize>>,
    /// Their results, in the same order; each published as it is made
    /// (an uncontended lock, ~15 ns: the caller takes it only at the end),
    /// so a call that gets stuck never holds back the results before it.
    results: Mutex<Vec<Made>>,
    /// How many calls of the batch have returned, with [`ABANDONED`] set
    /// once the caller gave up on the next one.
    progress: AtomicUsize,
    /// Set by the worker while it waits to acquire the GIL (at its start,
    /// or after taking notice of a request), so the caller can tell a
    /// worker held up by the GIL from one not yet awake.
    wants_gil: AtomicBool,
    /// When the current call started (coarse monotonic clock, ns).
    call_started: AtomicU64,
    /// When the call the caller gave up on returned (monotonic ns; 0 before).
    returned: AtomicU64,
    /// How many times the worker has acquired the GIL: after a withdrawal,
    /// tells whether it has got it since.
    gil_taken: AtomicU64,
    worker_asleep: AtomicBool,
    caller_asleep: AtomicBool,
    /// Whether to time each call (for `modpython-check`).
    timed: bool,
    /// The calling thread, woken when a result is ready.
    caller: Thread,
}

/// How a batch handed to the worker ended.
pub enum BatchEnd {
    /// Every call returned.
    Done,
    /// A call did not return within the deadline; the worker stays with it
    /// and must not be used again.
    Stuck(Stuck),
    /// The worker could not get the GIL within the wait: the request was
    /// withdrawn, nothing was called, and the worker stays usable. With how
    /// long it waited, and its count of GIL acquisitions before the request
    /// (a higher count later means it has had the GIL since).
    NoGil { waited: Duration, taken: u64 },
    /// The worker thread ended (an internal error); calls not made.
    Lost,
}

/// A thread that makes calls for the thread that started it.
pub struct Worker {
    slot: Arc<Slot>,
    thread: Thread,
    /// The results of a batch, swapped out of the slot's buffer (the two
    /// swap back and forth, so neither allocates per batch).
    taken: std::cell::Cell<Vec<Made>>,
}

/// A call the caller stopped waiting for; its worker still runs it.
pub struct Stuck {
    slot: Arc<Slot>,
    /// The metric whose call is stuck.
    pub index: usize,
    /// When the call started (monotonic ns).
    started: u64,
}

impl Stuck {
    /// Whether the abandoned call has returned and its worker has let go of
    /// Python: EXITED, not DONE, since the worker's thread state is torn down
    /// after DONE, under the GIL (a module's `threading.local` objects are
    /// released then), and no caller may take the GIL meanwhile.
    pub fn finished(&self) -> bool {
        self.slot.state.load(Ordering::SeqCst) == EXITED
    }

    /// How long the call has run, or ran if it has returned.
    pub fn run_time(&self) -> Duration {
        let end = match self.slot.returned.load(Ordering::Acquire) {
            0 => clock::monotonic_ns(),
            at => at,
        };
        Duration::from_nanos(end.saturating_sub(self.started))
    }

    /// What the call made once it returned (its late result), to `each`.
    pub fn take_results(&self, mut each: impl FnMut(usize, Outcome)) {
        let mut results = self.slot.results.lock().unwrap_or_else(|p| p.into_inner());
        for (index, result, _) in results.drain(..) {
            each(index, made_outcome(result));
        }
    }
}

fn made_outcome(result: Result<crate::value::Value, Box<Failed>>) -> Outcome {
    match result {
        Ok(value) => Outcome::Value(value),
        Err(failed) => Outcome::Failed(*failed),
    }
}

impl Worker {
    /// Starts a worker for calls made from the current thread.
    pub fn spawn(targets: Targets, timed: bool) -> std::io::Result<Worker> {
        let slot = Arc::new(Slot {
            state: AtomicU32::new(IDLE),
            stop: AtomicBool::new(false),
            batch: Mutex::new(Vec::new()),
            results: Mutex::new(Vec::new()),
            progress: AtomicUsize::new(0),
            wants_gil: AtomicBool::new(false),
            call_started: AtomicU64::new(0),
            returned: AtomicU64::new(0),
            gil_taken: AtomicU64::new(0),
            worker_asleep: AtomicBool::new(false),
            caller_asleep: AtomicBool::new(false),
            timed,
            caller: thread::current(),
        });
        let worker_slot = Arc::clone(&slot);
        let handle = thread::Builder::new()
            .name("modpython-call".to_owned())
            .stack_size(crate::python::THREAD_STACK)
            .spawn(move || {
                let _exited = ExitGuard(&worker_slot);
                crate::signals::block_in_this_thread();
                let _alt_stack = crate::fatal_signal::AltStack::for_this_thread();
                let marker = crate::fatal_signal::CallMarker::claim();
                worker_main(&worker_slot, &targets, &marker);
            })?;
        Ok(Worker {
            slot,
            thread: handle.thread().clone(),
            taken: std::cell::Cell::new(Vec::new()),
        })
    }

    /// How many times the worker has held the GIL so far.
    pub fn gil_taken(&self) -> u64 {
        self.slot.gil_taken.load(Ordering::Acquire)
    }

    /// Whether the worker thread has ended (it is of no more use).
    pub fn exited(&self) -> bool {
        self.slot.state.load(Ordering::SeqCst) == EXITED
    }

    /// Whether the worker is waiting to acquire the GIL now.
    pub fn wants_gil(&self) -> bool {
        self.slot.wants_gil.load(Ordering::Acquire)
    }

    /// Has the worker call the metrics of `batch`, in order, each within
    /// `deadline` of its start; each outcome goes to `each` as it is taken
    /// over. Handing a whole round's worth of one module's calls over at
    /// once costs one wake-up instead of one per call. If the worker has
    /// not taken the request within `gil_wait` (it cannot get the GIL), the
    /// request is withdrawn. An empty batch only proves that a thread can
    /// get the GIL now.
    pub fn call_batch(
        &self,
        batch: &[usize],
        deadline: Duration,
        gil_wait: Duration,
        mut each: impl FnMut(usize, Outcome, f32),
    ) -> BatchEnd {
        let slot = &self.slot;
        if slot.state.load(Ordering::SeqCst) != IDLE {
            return BatchEnd::Lost;
        }
        slot.progress.store(0, Ordering::Relaxed);
        let taken = slot.gil_taken.load(Ordering::Acquire);
        {
            let mut requested = slot.batch.lock().unwrap_or_else(|p| p.into_inner());
            requested.clear();
            requested.extend_from_slice(batch);
        }
        // From IDLE only: a worker that ended meanwhile keeps its final state.
        if slot
            .state
            .compare_exchange(IDLE, REQUESTED, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return BatchEnd::Lost;
        }
        if slot.worker_asleep.load(Ordering::SeqCst) {
            self.thread.unpark();
        }
        let mut end = BatchEnd::Done;
        // How many results are this batch's in time (all, unless abandoned).
        let mut made_in_time = usize::MAX;
        let finished = |state: u32| matches!(state, DONE | EXITED);
        if !spin_until(CALLER_SPIN, || finished(slot.state.load(Ordering::SeqCst))) {
            // The clock is read only on this slow path; the spin is part of the wait.
            let posted = Instant::now()
                .checked_sub(CALLER_SPIN)
                .unwrap_or_else(Instant::now);
            slot.caller_asleep.store(true, Ordering::SeqCst);
            loop {
                let wait = match slot.state.load(Ordering::SeqCst) {
                    DONE | EXITED => break,
                    REQUESTED => {
                        let waited = posted.elapsed();
                        // Past the GIL wait only if the worker is awake and
                        // held up by the GIL; one merely slow to be scheduled
                        // gets up to the deadline.
                        let held_up = slot.wants_gil.load(Ordering::SeqCst);
                        let limit = if held_up {
                            gil_wait
                        } else {
                            deadline.max(gil_wait)
                        };
                        if waited >= limit {
                            if slot
                                .state
                                .compare_exchange(
                                    REQUESTED,
                                    IDLE,
                                    Ordering::SeqCst,
                                    Ordering::SeqCst,
                                )
                                .is_ok()
                            {
                                slot.caller_asleep.store(false, Ordering::SeqCst);
                                return BatchEnd::NoGil { waited, taken };
                            }
                            // Taken just now: it is running.
                            continue;
                        }
                        (limit - waited).min(gil_wait)
                    }
                    _ => {
                        // RUNNING: the current call's own deadline; after the
                        // last call, what the worker runs of the module's
                        // (its trace hooks' release) gets one too.
                        let progress = slot.progress.load(Ordering::Acquire);
                        // The coarse stamp plus its lag: never later than the
                        // true start, so a deadline is never cut short.
                        let started =
                            slot.call_started.load(Ordering::Acquire) + clock::coarse_lag_ns();
                        let ran =
                            Duration::from_nanos(clock::monotonic_ns().saturating_sub(started));
                        if progress & SEALED != 0 {
                            // Finished: DONE follows at once.
                            Duration::from_millis(1)
                        } else if ran >= deadline && !batch.is_empty() {
                            // Exact: fails if the call returned meanwhile.
                            if slot
                                .progress
                                .compare_exchange(
                                    progress,
                                    progress | ABANDONED,
                                    Ordering::AcqRel,
                                    Ordering::Acquire,
                                )
                                .is_err()
                            {
                                continue;
                            }
                            slot.stop.store(true, Ordering::SeqCst);
                            self.thread.unpark();
                            end = BatchEnd::Stuck(Stuck {
                                slot: Arc::clone(slot),
                                index: batch[progress.min(batch.len() - 1)],
                                started: started.saturating_sub(clock::coarse_lag_ns()),
                            });
                            made_in_time = progress;
                            break;
                        } else {
                            // Never 0: a wait of nothing would spin.
                            deadline.saturating_sub(ran).max(Duration::from_millis(1))
                        }
                    }
                };
                thread::park_timeout(wait.min(POLL));
            }
            slot.caller_asleep.store(false, Ordering::SeqCst);
        }
        {
            // Drained, not taken: the buffer keeps its capacity from round to
            // round (the worker appends to it under the same lock).
            // Results of calls that returned after the deadline stay for
            // `Stuck::take_results`.
            // Taken out of the lock before `each` runs (it logs): the
            // worker may still push a late result.
            let mut taken = self.taken.take();
            {
                let mut results = slot.results.lock().unwrap_or_else(|p| p.into_inner());
                std::mem::swap(&mut *results, &mut taken);
                if made_in_time < taken.len() {
                    results.extend(taken.drain(made_in_time..));
                }
            }
            for (index, result, seconds) in taken.drain(..) {
                each(index, made_outcome(result), seconds);
            }
            self.taken.set(taken);
        }
        match end {
            BatchEnd::Done if slot.state.load(Ordering::SeqCst) == EXITED => BatchEnd::Lost,
            BatchEnd::Done => {
                match slot
                    .state
                    .compare_exchange(DONE, IDLE, Ordering::SeqCst, Ordering::SeqCst)
                {
                    Ok(_) => BatchEnd::Done,
                    Err(_) => BatchEnd::Lost,
                }
            }
            other => other,
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // A dropped worker ends when it next wakes (or when its stuck call
        // returns).
        self.slot.stop.store(true, Ordering::SeqCst);
        self.thread.unpark();
    }
}

/// Stores the final state however the worker thread ends.
struct ExitGuard<'a>(&'a Slot);

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        self.0.state.store(EXITED, Ordering::SeqCst);
        if self.0.caller_asleep.load(Ordering::SeqCst) {
            self.0.caller.unpark();
        }
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

fn worker_main(slot: &Slot, targets: &[CallTarget], marker: &CallMarker) {
    // Running, and about to wait for the GIL (a thread not yet scheduled
    // is not held up by it).
    slot.wants_gil.store(true, Ordering::SeqCst);
    // One Python thread state for the worker's whole life: modules that
    // keep per-thread state (threading.local, a cached connection) keep it
    // from one round to the next.
    Python::attach(|py| {
        // Swapped with the slot's request, so neither side allocates per batch.
        let mut batch: Vec<usize> = Vec::new();
        loop {
            // The GIL is held here: just acquired, at start or after a wait.
            slot.wants_gil.store(false, Ordering::SeqCst);
            slot.gil_taken.fetch_add(1, Ordering::AcqRel);
            while take_request(slot) {
                std::mem::swap(
                    &mut batch,
                    &mut *slot.batch.lock().unwrap_or_else(|p| p.into_inner()),
                );
                if !run_batch(py, slot, targets, &batch, marker) {
                    return;
                }
                // Keep the GIL for a request that follows at once (another
                // module's batch in the same round).
                if !spin_until(HOT_SPIN, || slot.state.load(Ordering::SeqCst) == REQUESTED) {
                    break;
                }
            }
            if slot.stop.load(Ordering::SeqCst) {
                return;
            }
            // Between batches the GIL is released, so module threads run.
            if !py.detach(|| {
                let go = wait_for_request(slot);
                if go {
                    slot.wants_gil.store(true, Ordering::SeqCst);
                }
                go
            }) {
                return;
            }
        }
    })
}

/// REQUESTED → RUNNING, unless the caller withdrew the request first.
/// The first call's start is stamped before: a caller that sees RUNNING
/// must never read the stamp of an earlier batch.
fn take_request(slot: &Slot) -> bool {
    slot.call_started
        .store(clock::coarse_ns(), Ordering::Release);
    slot.state
        .compare_exchange(REQUESTED, RUNNING, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
}

/// Makes the calls of `batch`; false when the worker is to end (the caller
/// gave up on one of them). `marker` tells a crash which call it ended.
fn run_batch(
    py: Python<'_>,
    slot: &Slot,
    targets: &[CallTarget],
    batch: &[usize],
    marker: &CallMarker,
) -> bool {
    let mut returned = 0;
    let mut abandoned = false;
    in_module_scopes(targets, batch, |step| {
        let Step::Call(target, index) = step else {
            reset_thread_hooks(py);
            return true;
        };
        marker.calling(index);
        let watch = Stopwatch::start(slot.timed);
        // A panic must not end the worker with the batch half made.
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            call_and_convert(py, target).map_err(|failure| Box::new(described(py, failure)))
        }))
        .unwrap_or_else(|_| Err(Box::new(Failed::internal())));
        slot.results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((index, result, watch.seconds()));
        // The next call starts now: stamped before the progress that
        // makes it current, so the caller never pairs the next call with
        // this one's start (and takes it for late).
        slot.call_started
            .store(clock::coarse_ns(), Ordering::Release);
        abandoned = slot
            .progress
            .compare_exchange(returned, returned + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_err();
        returned += 1;
        !abandoned
    });
    // After the release of the last module's hooks, still its code.
    marker.idle();
    // Sealed, exactly: either the caller gave up on what ran after the last
    // call (the release of the module's trace hooks) first, or it can no
    // longer.
    abandoned = abandoned
        || slot
            .progress
            .compare_exchange(
                returned,
                returned | SEALED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err();
    if abandoned {
        // The call the caller gave up on has returned: the late one.
        slot.returned
            .store(clock::monotonic_ns(), Ordering::Release);
    }
    slot.state.store(DONE, Ordering::SeqCst);
    if slot.caller_asleep.load(Ordering::SeqCst) {
        slot.caller.unpark();
    }
    !abandoned && !slot.stop.load(Ordering::SeqCst)
}

/// Waits (spinning briefly, then asleep) for the next request; false when
/// the worker is to end.
fn wait_for_request(slot: &Slot) -> bool {
    let requested = || slot.state.load(Ordering::SeqCst) == REQUESTED;
    if !spin_until(WORKER_SPIN, requested) {
        slot.worker_asleep.store(true, Ordering::SeqCst);
        while !requested() && !slot.stop.load(Ordering::SeqCst) {
            thread::park();
        }
        slot.worker_asleep.store(false, Ordering::SeqCst);
    }
    !slot.stop.load(Ordering::SeqCst)
}
