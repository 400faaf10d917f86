//! The built-in `ganglia` Python module that metric modules can import:
//! gmond's debug level, logging into gmond's log, and the pieces the host
//! installs at start so `print` and the `logging` package are heard.
//! Type stubs for editors: `python/ganglia.pyi`.

use log::Level;
use pyo3::prelude::*;

use super::stdio;

/// gmond's effective debug level (`-d` beats `globals.debug_level`), as the
/// original host offered it.
#[pyfunction]
fn get_debug_msg_level() -> i32 {
    crate::gmond_log::debug_level()
}

fn say(py: Python<'_>, level: Level, message: &Bound<'_, PyAny>) -> PyResult<()> {
    let text = message.str()?.to_string_lossy().into_owned();
    let module = stdio::module_for_caller(py);
    for line in text.lines() {
        stdio::emit(level, &module, line);
    }
    Ok(())
}

/// Logs an error: always in gmond's log.
#[pyfunction]
fn log_error(py: Python<'_>, message: &Bound<'_, PyAny>) -> PyResult<()> {
    say(py, Level::Error, message)
}

/// Logs a warning: always in gmond's log.
#[pyfunction]
fn log_warning(py: Python<'_>, message: &Bound<'_, PyAny>) -> PyResult<()> {
    say(py, Level::Warn, message)
}

/// Logs information: shown at every debug level (gmond's log at info).
#[pyfunction]
fn log_info(py: Python<'_>, message: &Bound<'_, PyAny>) -> PyResult<()> {
    say(py, Level::Info, message)
}

/// Logs a debug message: shown when gmond's debug level is above 1.
#[pyfunction]
fn log_debug(py: Python<'_>, message: &Bound<'_, PyAny>) -> PyResult<()> {
    say(py, Level::Debug, message)
}

/// The `logging` level number → `log` level.
fn level_of(levelno: i64) -> Level {
    match levelno {
        n if n >= 40 => Level::Error,
        n if n >= 30 => Level::Warn,
        n if n >= 20 => Level::Info,
        _ => Level::Debug,
    }
}

/// Called by `LogHandler.emit` with an already formatted record.
#[pyfunction]
fn _emit_record(levelno: i64, text: &str, logger: &str, file_module: &str) {
    let module = stdio::current_module().unwrap_or_else(|| file_module.to_owned());
    let prefix = if logger == "root" || logger == module {
        String::new()
    } else {
        format!("{logger}: ")
    };
    for line in text.lines() {
        stdio::emit(level_of(levelno), &module, &format!("{prefix}{line}"));
    }
}

/// The Python half: the `logging.Handler` subclass, made and installed when `logging` is first imported.
const PYTHON_PART: &std::ffi::CStr = cr#"
import sys as _sys

# `logging` (with re, traceback, threading... ~30 modules, ~2.5 MB and
# ~15 ms) is imported only when something asks for it: a module's own
# `import logging`, or `ganglia.LogHandler`. Our handler goes on the root
# logger as soon as the logging package has executed.
_verbose = False
_handler_class = None
# Set once our handler is on the root logger; until then the hook below
# keeps watching for `import logging` (a first import that failed, e.g.
# interrupted at a deadline, is retried by the next one).
_handler_installed = False


def _make_handler_class(_logging):
    global _handler_class
    if _handler_class is not None:
        return _handler_class

    class LogHandler(_logging.Handler):
        """Sends logging records to gmond's log, tagged with the module's name.

        The host installs one on the root logger at start. CRITICAL and ERROR
        become errors, WARNING warnings, INFO info (all shown at every debug
        level); DEBUG is shown when gmond runs with a debug level above 1.
        """

        def emit(self, record):
            try:
                _emit_record(record.levelno, self.format(record), record.name,
                             getattr(record, "module", "") or "python")
            except Exception:
                self.handleError(record)

    LogHandler.__module__ = "ganglia"
    LogHandler.__qualname__ = "LogHandler"
    _handler_class = LogHandler
    return LogHandler


