//! Naming the module whose call brings gmond down.
//!
//! A module's handler can crash the whole process: `ctypes.string_at(0)`
//! (SIGSEGV), `os.abort()` or a C library's failed assertion (SIGABRT), a
//! C extension built for another Python (SIGILL, SIGBUS). Inline calls run
//! on gmond's thread and protected ones on our worker thread, but both are
//! in gmond's process, so neither survives it. gmond installs nothing for
//! these signals and would die with no word in its log about which module
//! did it. [`install`] gives them a handler that writes one line naming the
//! module and metric whose call was in flight on the crashing thread, then
//! that thread's Python traceback, into gmond's log, and then lets the
//! signal kill gmond as it would have (same signal, core dump if enabled).
//!
//! # What the handler may do
//!
//! It runs in a process whose state is unknown (the crash may be inside
//! malloc, or while a lock is held), so it uses only async-signal-safe
//! system calls on what [`install`] prepared: no allocation, no lock, no
//! `syslog(3)` (it takes a lock and may allocate), no Rust formatting.
//! Lines are built in fixed buffers on the stack ([`Line`]).
//!
//! * *Which call*: the worker stores the index of the metric it is about to
//!   call in a slot of its own ([`CallMarker`], one relaxed store per
//!   call); inline calls are already tracked for the watchdog
//!   (`interrupt::inline_call_in_flight`). Names come from a table built
//!   once when the metrics are known and never freed ([`publish_names`]).
//! * *The traceback*: CPython's `_Py_DumpTraceback` (the function
//!   faulthandler uses from its own signal handler) writes the crashing
//!   thread's frames into a pipe made at install; the handler reads them
//!   back and forwards each line with our prefix. Only 3.11 and 3.12
//!   export it; with the others, Python's faulthandler is enabled into the
//!   same pipe after our handlers are installed: it runs first, writes the
//!   traceback, and passes the signal on to ours (the handler it found),
//!   which forwards what it wrote. On a thread Python does not know there
//!   is no traceback.
//! * *Where to*: where gmond's `err_msg` writes. In the foreground that is
//!   stderr. A daemonized gmond (libganglia's `daemon_proc` set, which gmond
//!   does before it calls our `init`) logs with `syslog(3)`, so the handler
//!   sends datagrams in syslog's format to `/dev/log` itself, through a
//!   socket opened at install: `<PRI>Mmm dd hh:mm:ss IDENT[PID]: message`.
//!   PRI is daemon.err (gmond's own lines are daemon.info; a crash is worth
//!   `journalctl -p err`). The local time is the UTC clock plus the UTC
//!   offset read at install (converting with the time zone rules takes a
//!   lock), so a crash after a daylight-saving change is stamped an hour
//!   off; journald and rsyslog add their own receive time anyway.
//! * *Then*: the action the signal had before ours is put back (SIG_DFL for
//!   gmond) and the signal happens again: a hardware fault by returning
//!   (the faulting instruction runs again), a signal sent with `raise`,
//!   `abort` or `kill` by raising it again. gmond dies exactly as before.
//!
//! A module that installs its own handler later (`faulthandler.enable()`)
//! is left alone: unlike gmond's SIGTERM/SIGHUP, a fatal signal is not
//! gmond's to keep. faulthandler hands the signal on to the handler it
//! found, ours, once it has dumped its tracebacks, so both reports appear.
//!
//! Stack overflows: the kernel can run a handler for a thread whose stack
//! is exhausted only on an alternate signal stack. Threads modpython
//! starts, and gmond's thread, get one ([`AltStack`]); threads a module
//! starts do not, and a stack overflow there kills gmond silently, as it
//! did before.

use std::ffi::{CStr, c_int, c_void};
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The signals a crash brings, and their names for the log.
const FATAL: [(c_int, &str); 5] = [
    (libc::SIGSEGV, "SIGSEGV"),
    (libc::SIGBUS, "SIGBUS"),
    (libc::SIGFPE, "SIGFPE"),
    (libc::SIGILL, "SIGILL"),
    (libc::SIGABRT, "SIGABRT"),
];

/// `LOG_DAEMON | LOG_ERR`, the `<PRI>` of our syslog datagrams.
const SYSLOG_PRI: u64 = 3 * 8 + 3;

/// What the remedy lines say: the call mode that survives a crash.
const ISOLATE: &str = r#"param "modpython.call_mode" { value = "isolated" }"#;

// ---------------------------------------------------------------------------
// Which call is in flight
// ---------------------------------------------------------------------------

/// `CallMarker` values besides a metric index + 1.
const NO_CALL: u32 = 0;
/// A protected module's import and `metric_init`, on the loading thread.
const LOADING: u32 = u32::MAX;
/// Modules' `metric_cleanup`, on the cleanup thread.
const CLEANING_UP: u32 = u32::MAX - 1;

/// One thread's marker: its kernel thread id, and what it is calling.
struct Mark {
    tid: AtomicI32,
    call: AtomicU32,
}

/// More than modpython ever runs at once: a worker, one stuck worker per
/// module at most, a loading thread, the cleanup thread.
const MARKS: usize = 64;
static MARK_TABLE: [Mark; MARKS] = [const {
    Mark {
        tid: AtomicI32::new(0),
        call: AtomicU32::new(NO_CALL),
    }
}; MARKS];
/// Where a thread that found no free slot stores its calls (never read).
static NOWHERE: AtomicU32 = AtomicU32::new(NO_CALL);

/// A thread's claim on a slot of the marker table, for as long as it lives.
pub struct CallMarker {
    slot: Option<&'static Mark>,
    call: &'static AtomicU32,
}

impl CallMarker {
    /// Claims a slot for the calling thread.
    pub fn claim() -> CallMarker {
        let tid = this_thread();
        for mark in &MARK_TABLE {
            if mark
                .tid
                .compare_exchange(0, tid, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return CallMarker {
                    slot: Some(mark),
                    call: &mark.call,
                };
            }
        }
        // Only with more than MARKS threads of ours at once (a site with
        // dozens of stuck modules): their crashes go unattributed.
        CallMarker {
            slot: None,
            call: &NOWHERE,
        }
    }

