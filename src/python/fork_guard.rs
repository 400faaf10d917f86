//! A handler that calls `os.fork()` makes a second copy of gmond: in the
//! child, the call returns into our call path and then into gmond's main
//! loop (inline mode), or the child sits in a worker holding gmond's
//! sockets (protected mode), and either outlives gmond's SIGTERM.
//!
//! Python tells us about its forks (`os.register_at_fork`); a child that
//! comes back out of a module's call is ended there. Children that run
//! module code and exit on their own (`multiprocessing`, `subprocess`) never
//! come back out, so they are unaffected.

use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyDict};

static FORKED: AtomicBool = AtomicBool::new(false);

/// Registers the after-fork hook. Call once, after the interpreter started.
pub fn install(py: Python<'_>) -> PyResult<()> {
    let hook = PyCFunction::new_closure(py, None, None, |_args, _kwargs| -> PyResult<()> {
        FORKED.store(true, Ordering::SeqCst);
        Ok(())
    })?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("after_in_child", hook)?;
    py.import("os")?
        .call_method("register_at_fork", (), Some(&kwargs))?;
    Ok(())
}

/// Ends this process if it is a child forked inside a module's call.
pub fn exit_if_forked() {
    if FORKED.load(Ordering::Relaxed) {
        // SAFETY: _exit ends the process at once, running nothing of the
        // parent's (no atexit, no destructors); that is the point here.
        unsafe { libc::_exit(0) };
    }
}
