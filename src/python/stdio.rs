//! What metric modules say: `print`, writes to `sys.stderr`, the `logging`
//! package and `ganglia.log_*` all end up in gmond's log, one line per log
//! record, tagged with the module's name.
//!
//! Which lines are shown is decided here, once, for gmond and
//! `modpython-check` alike ([`shown`]): errors, warnings and info always
//! (info is what a module prints, and an operator of a daemonized gmond,
//! which always runs at debug level 0, would otherwise never see it), debug
//! only at gmond's debug level above 1. Lines that are not shown are
//! counted ([`take_unshown`]) and never use up a module's output budget.
//!
//! The module a line belongs to is the *current module*: the loader sets it
//! around a module's import, `metric_init` and `metric_cleanup`, and the
//! host around each metric callback ([`ModuleScope`]). Code running outside
//! those calls (a module's own thread) is attributed through the calling
//! Python frame's `__name__` instead.

use std::cell::RefCell;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::ThreadId;

use log::Level;
use pyo3::prelude::*;

use crate::settings::ModuleStdout;

/// The `log` target of everything modules say; the host's own messages use
/// their Rust module path. `modpython-check` tells the two apart by it.
pub const MODULE_LOG_TARGET: &str = "modpython::module";

/// A line longer than this is logged in pieces, so a module writing without
/// newlines cannot grow a buffer without bound.
const MAX_LINE_BYTES: usize = 4000;

thread_local! {
    /// A stack of module names; `depth` entries are live, the rest are kept
    /// so entering a scope does not allocate once the thread has warmed up.
    static SCOPES: RefCell<ScopeStack> = const {
        RefCell::new(ScopeStack { names: Vec::new(), depth: 0 })
    };
}

struct ScopeStack {
    names: Vec<String>,
    depth: usize,
}

/// While alive, output on this thread is attributed to the module named at
/// [`ModuleScope::enter`]. Scopes nest; dropping one restores the previous.
#[must_use = "the scope ends when this guard is dropped"]
pub struct ModuleScope {
    /// Tied to the thread whose stack it changed.
    _not_send: PhantomData<*const ()>,
}

impl ModuleScope {
    /// Makes `module` (the module's name, e.g. `ModuleRef::name`) the current module.
    pub fn enter(module: &str) -> ModuleScope {
        SCOPES.with(|s| {
            let mut s = s.borrow_mut();
            let depth = s.depth;
            if let Some(slot) = s.names.get_mut(depth) {
                slot.clear();
                slot.push_str(module);
            } else {
                s.names.push(module.to_owned());
            }
            s.depth += 1;
        });
        ModuleScope {
            _not_send: PhantomData,
        }
    }
}

impl Drop for ModuleScope {
    fn drop(&mut self) {
        SCOPES.with(|s| {
            let mut s = s.borrow_mut();
            s.depth = s.depth.saturating_sub(1);
        });
    }
}

/// The current module of this thread, if a [`ModuleScope`] is active.
pub fn current_module() -> Option<String> {
    SCOPES.with(|s| {
        let s = s.borrow();
        s.depth.checked_sub(1).map(|top| s.names[top].clone())
    })
}

/// The module to attribute output to: the current scope, else the
/// `__name__` of the Python code that called us, else `python`.
pub fn module_for_caller(py: Python<'_>) -> String {
    current_module()
        .or_else(|| caller_module_name(py))
        .unwrap_or_else(|| "python".to_owned())
}

fn caller_module_name(py: Python<'_>) -> Option<String> {
    // A Rust function called from Python adds no frame, so frame 0 is the caller's.
    let frame = py
        .import("sys")
        .and_then(|sys| sys.call_method1("_getframe", (0,)))
        .ok()?;
    let globals = frame.getattr("f_globals").ok()?;
    globals.get_item("__name__").ok()?.extract::<String>().ok()
}