    /// The thread is about to call metric `index`: a single relaxed store,
    /// since this runs before every protected call. It stays set after the
    /// call returns, because what follows (converting the result, the
    /// traceback of a failure, a trace hook's release) is still the
    /// module's code; [`CallMarker::idle`] ends it once per batch.
    #[inline]
    pub fn calling(&self, index: usize) {
        self.call
            .store((index as u32).wrapping_add(1), Ordering::Relaxed);
    }

    /// The thread's calls are over for now.
    #[inline]
    pub fn idle(&self) {
        self.call.store(NO_CALL, Ordering::Relaxed);
    }

    /// The thread runs a module's import and `metric_init`.
    pub fn loading(&self) {
        self.call.store(LOADING, Ordering::Relaxed);
    }

    /// The thread runs modules' `metric_cleanup`.
    pub fn cleaning_up(&self) {
        self.call.store(CLEANING_UP, Ordering::Relaxed);
    }
}

impl Drop for CallMarker {
    fn drop(&mut self) {
        if let Some(mark) = self.slot {
            // Cleared before the slot is let go, so its next owner never
            // starts with this thread's call.
            mark.call.store(NO_CALL, Ordering::Relaxed);
            mark.tid.store(0, Ordering::Release);
        }
    }
}

/// What the slot of thread `tid` says, if it has one.
fn marked_call(tid: c_int) -> Option<u32> {
    MARK_TABLE
        .iter()
        .find(|m| m.tid.load(Ordering::Acquire) == tid)
        .map(|m| m.call.load(Ordering::Relaxed))
}

fn this_thread() -> c_int {
    // SAFETY: gettid has no preconditions and is async-signal-safe.
    unsafe { libc::gettid() }
}

/// The metrics' names as the handler prints them, by index.
struct Names {
    /// Each module's label, `module 'x' (/path/x.py)`.
    modules: Box<[Box<[u8]>]>,
    /// Per metric: its module (index into `modules`) and its name, shared
    /// with the engine's labels (a copy would cost ~50 bytes a metric).
    /// The leaked table never gives up its counts, so the names live as
    /// long as the process; the handler only reads their bytes.
    metrics: Box<[(u32, Arc<str>)]>,
}

/// The table in use; each one published is leaked, because the handler may
/// be reading it while a newer one replaces it (one per engine start).
static NAMES: AtomicPtr<Names> = AtomicPtr::new(std::ptr::null_mut());

/// Publishes the names the handler gives calls by: `modules` are modules'
/// labels, `metrics` each metric's module and name, by metric index.
pub fn publish_names(modules: &[String], metrics: &[(u32, Arc<str>)]) {
    let names = Names {
        modules: modules.iter().map(|m| one_line(m)).collect(),
        metrics: metrics.into(),
    };
    NAMES.store(Box::into_raw(Box::new(names)), Ordering::Release);
}

/// A name as one log line can carry it.
fn one_line(text: &str) -> Box<[u8]> {
    text.bytes()
        .map(|b| if b.is_ascii_control() { b' ' } else { b })
        .collect()
}

fn names() -> Option<&'static Names> {
    // SAFETY: the pointer is null or came from Box::into_raw in
    // publish_names, and is never freed.
    unsafe { NAMES.load(Ordering::Acquire).as_ref() }
}

// ---------------------------------------------------------------------------
// Composing the line (plain code, unit-tested)
// ---------------------------------------------------------------------------

/// A line built in a fixed buffer: pushes past the end are dropped and
/// the line then ends in "...".
pub(crate) struct Line<const N: usize> {
    bytes: [u8; N],
    len: usize,
    cut: bool,
}

impl<const N: usize> Line<N> {
    pub(crate) const fn new() -> Self {
        Line {
            bytes: [0; N],
            len: 0,
            cut: false,
        }
    }

    pub(crate) fn push(&mut self, text: &[u8]) -> &mut Self {
        let room = N - self.len;
        let n = text.len().min(room);
        self.bytes[self.len..self.len + n].copy_from_slice(&text[..n]);
        self.len += n;
        if n < text.len() {
            self.cut = true;
        }
        self
    }

    /// `text` with control characters (a newline would start a line of
    /// its own in the log) as spaces.
    pub(crate) fn clean(&mut self, text: &[u8]) -> &mut Self {
        for &b in text {
            self.push(&[if b.is_ascii_control() { b' ' } else { b }]);
        }
        self
    }

    pub(crate) fn str(&mut self, text: &str) -> &mut Self {
        self.push(text.as_bytes())
    }

    pub(crate) fn dec(&mut self, mut n: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..])
    }

    /// `n` in two digits, padded with `pad`.
    fn two(&mut self, n: u32, pad: u8) -> &mut Self {
        let tens = if n >= 10 {
            b'0' + (n / 10 % 10) as u8
        } else {
            pad
        };
        self.push(&[tens, b'0' + (n % 10) as u8])
    }

    pub(crate) fn hex(&mut self, n: u64) -> &mut Self {
        let mut digits = [0u8; 16];
        let mut i = digits.len();
        let mut rest = n;
        loop {
            i -= 1;
            digits[i] = b"0123456789abcdef"[(rest & 0xf) as usize];
            rest >>= 4;
            if rest == 0 {
                break;
            }
        }
        self.push(b"0x").push(&digits[i..])
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The line, marked "..." at the end if something did not fit.
    pub(crate) fn finish(&mut self) -> &[u8] {
        if self.cut && N >= 3 {
            self.bytes[N - 3..].copy_from_slice(b"...");
            self.len = N;
        }
        &self.bytes[..self.len]
    }
}

