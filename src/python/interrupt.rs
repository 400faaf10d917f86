//! Deadlines for inline calls (calls made on gmond's own thread).
//!
//! A watchdog thread notices a call that has run past its deadline and sends
//! gmond's thread a real-time signal that gmond does not use. Python runs
//! the handler we registered for it on that thread — the interpreter's main
//! thread — as soon as the call executes bytecode again or a blocking system
//! call returns EINTR, and the handler raises [`DEADLINE_EXCEPTION`], a
//! BaseException the module's `except Exception` cannot swallow.
//! Measured in `hung-handlers.md`: sleeps, sockets, pure-Python loops,
//! subprocess waits and ctypes calls end within milliseconds; a C loop that
//! never checks signals, or a call stuck in the kernel, cannot be ended.
//!
//! Each call of a batch stores a sequence number, nothing more (a clock
//! read per call would cost as much as the rest of our bookkeeping); the
//! batch stores when it started. The watchdog knows when the first call of
//! a batch started, and that any other call started no later than when the
//! watchdog first saw it in flight. It wakes every half of the shortest
//! deadline while idle and every quarter of the deadline while a call is in
//! flight, so a late call is interrupted at its deadline and at most half a
//! deadline later, at a cost of a few wake-ups a minute (each costs tens of
//! microseconds of CPU in a virtual machine). A signal that arrives after
//! its call ended is ignored by the handler, so it can never hit the next,
//! innocent call.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyCFunction;

use crate::clock;

/// The signal used to interrupt a late inline call.
fn deadline_signal() -> libc::c_int {
    libc::SIGRTMIN() + 3
}

/// Name of the exception raised into a late call (in builtins-free module `_modpython`).
pub const DEADLINE_EXCEPTION: &str = "CallDeadlineExceeded";

/// The call in flight (0 = none), by identity. The watchdog sets
/// [`FIRING`] on it while it sends the signal: the call cannot leave flight
/// (see [`leave_flight`]) until the signal has been sent, so the signal
/// never reaches gmond's thread outside the call it was aimed at.
static IN_FLIGHT: AtomicU64 = AtomicU64::new(0);
const FIRING: u64 = 1 << 63;
/// The call the watchdog last signalled.
static TARGET: AtomicU64 = AtomicU64::new(0);
/// When the current batch started at the latest (the monotonic clock, in
/// ns; see [`arm`]), and its first call.
static BATCH_STARTED: AtomicU64 = AtomicU64::new(0);
static BATCH_FIRST: AtomicU64 = AtomicU64::new(0);
/// Deadline of the call in flight, in milliseconds.
static DEADLINE_MS: AtomicU64 = AtomicU64::new(0);
/// The shortest deadline ever armed: how long the watchdog may sleep while
/// no call is in flight (a call starting meanwhile is then still caught on
/// time).
static SHORTEST_DEADLINE_MS: AtomicU64 = AtomicU64::new(u64::MAX);
static NEXT_SEQ: AtomicU64 = AtomicU64::new(0);
/// How long the call had run when the watchdog first signalled it, in ms.
static FIRED_AFTER_MS: AtomicU64 = AtomicU64::new(0);
static STARTED: AtomicBool = AtomicBool::new(false);
static WATCHDOG: OnceLock<std::thread::Thread> = OnceLock::new();

struct Installed {
    gmond_thread: libc::pthread_t,
    exception: Py<PyAny>,
    /// The Python-level handler, to register again if a module replaced it.
    handler: Py<PyAny>,
    /// The signal's action as Python installed it for `handler`.
    action: libc::sigaction,
}

// SAFETY: `sigaction` is plain data (a function pointer, flags and a mask);
// it is only read, and handed back to the kernel unchanged.
unsafe impl Send for Installed {}
// SAFETY: as above; nothing in it is mutated after installation.
unsafe impl Sync for Installed {}

