//! Every module's `metric_cleanup()`, once, within [`CLEANUP_DEADLINE`] in
//! all: a cleanup that never returns, or a stuck call holding the GIL, must
//! not keep gmond from exiting or from re-executing itself on SIGHUP, nor
//! hang `modpython-check`. The calling thread never touches Python here
//! (it might wait for the GIL for ever); a thread of its own does.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use crate::python::{self, loader};

/// How long all modules' `metric_cleanup()` calls may take together.
pub const CLEANUP_DEADLINE: Duration = Duration::from_secs(10);

/// Runs the cleanups on a thread of its own and waits for it up to the
/// deadline, logging which step did not return in time.
pub fn run(modules: Vec<(loader::ModuleRef, Py<PyModule>)>) {
    run_within(modules, CLEANUP_DEADLINE);
}

/// [`run`] with a given deadline (tests).
pub fn run_within(modules: Vec<(loader::ModuleRef, Py<PyModule>)>, deadline: Duration) {
    let count = modules.len();
    // The cleanup thread reports each step it starts, then None when done.
    let (progress_tx, progress_rx) = mpsc::channel::<Option<String>>();
    let spawned = std::thread::Builder::new()
        .name("modpython-cleanup".to_owned())
        .stack_size(python::THREAD_STACK)
        .spawn(move || {
            crate::signals::block_in_this_thread();
            let _alt_stack = crate::fatal_signal::AltStack::for_this_thread();
            let marker = crate::fatal_signal::CallMarker::claim();
            marker.cleaning_up();
            let tx = progress_tx.clone();
            Python::attach(|py| {
                loader::cleanup_modules(py, &modules, &|step| {
                    let _ = tx.send(Some(step.to_string()));
                })
            });
            let _ = progress_tx.send(None);
        });
    if let Err(e) = spawned {
        log::error!("cannot start the cleanup thread ({e}); metric_cleanup is not called");
        return;
    }
    let until = Instant::now() + deadline;
    let mut current = "metric_cleanup".to_owned();
    loop {
        match progress_rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(Some(step)) => current = step,
            Ok(None) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                log::error!(
                    "the cleanup thread ended during {current} (an internal error; please report it); the remaining cleanups are not called"
                );
                return;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                log::error!(
                    "{current} did not return within {}s; gmond goes on without waiting for it",
                    deadline.as_secs_f64()
                );
                return;
            }
        }
    }
    log::info!("metric_cleanup called for {count} Python module(s)");
}