/// How the signal came about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cause {
    /// A fault of the crashing thread's own instruction (the kernel's).
    Fault { address: Option<u64> },
    /// `abort()` (SIGABRT the process sent itself).
    Abort,
    /// A fault signal the process sent itself: most likely another handler
    /// (Python's faulthandler) passing a fault on; it says what it was.
    Unknown,
    /// Sent by another process.
    Sent { pid: i32 },
}

/// Where the crash happened, as far as modpython knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place<'a> {
    /// During the call of a metric: protected (worker thread) or inline.
    Call {
        module: &'a [u8],
        metric: &'a [u8],
        inline: bool,
    },
    /// During a call whose names are not known (an index past the table).
    UnnamedCall { index: u64, inline: bool },
    /// During a module's import or `metric_init`.
    Loading { inline: bool },
    /// During modules' `metric_cleanup`.
    CleaningUp,
    /// On gmond's thread, outside any call of ours.
    GmondThread,
    /// On our worker thread, between calls.
    WorkerIdle,
    /// On a thread that is none of ours.
    Elsewhere,
}

fn signal_name(signal: c_int) -> &'static str {
    FATAL
        .iter()
        .find(|(s, _)| *s == signal)
        .map_or("a fatal signal", |(_, name)| name)
}

/// Writes the one line that says what happened, where, and what to do.
/// `traceback`: whether the thread's Python traceback follows.
pub(crate) fn compose<const N: usize>(
    line: &mut Line<N>,
    signal: c_int,
    cause: Cause,
    place: Place<'_>,
    traceback: bool,
) {
    line.str(crate::text::LOG_PREFIX).str(" error: ");
    if let Place::Call { module, .. } = place {
        line.clean(module).str(": ");
    }
    line.str("fatal signal ").str(signal_name(signal));
    if cause != Cause::Unknown {
        line.str(" (");
    }
    match cause {
        Cause::Fault { address } => {
            line.str(match signal {
                libc::SIGSEGV => "invalid memory access",
                libc::SIGBUS => "bus error: memory that cannot be accessed",
                libc::SIGFPE => "arithmetic error",
                libc::SIGILL => "illegal instruction",
                _ => "a fault",
            });
            if let Some(address) = address {
                line.str(" at address ").hex(address);
            }
        }
        Cause::Abort => {
            line.str("abort() was called");
        }
        Cause::Unknown => {}
        Cause::Sent { pid } => {
            line.str("sent by process ").dec(pid.max(0) as u64);
        }
    }
    line.str(if cause == Cause::Unknown { " " } else { ") " });
    let thread_runs_modules = match place {
        Place::Call { metric, inline, .. } => {
            line.str(if inline {
                "in the inline call of metric '"
            } else {
                "in the call of metric '"
            })
            .clean(metric)
            .str(if inline {
                "' (on gmond's own thread)"
            } else {
                "' (on modpython's call thread)"
            });
            true
        }
        Place::UnnamedCall { index, inline } => {
            line.str(if inline {
                "in the inline call of metric number "
            } else {
                "in the call of metric number "
            })
            .dec(index);
            true
        }
        Place::Loading { inline } => {
            line.str(if inline {
                "during an inline module's import or metric_init (on gmond's own thread)"
            } else {
                "during a module's import or metric_init (on modpython's loading thread)"
            });
            true
        }
        Place::CleaningUp => {
            line.str("during a module's metric_cleanup (on modpython's cleanup thread)");
            true
        }
        Place::GmondThread => {
            line.str("on gmond's own thread, outside any Python module's call");
            false
        }
        Place::WorkerIdle => {
            line.str("on modpython's call thread, between calls");
            false
        }
        Place::Elsewhere => {
            line.str(
                "in a thread outside modpython's calls (a module's own thread, or one a C library started)",
            );
            true
        }
    };
    line.str("; gmond is going down");
    if traceback {
        line.str(" (the thread's Python traceback follows)");
    }
    line.str(". ");
    if thread_runs_modules {
        line.str(match place {
            Place::Call { .. } => "Fix the module",
            _ if traceback => "The traceback names the module: fix it",
            _ => "No traceback names the module: run each alone (modpython-check --module NAME) to find it; fix it",
        });
        line.str(", or run it in a process of its own, where a crash ends only that process: ")
            .str(ISOLATE)
            .str(" in its module block");
    } else {
        line.str("This is not in a module's code: please report it to modpython's developers, with the traceback and a core dump if there is one");
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// syslog's timestamp for `local` seconds since the epoch (already in
/// local time): `Mmm dd hh:mm:ss`, the day padded with a space.
pub(crate) fn syslog_time<const N: usize>(line: &mut Line<N>, local: i64) {
    let days = local.div_euclid(86_400);
    let secs = local.rem_euclid(86_400) as u32;
    let (month, day) = month_and_day(days);
    line.str(MONTHS[(month - 1) as usize % 12])
        .str(" ")
        .two(day, b' ')
        .str(" ")
        .two(secs / 3600, b'0')
        .str(":")
        .two(secs / 60 % 60, b'0')
        .str(":")
        .two(secs % 60, b'0');
}

/// The month (1–12) and day of the month of a count of days since
/// 1970-01-01, in the proleptic Gregorian calendar.
fn month_and_day(days: i64) -> (u32, u32) {
    // Counted from 0000-03-01, so that the leap day ends each 400-year
    // cycle's years (which then start in March).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let march_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * march_month + 2) / 5 + 1) as u32;
    let month = if march_month < 10 {
        march_month + 3
    } else {
        march_month - 9
    } as u32;
    (month, day)
}

// ---------------------------------------------------------------------------
// Installation
// ---------------------------------------------------------------------------

type DumpTraceback = unsafe extern "C" fn(c_int, *mut pyo3::ffi::PyThreadState);

/// A file descriptor made at install, with the identity it had then: a
/// module may close descriptors it does not own, and the number may since
/// name something else, which the handler must not write into.
struct OwnFd {
    fd: c_int,
    dev: u64,
    ino: u64,
}

impl OwnFd {
    fn new(fd: c_int) -> Option<OwnFd> {
        let (dev, ino) = identity(fd)?;
        Some(OwnFd { fd, dev, ino })
    }

    fn still_ours(&self) -> bool {
        identity(self.fd) == Some((self.dev, self.ino))
    }
}

fn identity(fd: c_int) -> Option<(u64, u64)> {
    // SAFETY: fstat fills the zeroed struct we own; async-signal-safe.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstat(fd, &mut st) == 0).then_some((st.st_dev, st.st_ino))
    }
}

struct Syslog {
    socket: OwnFd,
    address: libc::sockaddr_un,
    address_len: libc::socklen_t,
    /// What gmond gave `openlog`: its argv[0].
    ident: Box<[u8]>,
    /// The local time's offset from UTC at install, in seconds.
    utc_offset: i64,
}

struct Installed {
    /// The thread that installed: gmond's, where inline calls run.
    gmond_thread: c_int,
    /// What gmond's thread is calling inline (the watchdog's tracker).
    inline_probe: InlineProbe,
    /// CPython's `_Py_DumpTraceback`, where it is exported (3.11, 3.12).
    dump: Option<DumpTraceback>,
    /// Read end, write end.
    pipe: Option<(OwnFd, OwnFd)>,
    /// libganglia's `daemon_proc`: gmond logs through syslog once it is set.
    daemon_proc: Option<&'static AtomicI32>,
    syslog: Option<Syslog>,
    /// The action each of [`FATAL`] had before ours.
    previous: [libc::sigaction; FATAL.len()],
}

// SAFETY: everything in it is written once, before it is published, and
// only read afterwards; `sigaction` and `sockaddr_un` are plain data.
unsafe impl Sync for Installed {}
// SAFETY: as above.
unsafe impl Send for Installed {}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// How the traceback is had: CPython's `_Py_DumpTraceback` called by our
/// handler; or, where it is not exported, Python's faulthandler enabled
/// into our pipe, which runs before our handler and passes the signal on
/// to it; or not at all.
const TRACEBACK_NONE: u8 = 0;
const TRACEBACK_DIRECT: u8 = 1;
const TRACEBACK_FAULTHANDLER: u8 = 2;
static TRACEBACK: AtomicU8 = AtomicU8::new(TRACEBACK_NONE);
/// The thread reporting a crash (0: none).
static REPORTER: AtomicI32 = AtomicI32::new(0);

/// Installs the handlers, once per process. Call on gmond's thread (it
/// tells inline calls from other threads' code by it), after Python has
/// started.
/// What gmond's thread is running inline, as the watchdog tracks it.
pub enum InlineCall {
    None,
    /// An inline module's import or `metric_init`.
    Loading,
    /// The call of this metric (by index).
    Metric(usize),
}

/// Tells the handler what gmond's thread is running inline; it may read
/// only atomics (it runs inside the signal handler).
pub type InlineProbe = fn() -> InlineCall;

pub fn install(inline_probe: InlineProbe) {
    if INSTALLED.get().is_some() {
        return;
    }
    // gmond's thread gets an alternate stack, for the handler to run on
    // after a stack overflow of an inline call; it lives as long as gmond.
    std::mem::forget(AltStack::for_this_thread());
    let daemon_proc = lookup(c"daemon_proc").map(|p| {
        // SAFETY: libganglia's `int daemon_proc`, a global that lives as
        // long as the process; an i32-sized, i32-aligned int.
        unsafe { &*(p as *const AtomicI32) }
    });
    let daemonized = daemon_proc.is_some_and(|d| d.load(Ordering::Relaxed) != 0);
    let mut problems = Vec::new();
    let dump = lookup(c"_Py_DumpTraceback").map(|p| {
        // SAFETY: where CPython exports this name (3.11, 3.12), it is
        // `void _Py_DumpTraceback(int fd, PyThreadState *tstate)`.
        unsafe { std::mem::transmute::<*mut c_void, DumpTraceback>(p) }
    });
    let pipe = make_pipe();
    if pipe.is_none() {
        problems.push("cannot make a pipe: no Python traceback".to_owned());
    }
    let syslog = if daemonized {
        let s = open_syslog();
        if s.is_none() {
            problems.push("cannot open a socket for /dev/log: nothing reaches syslog".to_owned());
        }
        s
    } else {
        None
    };
    let installed = Installed {
        inline_probe,
        gmond_thread: this_thread(),
        dump,
        pipe,
        daemon_proc,
        syslog,
        previous: FATAL.map(|(signal, _)| current_action(signal)),
    };
    if INSTALLED.set(installed).is_err() {
        return;
    }
    let Some(installed) = INSTALLED.get() else {
        return;
    };
    for ((signal, name), previous) in FATAL.iter().zip(&installed.previous) {
        if previous.sa_sigaction == libc::SIG_IGN {
            // Whoever ignores it wants it so (a hardware fault kills anyway).
            continue;
        }
        // SAFETY: installs an async-signal-safe handler (see `on_fatal`)
        // with a mask and flags we set; the previous action was saved above.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_fatal
                as extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void)
                as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(*signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            log::warn!(
                "cannot install modpython's handler for {name} ({}): if a module's call crashes gmond with it, the log will not name the module",
                std::io::Error::last_os_error()
            );
        }
    }
    match (dump, &installed.pipe) {
        (Some(_), Some(_)) => TRACEBACK.store(TRACEBACK_DIRECT, Ordering::Release),
        // After our handlers: faulthandler keeps ours as the one to pass
        // the signal on to.
        (None, Some((_, write))) => match enable_faulthandler(write.fd) {
            Ok(()) => TRACEBACK.store(TRACEBACK_FAULTHANDLER, Ordering::Release),
            Err(e) => problems.push(format!(
                "this Python exports no _Py_DumpTraceback and its faulthandler cannot be enabled ({e}): no Python traceback"
            )),
        },
        (_, None) => {}
    }
    for problem in problems {
        log::warn!("a module's call that crashes gmond will be named in the log, but {problem}");
    }
}