/// Set when the signal's action was found changed and put back: the
/// Python-level handler must be registered again (under the GIL, at the
/// next [`arm`]).
static REINSTALL: AtomicBool = AtomicBool::new(false);

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Registers the Python-level handler on gmond's thread and starts the
/// watchdog. Must run on gmond's thread (the interpreter's main thread).
pub fn install(py: Python<'_>) -> PyResult<()> {
    if INSTALLED.get().is_some() {
        return Ok(());
    }
    let builtins = py.import("builtins")?;
    let exception = builtins.getattr("type")?.call1((
        DEADLINE_EXCEPTION,
        (builtins.getattr("BaseException")?,),
        pyo3::types::PyDict::new(py),
    ))?;
    exception.setattr("__module__", "modpython")?;
    let raise_into = exception.clone().unbind();
    let handler = PyCFunction::new_closure(py, None, None, move |args, _kwargs| -> PyResult<()> {
        // Only the call the watchdog aimed at, and only while it still runs.
        let target = TARGET.load(Ordering::Acquire);
        if target != 0 && IN_FLIGHT.load(Ordering::Relaxed) & !FIRING == target {
            let py = args.py();
            return Err(PyErr::from_value(
                raise_into
                    .bind(py)
                    .call1(("the call ran past its modpython deadline",))?,
            ));
        }
        Ok(())
    })?;
    // `_signal`, the C module under signal.py: the same signal(), without
    // importing enum (~1 MB, ~6 ms at start) for the IntEnum wrappers.
    py.import("_signal")?
        .call_method1("signal", (deadline_signal(), &handler))?;
    // SAFETY: pthread_self has no preconditions.
    let gmond_thread = unsafe { libc::pthread_self() };
    let _ = INSTALLED.set(Installed {
        gmond_thread,
        exception: exception.unbind(),
        handler: handler.into_any().unbind(),
        action: signal_action(),
    });
    Ok(())
}

fn signal_action() -> libc::sigaction {
    // SAFETY: sigaction with a null new action only reads the current one
    // into the zero-initialised struct we own.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        libc::sigaction(deadline_signal(), std::ptr::null(), &mut action);
        action
    }
}

/// Whether the deadline signal still has the action Python installed for
/// our handler. A module may have replaced it (`signal.signal(…,
/// SIG_DFL)` in an inline call): then the next deadline would kill gmond.
/// The action is put back (Python's own C handler, which only records the
/// signal), and the Python-level handler is registered again at the next
/// [`arm`]. Returns false when it had to be put back.
fn ensure_action(installed: &Installed) -> bool {
    let now = signal_action();
    if now.sa_sigaction == installed.action.sa_sigaction {
        return true;
    }
    // SAFETY: re-installs exactly the action read from the kernel at
    // installation, for the same signal.
    unsafe { libc::sigaction(deadline_signal(), &installed.action, std::ptr::null_mut()) };
    REINSTALL.store(true, Ordering::Release);
    false
}

/// Puts the deadline signal's action back if module code changed it;
/// returns the warning to log then (see `ensure_action`).
pub fn restore_if_changed() -> Option<String> {
    let installed = INSTALLED.get()?;
    if ensure_action(installed) {
        return None;
    }
    Some(format!(
        "changed the action of signal {} (SIGRTMIN+3), which modpython uses to interrupt late inline calls; modpython's handler is restored",
        deadline_signal()
    ))
}

/// When [`arm`] last looked at Python's handler ([`clock::coarse_ns`]).
static HANDLER_CHECKED: AtomicU64 = AtomicU64::new(0);
/// Set when the watchdog signalled a call since the last [`arm`].
static SIGNALLED: AtomicBool = AtomicBool::new(false);
/// Set while the watchdog waits out [`RESEND_EVERY`] after signalling.
static RESTING: AtomicBool = AtomicBool::new(false);

/// Whether Python's handler for the signal is still ours.
fn handler_in_place(py: Python<'_>) -> bool {
    let Some(installed) = INSTALLED.get() else {
        return true;
    };
    let current = py
        .import("_signal")
        .and_then(|s| s.call_method1("getsignal", (deadline_signal(),)));
    match current {
        Ok(handler) if handler.is(installed.handler.bind(py)) => true,
        Ok(_) => {
            log::warn!(
                "module code replaced modpython's handler of signal {} (SIGRTMIN+3), which interrupts late inline calls (noticed after the call of {}); modpython's is registered again",
                deadline_signal(),
                label_of_current()
            );
            false
        }
        Err(_) => true,
    }
}