/// gmond's debug level is above 1: module debug lines are shown too.
static VERBOSE: AtomicBool = AtomicBool::new(false);
/// `module_stdout = discard`: what modules print is dropped.
static DISCARD_STDOUT: AtomicBool = AtomicBool::new(false);
/// Module lines not shown at this debug level, and stdout lines discarded,
/// since [`take_unshown`] last ran (for `modpython-check`'s report).
static HIDDEN: AtomicUsize = AtomicUsize::new(0);
static DISCARDED: AtomicUsize = AtomicUsize::new(0);

/// Whether a module's line at `level` reaches the log: debug lines only at
/// gmond's debug level above 1, as gmond's `debug_msg`; everything else
/// always.
pub fn shown(level: Level) -> bool {
    level <= Level::Info || VERBOSE.load(Ordering::Relaxed)
}

/// Applies the `module_stdout` host setting (before modules load).
pub fn set_stdout(mode: ModuleStdout) {
    DISCARD_STDOUT.store(mode == ModuleStdout::Discard, Ordering::Relaxed);
}

/// Module lines left out since the last call: (not shown at this debug
/// level, stdout lines discarded).
pub fn take_unshown() -> (usize, usize) {
    (
        HIDDEN.swap(0, Ordering::Relaxed),
        DISCARDED.swap(0, Ordering::Relaxed),
    )
}

/// Lines one module may log per [`BUDGET_WINDOW`]; more are counted and
/// summarised, so a module printing on every call cannot fill the log.
const BUDGET_LINES: u32 = 100;
const BUDGET_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// One module's output budget: when its window started, lines logged and
/// lines dropped in it.
struct Budget {
    since: std::time::Instant,
    logged: u32,
    dropped: u64,
}

static BUDGETS: Mutex<Option<HashMap<String, Budget>>> = Mutex::new(None);