/// Has Python's faulthandler write the crashing thread's traceback into
/// our pipe (`fd`) when a fatal signal arrives.
fn enable_faulthandler(fd: c_int) -> pyo3::PyResult<()> {
    use pyo3::prelude::*;
    Python::attach(|py| {
        let options = pyo3::types::PyDict::new(py);
        options.set_item("file", fd)?;
        options.set_item("all_threads", false)?;
        py.import("faulthandler")?
            .call_method("enable", (), Some(&options))?;
        Ok(())
    })
}

fn current_action(signal: c_int) -> libc::sigaction {
    // SAFETY: a null new action only reads the current one into the
    // zeroed struct we own.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut action);
        action
    }
}

/// A symbol of gmond's global scope, or of the libpython we link (gmond
/// may have loaded it without RTLD_GLOBAL).
fn lookup(name: &CStr) -> Option<*mut c_void> {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name.
    let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    if !found.is_null() {
        return Some(found);
    }
    // SAFETY: dladdr fills the zeroed Dl_info for an address of a function
    // we link; dlopen with RTLD_NOLOAD only returns a handle to a library
    // already loaded (the one holding that function), and dlsym looks the
    // name up in it. The handle is kept: it pins nothing that is not
    // already loaded for good.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        let in_libpython = pyo3::ffi::Py_IsInitialized as *const c_void;
        if libc::dladdr(in_libpython, &mut info) == 0 || info.dli_fname.is_null() {
            return None;
        }
        let handle = libc::dlopen(info.dli_fname, libc::RTLD_LAZY | libc::RTLD_NOLOAD);
        if handle.is_null() {
            return None;
        }
        let found = libc::dlsym(handle, name.as_ptr());
        (!found.is_null()).then_some(found)
    }
}