/// Registers the Python-level handler again after [`ensure_action`] put
/// the action back.
#[cold]
fn reinstall(py: Python<'_>) {
    REINSTALL.store(false, Ordering::Relaxed);
    if let Some(installed) = INSTALLED.get() {
        let registered = py.import("_signal").and_then(|s| {
            s.call_method1("signal", (deadline_signal(), installed.handler.bind(py)))
        });
        if let Err(e) = registered {
            log::error!(
                "cannot register modpython's deadline handler again ({e}); late inline calls are not interrupted"
            );
        }
    }
}

/// Starts the watchdog thread the first time an inline call is armed: its
/// wake-ups cost gmond CPU, and sites with only protected modules need none.
#[cold]
fn start_watchdog() {
    if STARTED.swap(true, Ordering::SeqCst) || INSTALLED.get().is_none() {
        return;
    }
    match std::thread::Builder::new()
        .name("modpython-watchdog".to_owned())
        .spawn(watchdog)
    {
        Ok(handle) => {
            let _ = WATCHDOG.set(handle.thread().clone());
        }
        Err(e) => {
            log::error!(
                "cannot start the watchdog for inline calls ({e}); late inline calls will not be interrupted"
            );
        }
    }
}

/// Whether `err` is the exception the watchdog raised.
pub fn is_deadline(py: Python<'_>, err: &PyErr) -> bool {
    INSTALLED
        .get()
        .is_some_and(|i| err.get_type(py).is(i.exception.bind(py)))
}

/// Marks an inline call in flight until the guard is dropped.
pub struct Armed {
    seq: u64,
    /// Whether [`Armed::next`] has been called: the call `arm` began is the
    /// first one of the batch.
    moved_on: bool,
}

impl Armed {
    /// Whether the watchdog signalled this call (it ran past its deadline).
    pub fn fired(&self) -> bool {
        TARGET.load(Ordering::Acquire) == self.seq
    }

    /// How long the call had run when the watchdog first signalled it.
    pub fn fired_after(&self) -> Duration {
        Duration::from_millis(FIRED_AFTER_MS.load(Ordering::Acquire))
    }

    /// Marks the call just made as no longer in flight (until `next`).
    pub fn pause(&self) {
        leave_flight(self.seq);
    }

    /// The next call of a batch, under the same guard: a new identity for
    /// the watchdog, so each call gets its own deadline. The first time,
    /// it is the call `arm` began (whose start the watchdog knows exactly).
    pub fn next(&mut self, index: usize) {
        if self.moved_on {
            self.seq = begin_call(index);
        } else {
            // `arm` put this call in flight already.
            self.moved_on = true;
        }
    }
}

/// The `arm` index of a module's import and metric_init (inline modules).
pub const INIT: usize = usize::MAX;

static LABEL_INDEX: AtomicUsize = AtomicUsize::new(INIT);
static METRIC_LABELS: RwLock<Option<Arc<Labels>>> = RwLock::new(None);

/// What names a metric in the watchdog's messages: its module's label
/// ("module 'x' (path)") and its name, shared with the host rather than
/// formatted for every metric in advance.
pub struct Labels {
    pub modules: Vec<String>,
    /// Per metric index: its module (index into `modules`) and name.
    pub metrics: Vec<(u32, std::sync::Arc<str>)>,
}

/// Names the metrics by index, once they are known (replacing the names
/// of an earlier set of modules, in tests that start several).
pub fn set_metric_labels(labels: Arc<Labels>) {
    *METRIC_LABELS.write().unwrap_or_else(|p| p.into_inner()) = Some(labels);
}

/// The index ([`INIT`] for a load) of the inline call in flight on
/// gmond's thread, if one is: for the fatal-signal handler, which may read
/// only atomics.
pub(crate) fn inline_call_in_flight() -> Option<usize> {
    if IN_FLIGHT.load(Ordering::Relaxed) & !FIRING == 0 {
        return None;
    }
    Some(LABEL_INDEX.load(Ordering::Relaxed))
}

fn label_of_current() -> String {
    let i = LABEL_INDEX.load(Ordering::Relaxed);
    if i == INIT {
        return "an inline module's import or metric_init".to_owned();
    }
    METRIC_LABELS
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|l| {
            let (module, name) = l.metrics.get(i)?;
            Some(format!(
                "{}: metric '{name}'",
                l.modules.get(*module as usize)?
            ))
        })
        .unwrap_or_else(|| format!("metric index {i}"))
}

