//! The built-in `ganglia` Python module that metric modules can import:
//! gmond's debug level, logging into gmond's log, and the pieces the host
//! installs at start so `print` and the `logging` package are heard.
//! Type stubs for editors: `python/ganglia.pyi`.

use log::Level;
use pyo3::prelude::*;

use super::stdio;

/// gmond's effective debug level (`-d` beats `globals.debug_level`), as the
/// original host offered it: the one the host was started with (gmond's
/// is fixed at its start; `modpython-check --debug N` gives N).
#[pyfunction]
fn get_debug_msg_level() -> i32 {
    DEBUG_LEVEL.load(std::sync::atomic::Ordering::Relaxed)
}

static DEBUG_LEVEL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

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

/// The module whose call is running on this thread (see
/// [`stdio::ModuleScope`]), or None (a module's own thread).
#[pyfunction]
fn _current_module() -> Option<String> {
    stdio::current_module()
}

/// Called by `LogHandler.emit` with a record formatted for `module`.
/// `logger` (the record's logger name) goes before each line when it is
/// neither the root logger nor the module's own, so a library's line says
/// whose it is; empty for a module's own format, which says what it likes.
#[pyfunction]
fn _emit_record(levelno: i64, text: &str, logger: &str, module: &str) {
    let prefix = if logger.is_empty() || logger == "root" || logger == module {
        String::new()
    } else {
        format!("{logger}: ")
    };
    for line in text.lines() {
        stdio::emit(level_of(levelno), module, &format!("{prefix}{line}"));
    }
}

/// The Python half: the `logging.Handler` subclass and each module's own
/// share of the logging setup, made and installed when `logging` is first
/// imported.
///
/// There is one `logging` package, with one root logger, for all modules.
/// Rather than give each module a root of its own (which `logging.info()`,
/// bound to the package's single root, would never see), the host's one
/// handler on the root keeps per-module settings, and what a module does to
/// the root's configuration is recorded for that module only: the level
/// and format it asks for (`basicConfig`, `root.setLevel`, the host
/// handler's `setFormatter`/`setLevel`), handlers it adds to or removes from
/// the root (a module's own handler sees only that module's records). The
/// root's real level is the host's gate: INFO, or DEBUG above debug level 1.
const PYTHON_PART: &std::ffi::CStr = cr#"
import sys as _sys

# `logging` (with re, traceback, threading... ~30 modules, ~2.5 MB and
# ~15 ms) is imported only when something asks for it: a module's own
# `import logging`, or `ganglia.LogHandler`. Our handler goes on the root
# logger as soon as the logging package has executed.
_verbose = False
_logging = None
_handler_class = None
# The handler on the root logger (None until _setup has run); other
# LogHandler instances are modules' own, with their own settings.
_host_handler = None
# Set once our handler is on the root logger; until then the hook below
# keeps watching for `import logging` (a first import that failed, e.g.
# interrupted at a deadline, is retried by the next one).
_handler_installed = False
# module name -> _Own: what each module set up for itself.
_own_logging = {}


class _Own:
    """What one module changed of the logging setup all modules share."""

    __slots__ = ("level", "handler_level", "formatter", "handlers", "configured",
                 "silenced")

    def __init__(self):
        # Its root level (basicConfig(level=), root.setLevel): 0 lets through
        # whatever the host's gate does.
        self.level = 0
        # Its level and format on the host's handler.
        self.handler_level = 0
        self.formatter = None
        # Handlers it put on the root logger, each with a _ModuleOnly filter.
        self.handlers = []
        # basicConfig has run for it (a second call does nothing, unless force=True).
        self.configured = False
        # It removed the host's handler from the root: its lines stay out of gmond's log.
        self.silenced = False


def _own(module):
    own = _own_logging.get(module)
    if own is None:
        own = _own_logging[module] = _Own()
    return own