/// The pipe the traceback goes through: non-blocking, so a traceback
/// longer than it holds is cut rather than hanging the handler, and
/// close-on-exec, so no program a module runs inherits it.
fn make_pipe() -> Option<(OwnFd, OwnFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: pipe2 fills the array we own; F_SETPIPE_SZ only resizes the
    // new pipe's buffer (failure keeps the default 64 KiB).
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) != 0 {
            return None;
        }
        // Python cuts a traceback at 100 frames of up to ~600 bytes each.
        libc::fcntl(fds[1], libc::F_SETPIPE_SZ, 256 * 1024);
    }
    Some((OwnFd::new(fds[0])?, OwnFd::new(fds[1])?))
}

fn open_syslog() -> Option<Syslog> {
    // SAFETY: socket() with constant arguments; the zeroed sockaddr_un is
    // ours, filled with a path shorter than sun_path; localtime_r fills
    // the tm we own (here, outside any handler, where its lock is fine).
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let mut address: libc::sockaddr_un = std::mem::zeroed();
        address.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (to, from) in address.sun_path.iter_mut().zip(b"/dev/log") {
            *to = *from as libc::c_char;
        }
        let address_len = (std::mem::offset_of!(libc::sockaddr_un, sun_path) + b"/dev/log".len())
            as libc::socklen_t;
        let mut tm: libc::tm = std::mem::zeroed();
        let now = libc::time(std::ptr::null_mut());
        let utc_offset = if libc::localtime_r(&now, &mut tm).is_null() {
            0
        } else {
            tm.tm_gmtoff
        };
        Some(Syslog {
            socket: OwnFd::new(fd)?,
            address,
            address_len,
            ident: gmond_ident(),
            utc_offset,
        })
    }
}

unsafe extern "C" {
    /// glibc's copy of argv[0], which gmond hands `openlog`.
    static program_invocation_name: *const libc::c_char;
}

fn gmond_ident() -> Box<[u8]> {
    // SAFETY: glibc sets program_invocation_name to argv[0] (a
    // NUL-terminated string that lives as long as the process) before
    // main, and nobody changes it afterwards.
    let name = unsafe {
        let p = program_invocation_name;
        if p.is_null() {
            return Box::from(&b"gmond"[..]);
        }
        CStr::from_ptr(p)
    };
    let bytes = name.to_bytes();
    one_line(&String::from_utf8_lossy(&bytes[..bytes.len().min(256)]))
}

// ---------------------------------------------------------------------------
// The handler
// ---------------------------------------------------------------------------

extern "C" fn on_fatal(signal: c_int, info: *mut libc::siginfo_t, _context: *mut c_void) {
    let tid = this_thread();
    match REPORTER.compare_exchange(0, tid, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {
            if let Some(installed) = INSTALLED.get() {
                report(installed, signal, info, tid);
            }
            // Done: should the previous action let gmond live on (a
            // handler that recovers), the next crash is reported too.
            REPORTER.store(0, Ordering::Release);
        }
        // A fault while reporting: die at once.
        Err(reporter) if reporter == tid => {}
        // Another thread is reporting its crash, which ends gmond; this one
        // waits for that report (a few seconds at most) rather than end
        // gmond in the middle of it.
        Err(_) => {
            for _ in 0..500 {
                if REPORTER.load(Ordering::Acquire) == 0 {
                    break;
                }
                sleep(Duration::from_millis(10));
            }
        }
    }
    resume(signal, info);
}

/// Puts the signal's previous action back and lets the signal happen again.
fn resume(signal: c_int, info: *const libc::siginfo_t) {
    let previous = INSTALLED.get().and_then(|i| {
        FATAL
            .iter()
            .zip(&i.previous)
            .find(|((s, _), _)| *s == signal)
            .map(|(_, action)| action)
    });
    // SAFETY: sigaction, raise and the siginfo read are async-signal-safe;
    // the action re-installed is the one the kernel gave us at install (or
    // the default); `info` is the kernel's, valid during the handler.
    unsafe {
        match previous {
            Some(action) if action.sa_sigaction != libc::SIG_IGN => {
                libc::sigaction(signal, action, std::ptr::null_mut());
            }
            _ => {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = libc::SIG_DFL;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(signal, &action, std::ptr::null_mut());
            }
        }
        // A fault happens again when its instruction is retried on return,
        // with the kernel's own account of it (a core dump shows the real
        // fault); a sent signal must be sent again. Blocked in this
        // handler, it is delivered as the handler returns.
        if info.is_null() || (*info).si_code <= 0 {
            libc::raise(signal);
        }
    }
}