/// Arms the watchdog for one inline call of metric `index`, with `deadline`
/// for it and for each call [`Armed::next`] starts.
pub fn arm(py: Python<'_>, deadline: Duration, index: usize) -> Armed {
    if !STARTED.load(Ordering::Relaxed) {
        start_watchdog();
    }
    // A module may have replaced our Python-level handler with one of its
    // own (`signal.signal(SIGRTMIN+3, f)`), which leaves the signal's action
    // as it was: looked at once a second (a Python call, ~4 µs here, too
    // dear for each batch), and after any batch whose call the watchdog had
    // to signal.
    let now = clock::coarse_ns();
    let look = SIGNALLED.load(Ordering::Relaxed)
        || now.saturating_sub(HANDLER_CHECKED.load(Ordering::Relaxed)) >= 1_000_000_000;
    if look {
        HANDLER_CHECKED.store(now, Ordering::Relaxed);
        SIGNALLED.store(false, Ordering::Relaxed);
    }
    if REINSTALL.load(Ordering::Acquire) || (look && !handler_in_place(py)) {
        reinstall(py);
    }
    // Rounded up: a deadline is never cut short.
    let ms = u64::try_from(deadline.as_nanos().div_ceil(1_000_000))
        .unwrap_or(u64::MAX)
        .max(1);
    DEADLINE_MS.store(ms, Ordering::Relaxed);
    if ms < SHORTEST_DEADLINE_MS.load(Ordering::Relaxed) {
        // Rare (a shorter deadline than any before): the watchdog may be in
        // a longer sleep, which this call must not outlast.
        SHORTEST_DEADLINE_MS.store(ms, Ordering::Relaxed);
        if let Some(watchdog) = WATCHDOG.get() {
            watchdog.unpark();
        }
    }
    // The coarse clock plus its lag: never earlier than the true start, so
    // a call is never cut short, and at most a few ms late; the precise
    // clock cost ~10 % of a lone inline call here.
    BATCH_STARTED.store(now + clock::coarse_lag_ns(), Ordering::Relaxed);
    let seq = begin_call(index);
    BATCH_FIRST.store(seq, Ordering::Release);
    // Looked at after the new call is in flight (the watchdog stores
    // RESTING before it looks at the call in flight): one of the two sees
    // the other, so a watchdog waiting out a resend after a late call never
    // sleeps through this batch's deadline.
    std::sync::atomic::fence(Ordering::SeqCst);
    if RESTING.load(Ordering::SeqCst) {
        if let Some(watchdog) = WATCHDOG.get() {
            watchdog.unpark();
        }
    }
    Armed {
        seq,
        moved_on: false,
    }
}

/// A few plain stores, no clock read and no locked instruction: this runs
/// before every inline call. Only gmond's thread
/// arms (inline calls and inline imports run there), so the sequence needs
/// no atomic increment; the watchdog only compares identities, and the
/// signal handler runs on this same thread.
#[inline]
fn begin_call(index: usize) -> u64 {
    let seq = NEXT_SEQ.load(Ordering::Relaxed).wrapping_add(1).max(1);
    NEXT_SEQ.store(seq, Ordering::Relaxed);
    LABEL_INDEX.store(index, Ordering::Relaxed);
    IN_FLIGHT.store(seq, Ordering::Release);
    seq
}

impl Drop for Armed {
    fn drop(&mut self) {
        leave_flight(self.seq);
    }
}

/// Takes call `seq` out of flight. If the watchdog is sending it the
/// signal right now, waits until it has been sent (microseconds), and if
/// the call was signalled, takes a signal still pending off gmond's thread:
/// delivered later, outside the call, it would make gmond's own next system
/// call fail with EINTR.
fn leave_flight(seq: u64) {
    let mut spins = 0u32;
    loop {
        match IN_FLIGHT.compare_exchange(seq, 0, Ordering::AcqRel, Ordering::Acquire) {
            Err(now) if now == seq | FIRING => {
                // Microseconds, unless the watchdog was descheduled between
                // its claim and the signal: then let it run.
                spins += 1;
                if spins < 1000 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
            // Done, or already out of flight (paused before being dropped).
            _ => break,
        }
    }
    if TARGET.load(Ordering::Acquire) == seq {
        discard_pending_signal();
    }
}

#[cold]
fn discard_pending_signal() {
    // SAFETY: the set is ours; the signal is blocked on this thread only
    // while a zero-timeout sigtimedwait takes any pending instance, then
    // the thread's previous mask is restored.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, deadline_signal());
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut previous);
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        while libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) > 0 {}
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
    }
}