def __getattr__(name):
    if name == "LogHandler":
        import logging
        return _make_handler_class(logging)
    raise AttributeError("module 'ganglia' has no attribute %r" % name)


def _setup(_logging):
    global _handler_installed
    LogHandler = _make_handler_class(_logging)
    root = _logging.getLogger()
    if not any(isinstance(h, LogHandler) for h in root.handlers):
        root.addHandler(LogHandler())
    _handler_installed = True
    # INFO is shown at every debug level, DEBUG above debug level 1.
    root.setLevel(_logging.DEBUG if _verbose else _logging.INFO)
    original = _logging.basicConfig
    if getattr(original, "_modpython", False):
        return

    def basicConfig(**kwargs):
        # The root logger has our handler, so the real basicConfig would do
        # nothing. Output to a file or stream of the module's choosing is set
        # up as asked (next to ours); level and format apply to ours.
        ours = [h for h in root.handlers if isinstance(h, LogHandler)]
        if kwargs.get("force") or any(k in kwargs for k in ("filename", "stream", "handlers")):
            for h in ours:
                root.removeHandler(h)
            try:
                original(**kwargs)
            finally:
                for h in ours:
                    if h not in root.handlers:
                        root.addHandler(h)
            return
        if "level" in kwargs:
            root.setLevel(kwargs["level"])
        if "format" in kwargs or "datefmt" in kwargs:
            style = kwargs.get("style", "%")
            formatter = _logging.Formatter(kwargs.get("format"), kwargs.get("datefmt"), style)
            for h in ours:
                h.setFormatter(formatter)

    basicConfig.__doc__ = original.__doc__
    basicConfig._modpython = True
    _logging.basicConfig = basicConfig


class _LoadingHook:
    """A sys.meta_path entry that finds nothing itself: when `logging` is
    imported for the first time, it lets the other finders find it and has
    _setup run right after the package executed. It stays in sys.meta_path
    (removing it while another thread walks the list could make that
    import skip a finder) and does nothing once _setup has run."""

    def find_spec(self, name, path=None, target=None):
        if name != "logging" or _handler_installed:
            return None
        for finder in list(_sys.meta_path):
            if finder is self:
                continue
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _AfterLoading(spec.loader)
        return spec


class _AfterLoading:
    """Delegates to the real loader; runs _setup once logging has executed."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _setup(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


def _install_logging(verbose):
    global _verbose
    _verbose = verbose
    if "logging" in _sys.modules:
        _setup(_sys.modules["logging"])
    elif not any(isinstance(f, _LoadingHook) for f in _sys.meta_path):
        _sys.meta_path.insert(0, _LoadingHook())
"#;

#[pymodule]
#[pyo3(name = "ganglia")]
pub fn ganglia_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(get_debug_msg_level, m)?)?;
    m.add_function(wrap_pyfunction!(log_error, m)?)?;
    m.add_function(wrap_pyfunction!(log_warning, m)?)?;
    m.add_function(wrap_pyfunction!(log_info, m)?)?;
    m.add_function(wrap_pyfunction!(log_debug, m)?)?;
    m.add_function(wrap_pyfunction!(_emit_record, m)?)?;
    m.add_class::<stdio::LogStream>()?;
    m.add(
        "__doc__",
        "Services gmond's Python host (modpython) offers to metric modules.",
    )?;
    let py = m.py();
    py.run(PYTHON_PART, Some(&m.dict()), None)?;
    Ok(())
}

/// What the host does at start: `sys.stdout`/`sys.stderr` and the root
/// logger go to gmond's log. The root logger's level is INFO, or DEBUG when
/// `verbose` (gmond's debug level above 1) so `logger.debug()` gets through.
pub fn install(py: Python<'_>, verbose: bool) -> PyResult<()> {
    stdio::install(py, verbose)?;
    py.import("ganglia")?
        .getattr("_install_logging")?
        .call1((verbose,))?;
    Ok(())
}