fn sleep(time: Duration) {
    let ts = libc::timespec {
        tv_sec: time.as_secs() as libc::time_t,
        tv_nsec: time.subsec_nanos() as libc::c_long,
    };
    // SAFETY: nanosleep is async-signal-safe; both pointers are ours or null.
    unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
}

/// The crashing thread's place, from the markers and the inline tracker.
fn place_of(installed: &Installed, tid: c_int) -> Place<'static> {
    let named = |index: u64, inline: bool| -> Place<'static> {
        names()
            .and_then(|n| {
                let (module, metric) = n.metrics.get(index as usize)?;
                Some(Place::Call {
                    module: n.modules.get(*module as usize)?,
                    metric: metric.as_bytes(),
                    inline,
                })
            })
            .unwrap_or(Place::UnnamedCall { index, inline })
    };
    if tid == installed.gmond_thread {
        return match (installed.inline_probe)() {
            InlineCall::Loading => Place::Loading { inline: true },
            InlineCall::Metric(index) => named(index as u64, true),
            InlineCall::None => Place::GmondThread,
        };
    }
    match marked_call(tid) {
        Some(NO_CALL) => Place::WorkerIdle,
        Some(LOADING) => Place::Loading { inline: false },
        Some(CLEANING_UP) => Place::CleaningUp,
        Some(call) => named(u64::from(call - 1), false),
        None => Place::Elsewhere,
    }
}

fn cause_of(info: *const libc::siginfo_t) -> Cause {
    if info.is_null() {
        return Cause::Unknown;
    }
    // SAFETY: the kernel's siginfo, valid during the handler; si_addr is
    // meaningful for faults (si_code > 0), si_pid for sent signals.
    unsafe {
        let info = &*info;
        if info.si_code > 0 {
            let address = matches!(info.si_signo, libc::SIGSEGV | libc::SIGBUS)
                .then(|| info.si_addr() as u64);
            Cause::Fault { address }
        } else if info.si_pid() == libc::getpid() {
            if info.si_signo == libc::SIGABRT {
                Cause::Abort
            } else {
                Cause::Unknown
            }
        } else {
            Cause::Sent { pid: info.si_pid() }
        }
    }
}

/// Where the lines go: stderr, or syslog datagrams.
struct Sink<'a> {
    syslog: Option<&'a Syslog>,
    /// `<PRI>Mmm dd hh:mm:ss IDENT[PID]: ` when sending to syslog.
    head: Line<320>,
}

impl<'a> Sink<'a> {
    fn new(installed: &'a Installed) -> Sink<'a> {
        let daemonized = installed
            .daemon_proc
            .is_some_and(|d| d.load(Ordering::Relaxed) != 0);
        let syslog = installed
            .syslog
            .as_ref()
            .filter(|s| daemonized && s.socket.still_ours());
        let mut head = Line::new();
        if let Some(s) = syslog {
            let mut now = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime fills the timespec we own;
            // async-signal-safe, as is getpid.
            let pid = unsafe {
                libc::clock_gettime(libc::CLOCK_REALTIME, &mut now);
                libc::getpid()
            };
            head.str("<").dec(SYSLOG_PRI).str(">");
            syslog_time(&mut head, now.tv_sec + s.utc_offset);
            head.str(" ")
                .push(&s.ident)
                .str("[")
                .dec(pid.max(0) as u64)
                .str("]: ");
        }
        Sink { syslog, head }
    }

    fn emit(&self, text: &[u8]) {
        let mut out = Line::<4096>::new();
        match self.syslog {
            Some(s) => {
                out.push(self.head.as_bytes()).push(text);
                let bytes = out.finish();
                // SAFETY: sendto with a buffer and an address we own;
                // MSG_DONTWAIT: a full syslog socket loses the line rather
                // than hold up gmond's death.
                unsafe {
                    libc::sendto(
                        s.socket.fd,
                        bytes.as_ptr().cast(),
                        bytes.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                        (&s.address as *const libc::sockaddr_un).cast(),
                        s.address_len,
                    );
                }
            }
            None => {
                out.push(text);
                let bytes = out.finish();
                write_all(libc::STDERR_FILENO, bytes);
                write_all(libc::STDERR_FILENO, b"\n");
            }
        }
    }
}

fn write_all(fd: c_int, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: write(2) of a buffer we own; async-signal-safe.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n > 0 {
            bytes = &bytes[(n as usize).min(bytes.len())..];
        } else if n < 0 && errno() == libc::EINTR {
            continue;
        } else {
            return;
        }
    }
}

fn errno() -> c_int {
    // SAFETY: glibc's per-thread errno location is always valid.
    unsafe { *libc::__errno_location() }
}