def _calling_module():
    """The module that is changing the logging setup: the one whose call is
    running, or (on a module's own thread) the code that called in, past
    the logging package's own frames."""
    module = _current_module()
    if module is not None:
        return module
    frame = _sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__") or ""
        if name != "ganglia" and name != "logging" and not name.startswith("logging."):
            return name
        frame = frame.f_back
    return "python"


def _record_module(record):
    """The module a record belongs to: the one whose call is running, or the
    file the logging call was made in."""
    module = _current_module()
    if module is not None:
        return module
    return getattr(record, "module", "") or "python"


def _passes(own, record):
    """Whether the module's root level lets the record through. As with the
    real root's level, it decides only for loggers without a level of
    their own: for the others, theirs let the record be made."""
    if record.levelno >= own.level:
        return True
    logger = _logging.Logger.manager.loggerDict.get(record.name)
    while isinstance(logger, _logging.Logger) and logger is not _logging.root:
        if logger.level:
            return True
        logger = logger.parent
    return False


class _ModuleOnly:
    """The filter on a module's own root handler: that module's records only,
    at that module's root level."""

    def __init__(self, module):
        self.module = module

    def filter(self, record):
        if _record_module(record) != self.module:
            return False
        own = _own_logging.get(self.module)
        return own is None or _passes(own, record)


def _make_handler_class(_logging):
    global _handler_class
    if _handler_class is not None:
        return _handler_class

    class LogHandler(_logging.Handler):
        """Sends logging records to gmond's log, tagged with the module's name.

        The host installs one on the root logger at start. CRITICAL and ERROR
        become errors, WARNING warnings, INFO info (all shown at every debug
        level); DEBUG is shown when gmond runs with a debug level above 1.
        On that one, setFormatter and setLevel apply to the calling module's
        records only.
        """

        def emit(self, record):
            try:
                module = _record_module(record)
                if self is not _host_handler:
                    logger = record.name if self.formatter is None else ""
                    _emit_record(record.levelno, self.format(record), logger, module)
                    return
                own = _own_logging.get(module)
                if own is None:
                    _emit_record(record.levelno, self.format(record), record.name, module)
                    return
                if own.silenced or record.levelno < own.handler_level or not _passes(own, record):
                    return
                if own.formatter is None:
                    _emit_record(record.levelno, self.format(record), record.name, module)
                else:
                    _emit_record(record.levelno, own.formatter.format(record), "", module)
            except Exception:
                self.handleError(record)

        def setFormatter(self, fmt):
            if self is _host_handler:
                _own(_calling_module()).formatter = fmt
            else:
                super().setFormatter(fmt)

        def setLevel(self, level):
            if self is _host_handler:
                _own(_calling_module()).handler_level = _logging._checkLevel(level)
            else:
                super().setLevel(level)

    LogHandler.__module__ = "ganglia"
    LogHandler.__qualname__ = "LogHandler"
    _handler_class = LogHandler
    return LogHandler


def __getattr__(name):
    if name == "LogHandler":
        import logging
        return _make_handler_class(logging)
    raise AttributeError("module 'ganglia' has no attribute %r" % name)


def _add_own_handler(root_class, module, own, handler):
    if handler in own.handlers:
        return
    handler.addFilter(_ModuleOnly(module))
    own.handlers.append(handler)
    root_class.addHandler(_logging.root, handler)


def _drop_own_handler(root_class, own, handler, close):
    own.handlers.remove(handler)
    for f in list(handler.filters):
        if isinstance(f, _ModuleOnly):
            handler.removeFilter(f)
    root_class.removeHandler(_logging.root, handler)
    if close:
        handler.close()


def _share_root(root_class):
    """Makes the root logger's level and handlers per module (see _Own)."""

    class Root(root_class):
        def setLevel(self, level):
            _own(_calling_module()).level = _logging._checkLevel(level)

        def addHandler(self, hdlr):
            module = _calling_module()
            own = _own(module)
            if hdlr is _host_handler:
                own.silenced = False
            else:
                _add_own_handler(root_class, module, own, hdlr)

        def removeHandler(self, hdlr):
            own = _own(_calling_module())
            if hdlr is _host_handler:
                own.silenced = True
            elif hdlr in own.handlers:
                _drop_own_handler(root_class, own, hdlr, False)
            # Another module's handler is not this one's to remove.

    Root.__name__ = Root.__qualname__ = root_class.__name__
    Root.__module__ = root_class.__module__
    _logging.root.__class__ = Root