/// How often a late call is signalled again: a bare `except:` in the module
/// may swallow one deadline exception, rarely ten.
const RESEND_EVERY: Duration = Duration::from_millis(500);

fn watchdog() {
    crate::signals::block_in_this_thread();
    let mut reported = 0u64;
    // The call signalled last, and when.
    let mut sent: Option<(u64, Duration)> = None;
    // The call in flight at the last look, and when it started at the latest.
    let mut seen: Option<(u64, u64)> = None;
    loop {
        let shortest = Duration::from_millis(
            SHORTEST_DEADLINE_MS
                .load(Ordering::Relaxed)
                .clamp(10, 60_000),
        );
        let current = IN_FLIGHT.load(Ordering::Acquire) & !FIRING;
        if current == 0 {
            seen = None;
            std::thread::park_timeout(shortest / 2);
            continue;
        }
        let now = clock::monotonic_ns();
        // Read after `current`: a newer batch's start, if one began since,
        // only makes the call look younger, never older.
        let started = if BATCH_FIRST.load(Ordering::Acquire) == current {
            BATCH_STARTED.load(Ordering::Relaxed)
        } else {
            match seen {
                Some((call, at)) if call == current => at,
                _ => now,
            }
        };
        seen = Some((current, started));
        let elapsed = Duration::from_nanos(now.saturating_sub(started));
        let deadline = Duration::from_millis(DEADLINE_MS.load(Ordering::Relaxed));
        if elapsed < deadline {
            std::thread::park_timeout((deadline - elapsed).min(deadline / 4).min(shortest / 2));
            continue;
        }
        let resend = match sent {
            Some((call, at)) if call == current => elapsed >= at + RESEND_EVERY,
            _ => true,
        };
        // Claimed: the call cannot leave flight until the signal is sent.
        let claimed = resend
            && IN_FLIGHT
                .compare_exchange(
                    current,
                    current | FIRING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok();
        if claimed {
            if sent.is_none_or(|(call, _)| call != current) {
                FIRED_AFTER_MS.store(elapsed.as_millis() as u64, Ordering::Release);
            }
            sent = Some((current, elapsed));
            TARGET.store(current, Ordering::Release);
            SIGNALLED.store(true, Ordering::Relaxed);
            let mut action_replaced = false;
            if let Some(installed) = INSTALLED.get() {
                if ensure_action(installed) {
                    // SAFETY: gmond's main thread lives as long as the
                    // process; the signal's action was just checked to be
                    // Python's handler, so it cannot kill gmond.
                    unsafe { libc::pthread_kill(installed.gmond_thread, deadline_signal()) };
                } else {
                    action_replaced = true;
                }
            }
            // Released before anything slow (logging may block on syslog):
            // the call may leave flight now.
            IN_FLIGHT.store(current, Ordering::Release);
            if action_replaced {
                log::warn!(
                    "{}: module code replaced the action of signal {} (SIGRTMIN+3), which modpython uses to interrupt late inline calls; it is put back (the call in flight is not interrupted this time)",
                    label_of_current(),
                    deadline_signal()
                );
            }
        }
        if elapsed >= deadline + Duration::from_secs(2) && reported != current {
            reported = current;
            log::error!(
                "{}: an inline call has run for {}s, past its {:.1}s deadline, and does not stop when interrupted (a C loop, a call stuck in the kernel, or code that catches every exception): gmond is stalled until it returns; use call_mode = protected for this module",
                label_of_current(),
                elapsed.as_secs(),
                deadline.as_secs_f64()
            );
        }
        RESTING.store(true, Ordering::SeqCst);
        if IN_FLIGHT.load(Ordering::SeqCst) & !FIRING == current {
            std::thread::park_timeout(RESEND_EVERY);
        }
        RESTING.store(false, Ordering::SeqCst);
    }
}