fn report(installed: &Installed, signal: c_int, info: *const libc::siginfo_t, tid: c_int) {
    let pipe = installed
        .pipe
        .as_ref()
        .filter(|(read, write)| read.still_ours() && write.still_ours());
    let mode = TRACEBACK.load(Ordering::Acquire);
    // SAFETY: a read of the calling thread's Python thread state, from the
    // interpreter's thread-specific key (what faulthandler does in its own
    // signal handler); null when the thread has none.
    let tstate = unsafe { pyo3::ffi::PyGILState_GetThisThreadState() };
    let direct = match (installed.dump, pipe) {
        (Some(dump), Some((read, write))) if mode == TRACEBACK_DIRECT && !tstate.is_null() => {
            Some((dump, read.fd, write.fd))
        }
        _ => None,
    };
    // What faulthandler wrote before it passed the signal on, if it did.
    let mut written = [0u8; 4096];
    let mut written_len = 0;
    if let (TRACEBACK_FAULTHANDLER, Some((read, _))) = (mode, pipe) {
        drain(read.fd, |chunk| {
            let n = chunk.len().min(written.len() - written_len);
            written[written_len..written_len + n].copy_from_slice(&chunk[..n]);
            written_len += n;
        });
    }
    let mut cause = cause_of(info);
    if written[..written_len].starts_with(b"Fatal Python error: ") {
        // Its first line says what the signal was; ours sees its re-raise.
        cause = Cause::Unknown;
    }
    let sink = Sink::new(installed);
    let mut line = Line::<2048>::new();
    compose(
        &mut line,
        signal,
        cause,
        place_of(installed, tid),
        direct.is_some() || written_len > 0,
    );
    sink.emit(line.finish());
    let mut forward = Forward {
        sink: &sink,
        line: Line::new(),
    };
    forward.feed(&written[..written_len]);
    if let Some((dump, read, write)) = direct {
        drain(read, |_| {});
        // SAFETY: the function CPython provides for signal handlers, given
        // our pipe's write end and this thread's own thread state.
        unsafe { dump(write, tstate) };
        drain(read, |chunk| forward.feed(chunk));
    } else if let Some((read, _)) = pipe {
        // The rest of faulthandler's, past what fitted above.
        drain(read.fd, |chunk| forward.feed(chunk));
    }
    forward.finish();
}

/// Reads what is in the pipe, without waiting, chunk by chunk.
fn drain(fd: c_int, mut each: impl FnMut(&[u8])) {
    let mut chunk = [0u8; 4096];
    loop {
        // SAFETY: read(2) into a buffer we own; the pipe is non-blocking.
        let n = unsafe { libc::read(fd, chunk.as_mut_ptr().cast(), chunk.len()) };
        if n > 0 {
            each(&chunk[..(n as usize).min(chunk.len())]);
        } else if n < 0 && errno() == libc::EINTR {
            continue;
        } else {
            return;
        }
    }
}

/// Forwards each line of the traceback as a continuation line of the report.
struct Forward<'s, 'a> {
    sink: &'s Sink<'a>,
    /// The line read so far.
    line: Line<1024>,
}

impl Forward<'_, '_> {
    fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            if b == b'\n' {
                self.send();
            } else {
                self.line.push(&[b]);
            }
        }
    }

    fn send(&mut self) {
        if self.line.as_bytes().is_empty() {
            // faulthandler's blank line after its header says nothing.
            return;
        }
        let mut out = Line::<1100>::new();
        out.str(crate::text::LOG_PREFIX).str("   ");
        out.push(self.line.finish());
        self.sink.emit(out.finish());
        self.line = Line::new();
    }

    fn finish(mut self) {
        if !self.line.as_bytes().is_empty() {
            self.send();
        }
    }
}

// ---------------------------------------------------------------------------
// Alternate signal stacks
// ---------------------------------------------------------------------------

/// An alternate signal stack for the calling thread, taken down when
/// dropped (on the same thread).
pub struct AltStack {
    map: *mut c_void,
    len: usize,
}

/// The handler's buffers take ~12 KiB and `_Py_DumpTraceback` little more.
const ALT_STACK: usize = 64 * 1024;

impl AltStack {
    /// Gives the calling thread an alternate stack unless it has one;
    /// `None` when it had one or none could be made.
    pub fn for_this_thread() -> Option<AltStack> {
        // SAFETY: sigaltstack reads the thread's current alternate stack
        // into the zeroed struct we own; mmap makes a fresh private
        // mapping, whose lowest page becomes a guard; the new stack is
        // the rest of it, ours until `drop` takes it down.
        unsafe {
            let mut old: libc::stack_t = std::mem::zeroed();
            if libc::sigaltstack(std::ptr::null(), &mut old) != 0
                || old.ss_flags & libc::SS_DISABLE == 0
            {
                return None;
            }
            let page = libc::sysconf(libc::_SC_PAGESIZE).max(4096) as usize;
            let len = ALT_STACK + page;
            let map = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            );
            if map == libc::MAP_FAILED {
                return None;
            }
            // Overflowing the handler's stack faults instead of writing
            // over whatever lies below.
            libc::mprotect(map, page, libc::PROT_NONE);
            let stack = libc::stack_t {
                ss_sp: map.cast::<u8>().add(page).cast(),
                ss_flags: 0,
                ss_size: ALT_STACK,
            };
            if libc::sigaltstack(&stack, std::ptr::null_mut()) != 0 {
                libc::munmap(map, len);
                return None;
            }
            Some(AltStack { map, len })
        }
    }
}