def _basic_config(**kwargs):
    """logging.basicConfig for one module: the level, format and extra
    handlers asked for apply to the calling module's records only."""
    module = _calling_module()
    own = _own(module)
    force = kwargs.pop("force", False)
    if own.configured and not force:
        return
    root_class = type(_logging.root).__mro__[1]
    handlers = kwargs.pop("handlers", None)
    stream = kwargs.pop("stream", None)
    filename = kwargs.pop("filename", None)
    filemode = kwargs.pop("filemode", "a")
    encoding = kwargs.pop("encoding", None)
    errors = kwargs.pop("errors", "backslashreplace")
    fmt = kwargs.pop("format", None)
    datefmt = kwargs.pop("datefmt", None)
    style = kwargs.pop("style", "%")
    level = kwargs.pop("level", None)
    if kwargs:
        raise ValueError("basicConfig: unknown argument(s): %s" % ", ".join(sorted(kwargs)))
    if handlers is not None and (stream is not None or filename is not None):
        raise ValueError("basicConfig: handlers= cannot go with stream= or filename=")
    if stream is not None and filename is not None:
        raise ValueError("basicConfig: give stream= or filename=, not both")
    # Checked (style, format) before anything changes.
    formatter = _logging.Formatter(fmt, datefmt, style)
    if force:
        for h in list(own.handlers):
            _drop_own_handler(root_class, own, h, True)
        own.level = own.handler_level = 0
        own.formatter = None
        own.silenced = False
    made = list(handlers) if handlers is not None else []
    if filename is not None:
        if "b" in filemode:
            errors = None
        made.append(_logging.FileHandler(filename, filemode, encoding=encoding, errors=errors))
    elif stream is not None and not isinstance(stream, LogStream):
        made.append(_logging.StreamHandler(stream))
    # No stream (or sys.stdout / sys.stderr, which are gmond's log): gmond's
    # log only. Either way the module's lines stay in gmond's log.
    for h in made:
        if h.formatter is None:
            h.setFormatter(formatter if fmt is not None else
                           _logging.Formatter(_logging.BASIC_FORMAT, datefmt, "%"))
        _add_own_handler(root_class, module, own, h)
    if fmt is not None or datefmt is not None:
        own.formatter = formatter
    if level is not None:
        own.level = _logging._checkLevel(level)
    own.configured = True


def _setup(logging_module):
    global _handler_installed, _host_handler, _logging
    _logging = logging_module
    LogHandler = _make_handler_class(logging_module)
    root = logging_module.root
    root_class = type(root)
    if _host_handler is None:
        _host_handler = LogHandler()
    # The host's gate for every module: INFO, DEBUG above debug level 1.
    logging_module.Logger.setLevel(root, logging_module.DEBUG if _verbose else logging_module.INFO)
    if getattr(root_class, "_modpython", False):
        _handler_installed = True
        return
    if _host_handler not in root.handlers:
        root_class.addHandler(root, _host_handler)
    _share_root(root_class)
    type(root)._modpython = True
    _basic_config.__doc__ = logging_module.basicConfig.__doc__
    logging_module.basicConfig = _basic_config
    _handler_installed = True


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
    m.add_function(wrap_pyfunction!(_current_module, m)?)?;
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
pub fn install(py: Python<'_>, debug_level: i32) -> PyResult<()> {
    DEBUG_LEVEL.store(debug_level, std::sync::atomic::Ordering::Relaxed);
    let verbose = debug_level > 1;
    stdio::install(py, verbose)?;
    py.import("ganglia")?
        .getattr("_install_logging")?
        .call1((verbose,))?;
    Ok(())
}
