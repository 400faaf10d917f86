//! The embedded interpreter: started inside gmond's `init` (never at load
//! time: the pre-fork parent would own it), configured so it neither
//! installs signal handlers nor guesses its home from gmond's PATH, and left
//! with the GIL released so module threads run while gmond has control.

pub mod errors;
pub mod extract;
pub mod fork_guard;
pub mod ganglia;
pub mod interrupt;
pub mod loader;
pub mod stdio;

use std::ffi::{CStr, CString};
use std::mem::MaybeUninit;

use pyo3::ffi;
use pyo3::prelude::*;

/// Where the libpython we link keeps its standard library (recorded by build.rs).
pub const PYTHON_HOME: &str = env!("MODPYTHON_PYTHON_HOME");
/// The interpreter we were built against; becomes `sys.executable`.
pub const PYTHON_EXECUTABLE: &str = env!("MODPYTHON_PYTHON_EXECUTABLE");
/// `major.minor` of the CPython we were built against.
pub const PYTHON_VERSION: &str = env!("MODPYTHON_PYTHON_VERSION");

/// Stack for threads that run module code: Python's recursion limit is
/// sized for a main thread's 8 MiB, not Rust's 2 MiB default, and a module
/// raising the limit must hit RecursionError, not a stack overflow.
pub const THREAD_STACK: usize = 16 * 1024 * 1024;

/// Starts the interpreter once per process and releases the GIL.
/// `debug_level`: gmond's (`ganglia.get_debug_msg_level()`; module debug
/// lines above 1). Later calls (a second `init` in tests, the tools) are
/// no-ops.
pub fn start(debug_level: i32) -> Result<(), String> {
    static STARTED: once_cell::sync::OnceCell<Result<(), String>> =
        once_cell::sync::OnceCell::new();
    STARTED
        .get_or_init(|| start_interpreter(debug_level))
        .clone()
}

fn start_interpreter(debug_level: i32) -> Result<(), String> {
    // SAFETY: a plain query, valid before and after initialisation.
    if unsafe { ffi::Py_IsInitialized() } != 0 {
        // Someone else (a test harness embedding Python) started it already.
        return Ok(());
    }
    pyo3::append_to_inittab!(ganglia_module_def);
    initialize_from_config()?;
    Python::attach(|py| -> PyResult<()> {
        let sys = py.import("sys")?;
        // No '' and no cwd on sys.path: a file in gmond's working directory
        // must never be importable as if it were a metric module.
        let path = sys.getattr("path")?;
        let cwd = std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        for entry in ["", ".", cwd.as_str()] {
            while path.call_method1("count", (entry,))?.extract::<usize>()? > 0 {
                path.call_method1("remove", (entry,))?;
            }
        }
        Ok(())
    })
    .map_err(|e| format!("the Python interpreter started but could not be configured: {e}"))?;
    // print, sys.stderr and the logging package go to gmond's log.
    if let Err(e) = Python::attach(|py| ganglia::install(py, debug_level)) {
        log::warn!("module output (print, logging) will not reach gmond's log: {e}");
    }
    if let Err(e) = Python::attach(fork_guard::install) {
        log::warn!("cannot watch for os.fork() in module code: {e}");
    }
    // SAFETY: we hold the GIL (Py_InitializeFromConfig returned it to this
    // thread and Python::attach restored that state); gmond's thread keeps the
    // returned state alive and PyGILState_Ensure finds it again on each call.
    unsafe { ffi::PyEval_SaveThread() };
    log::info!(
        "Python {} started (home {PYTHON_HOME}, executable {PYTHON_EXECUTABLE})",
        python_version()
    );
    Ok(())
}

use ganglia::ganglia_module as ganglia_module_def;

/// The running interpreter's version string, e.g. "3.11.2".
pub fn python_version() -> String {
    Python::version_str()
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned()
}

fn initialize_from_config() -> Result<(), String> {
    let home = CString::new(PYTHON_HOME).map_err(|e| e.to_string())?;
    let executable = CString::new(PYTHON_EXECUTABLE).map_err(|e| e.to_string())?;
    let mut config = MaybeUninit::<ffi::PyConfig>::uninit();
    // SAFETY: PyConfig_InitPythonConfig fully initialises the struct it is
    // given; every later call gets that initialised struct, and
    // PyConfig_Clear releases what the setters allocated.
    unsafe {
        ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
        let config = config.assume_init_mut();
        // gmond owns SIGINT/SIGTERM/SIGHUP/SIGPIPE; Python must not take them.
        config.install_signal_handlers = 0;
        config.parse_argv = 0;
        let mut status = ffi::PyConfig_SetBytesString(config, &mut config.home, home.as_ptr());
        if ffi::PyStatus_Exception(status) == 0 && !PYTHON_EXECUTABLE.is_empty() {
            status =
                ffi::PyConfig_SetBytesString(config, &mut config.program_name, executable.as_ptr());
        }
        if ffi::PyStatus_Exception(status) == 0 {
            status = ffi::Py_InitializeFromConfig(config);
        }
        ffi::PyConfig_Clear(config);
        if ffi::PyStatus_Exception(status) != 0 {
            let why = if status.err_msg.is_null() {
                "unknown error".to_owned()
            } else {
                CStr::from_ptr(status.err_msg)
                    .to_string_lossy()
                    .into_owned()
            };
            return Err(format!(
                "cannot start Python {PYTHON_VERSION} with its standard library in {PYTHON_HOME}: {why}"
            ));
        }
    }
    Ok(())
}