impl Drop for AltStack {
    fn drop(&mut self) {
        // SAFETY: runs on the thread that installed the stack (AltStack is
        // neither Send nor Sync, holding a raw pointer), not on it; the
        // stack is disabled before its mapping is removed.
        unsafe {
            let disable = libc::stack_t {
                ss_sp: std::ptr::null_mut(),
                ss_flags: libc::SS_DISABLE,
                ss_size: 0,
            };
            libc::sigaltstack(&disable, std::ptr::null_mut());
            libc::munmap(self.map, self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn composed(signal: c_int, cause: Cause, place: Place<'_>, traceback: bool) -> String {
        let mut line = Line::<2048>::new();
        compose(&mut line, signal, cause, place, traceback);
        String::from_utf8(line.finish().to_vec()).unwrap()
    }

    #[test]
    fn a_protected_call_names_module_metric_signal_and_remedy() {
        let text = composed(
            libc::SIGSEGV,
            Cause::Fault { address: Some(0) },
            Place::Call {
                module: b"module 'crashy' (/m/crashy.py)",
                metric: b"crashy_value",
                inline: false,
            },
            true,
        );
        assert_eq!(
            text,
            "[modpython] error: module 'crashy' (/m/crashy.py): fatal signal SIGSEGV \
             (invalid memory access at address 0x0) in the call of metric 'crashy_value' \
             (on modpython's call thread); gmond is going down (the thread's Python \
             traceback follows). Fix the module, or run it in a process of its own, where \
             a crash ends only that process: param \"modpython.call_mode\" { value = \
             \"isolated\" } in its module block"
        );
    }

    #[test]
    fn an_inline_abort_and_other_places() {
        let text = composed(
            libc::SIGABRT,
            Cause::Abort,
            Place::Call {
                module: b"module 'a' (/a.py)",
                metric: b"m",
                inline: true,
            },
            false,
        );
        assert!(text.contains("module 'a' (/a.py): fatal signal SIGABRT (abort() was called) in the inline call of metric 'm' (on gmond's own thread); gmond is going down. Fix"), "{text}");
        let text = composed(
            libc::SIGBUS,
            Cause::Sent { pid: 42 },
            Place::Elsewhere,
            true,
        );
        assert!(
            text.contains(
                "fatal signal SIGBUS (sent by process 42) in a thread outside modpython's calls"
            ),
            "{text}"
        );
        assert!(text.contains("The traceback names the module"), "{text}");
        let text = composed(
            libc::SIGFPE,
            Cause::Fault { address: None },
            Place::GmondThread,
            false,
        );
        assert!(
            text.contains("(arithmetic error) on gmond's own thread, outside"),
            "{text}"
        );
        assert!(
            text.contains("report it to modpython's developers"),
            "{text}"
        );
        assert!(!text.contains("isolated"), "{text}");
        let text = composed(
            libc::SIGILL,
            Cause::Unknown,
            Place::UnnamedCall {
                index: 7,
                inline: false,
            },
            false,
        );
        assert!(
            text.contains("fatal signal SIGILL in the call of metric number 7; gmond"),
            "{text}"
        );
    }

    #[test]
    fn a_line_too_long_is_cut_with_a_mark() {
        let mut line = Line::<8>::new();
        line.str("abc").dec(1234).hex(255);
        assert_eq!(line.finish(), b"abc12...");
        let mut line = Line::<40>::new();
        line.dec(0).str(" ").dec(u64::MAX).str(" ").hex(0xdead_beef);
        assert_eq!(line.finish(), b"0 18446744073709551615 0xdeadbeef");
    }

    #[test]
    fn syslog_time_matches_libc() {
        // Every ~11 days for 130 years, at varied times of day, and the
        // days around leap days and year ends.
        let mut stamps: Vec<i64> = (0..4300).map(|i| i * 953_237 + 17).collect();
        stamps.extend([
            951_782_400,
            951_868_799,
            1_078_012_800,
            1_704_067_199,
            4_107_542_400,
        ]);
        for t in stamps {
            let mut line = Line::<32>::new();
            syslog_time(&mut line, t);
            // SAFETY: gmtime_r and strftime fill buffers we own.
            let expected = unsafe {
                let mut tm: libc::tm = std::mem::zeroed();
                libc::gmtime_r(&t, &mut tm);
                let mut buf = [0u8; 32];
                let n = libc::strftime(
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    c"%b %e %H:%M:%S".as_ptr(),
                    &tm,
                );
                buf[..n].to_vec()
            };
            assert_eq!(
                String::from_utf8_lossy(line.as_bytes()),
                String::from_utf8_lossy(&expected),
                "at {t}"
            );
        }
    }

    #[test]
    fn markers_are_found_by_thread_and_released() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let marker = CallMarker::claim();
            marker.calling(41);
            tx.send(this_thread()).unwrap();
            done_rx.recv().unwrap();
            marker.idle();
            let tid = this_thread();
            assert_eq!(marked_call(tid), Some(NO_CALL));
            drop(marker);
            tid
        });
        let tid = rx.recv().unwrap();
        assert_eq!(marked_call(tid), Some(42));
        done_tx.send(()).unwrap();
        let tid = t.join().unwrap();
        assert_eq!(marked_call(tid), None);
    }

    #[test]
    fn names_are_published_on_one_line() {
        publish_names(
            &["module 'x' (/p/x\n.py)".to_owned()],
            &[(0, Arc::from("m\tone")), (0, Arc::from("two"))],
        );
        let n = names().unwrap();
        assert_eq!(&*n.modules[0], b"module 'x' (/p/x .py)");
        assert_eq!(n.metrics[1].0, 0);
        let text = composed(
            libc::SIGSEGV,
            Cause::Unknown,
            Place::Call {
                module: &n.modules[0],
                metric: n.metrics[0].1.as_bytes(),
                inline: false,
            },
            false,
        );
        assert!(
            text.contains(
                "module 'x' (/p/x .py): fatal signal SIGSEGV in the call of metric 'm one' ("
            ),
            "{text}"
        );
    }

    #[test]
    fn an_alt_stack_is_made_once_per_thread() {
        std::thread::spawn(|| {
            // The test harness, a Rust program, gives its threads one
            // already (gmond does not): set aside for the test.
            // SAFETY: reads the thread's alternate stack, disables it, and
            // puts it back at the end; nothing runs on it meanwhile.
            let std_stack = unsafe {
                let mut old: libc::stack_t = std::mem::zeroed();
                libc::sigaltstack(std::ptr::null(), &mut old);
                let disable = libc::stack_t {
                    ss_sp: std::ptr::null_mut(),
                    ss_flags: libc::SS_DISABLE,
                    ss_size: 0,
                };
                libc::sigaltstack(&disable, std::ptr::null_mut());
                old
            };
            let first = AltStack::for_this_thread();
            assert!(first.is_some());
            assert!(AltStack::for_this_thread().is_none());
            drop(first);
            assert!(AltStack::for_this_thread().is_some());
            if std_stack.ss_flags & libc::SS_DISABLE == 0 {
                // SAFETY: re-installs the stack read above, still mapped.
                unsafe { libc::sigaltstack(&std_stack, std::ptr::null_mut()) };
            }
        })
        .join()
        .unwrap();
    }
}