/// Logs one line a module said, within the module's budget. A line that
/// is not [`shown`] is only counted: a module's debug chatter must not use
/// up the budget its warnings and errors need.
pub fn emit(level: Level, module: &str, text: &str) {
    if !shown(level) {
        HIDDEN.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let now = std::time::Instant::now();
    let mut summary = None;
    let allowed = {
        let mut budgets = BUDGETS.lock().unwrap_or_else(|p| p.into_inner());
        let budgets = budgets.get_or_insert_with(HashMap::new);
        let fresh = || Budget {
            since: now,
            logged: 0,
            dropped: 0,
        };
        let budget = budgets.entry(module.to_owned()).or_insert_with(fresh);
        if now.duration_since(budget.since) >= BUDGET_WINDOW {
            if budget.dropped > 0 {
                summary = Some(budget.dropped);
            }
            *budget = fresh();
        }
        budget.logged += 1;
        let allowed = budget.logged <= BUDGET_LINES;
        if !allowed {
            budget.dropped += 1;
        }
        allowed
    };
    if let Some(dropped) = summary {
        log::log!(
            target: MODULE_LOG_TARGET,
            Level::Warn,
            "[{module}] {dropped} more line(s) of this module's output were not logged in the last {}s (limit {BUDGET_LINES} per {}s)",
            BUDGET_WINDOW.as_secs(),
            BUDGET_WINDOW.as_secs()
        );
    }
    if allowed {
        log::log!(target: MODULE_LOG_TARGET, level, "[{module}] {text}");
    }
}

/// `sys.stdout` / `sys.stderr` for module code: complete lines go to the
/// log at this stream's level (stdout: info, stderr: warning).
#[pyclass(module = "ganglia", name = "LogStream")]
pub struct LogStream {
    level: Level,
    name: &'static str,
    /// Dropped under `module_stdout = discard` (stdout, not stderr).
    discardable: bool,
    fd: i32,
    /// Partial lines, per thread, so two threads printing do not mix.
    pending: Mutex<HashMap<ThreadId, String>>,
}

impl LogStream {
    pub fn new(name: &'static str, fd: i32, level: Level, discardable: bool) -> LogStream {
        LogStream {
            level,
            name,
            discardable,
            fd,
            pending: Mutex::new(HashMap::new()),
        }
    }

    fn emit_lines(&self, py: Python<'_>, lines: Vec<String>) {
        if lines.is_empty() {
            return;
        }
        let module = module_for_caller(py);
        for line in lines {
            emit(self.level, &module, &line);
        }
    }
}

#[pymethods]
impl LogStream {
    /// Buffers `text` and logs each complete line; returns its length, as
    /// `io.TextIOBase.write` does.
    fn write(&self, py: Python<'_>, text: &str) -> usize {
        if self.discardable && DISCARD_STDOUT.load(Ordering::Relaxed) {
            DISCARDED.fetch_add(text.matches('\n').count(), Ordering::Relaxed);
            return text.chars().count();
        }
        let mut lines = Vec::new();
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let buffer = pending.entry(std::thread::current().id()).or_default();
            for piece in text.split_inclusive('\n') {
                buffer.push_str(piece);
                if buffer.ends_with('\n') {
                    buffer.pop();
                    if buffer.ends_with('\r') {
                        buffer.pop();
                    }
                    lines.push(std::mem::take(buffer));
                } else if buffer.len() > MAX_LINE_BYTES {
                    lines.push(std::mem::take(buffer));
                }
            }
            if buffer.is_empty() && buffer.capacity() == 0 {
                pending.remove(&std::thread::current().id());
            }
        }
        self.emit_lines(py, lines);
        text.chars().count()
    }

    /// Logs this thread's partial line, if any.
    fn flush(&self, py: Python<'_>) {
        let line = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending
                .remove(&std::thread::current().id())
                .filter(|l| !l.is_empty())
        };
        self.emit_lines(py, line.into_iter().collect());
    }

    fn writable(&self) -> bool {
        true
    }

    fn readable(&self) -> bool {
        false
    }

    fn seekable(&self) -> bool {
        false
    }

    fn isatty(&self) -> bool {
        false
    }

    /// The process's own descriptor, for code that insists on one
    /// (`faulthandler`, `subprocess`); what is written there bypasses the log.
    fn fileno(&self) -> i32 {
        self.fd
    }

    #[getter]
    fn encoding(&self) -> &'static str {
        "utf-8"
    }

    #[getter]
    fn errors(&self) -> &'static str {
        "replace"
    }

    #[getter]
    fn closed(&self) -> bool {
        false
    }

    #[getter]
    fn name(&self) -> String {
        format!("<{} (gmond's log)>", self.name)
    }

    fn __repr__(&self) -> String {
        format!("<ganglia.LogStream {} -> gmond's log>", self.name)
    }
}

/// Replaces `sys.stdout` and `sys.stderr` with [`LogStream`]s. `verbose`:
/// gmond's debug level is above 1, so module debug lines are shown.
pub fn install(py: Python<'_>, verbose: bool) -> PyResult<()> {
    VERBOSE.store(verbose, Ordering::Relaxed);
    let sys = py.import("sys")?;
    sys.setattr(
        "stdout",
        Py::new(py, LogStream::new("stdout", 1, Level::Info, true))?,
    )?;
    sys.setattr(
        "stderr",
        Py::new(py, LogStream::new("stderr", 2, Level::Warn, false))?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_and_restore() {
        assert_eq!(current_module(), None);
        {
            let _a = ModuleScope::enter("alpha");
            assert_eq!(current_module().as_deref(), Some("alpha"));
            {
                let _b = ModuleScope::enter("beta");
                assert_eq!(current_module().as_deref(), Some("beta"));
            }
            assert_eq!(current_module().as_deref(), Some("alpha"));
            let _c = ModuleScope::enter("gamma");
            assert_eq!(current_module().as_deref(), Some("gamma"));
        }
        assert_eq!(current_module(), None);
    }
}
