"""Type stubs for `ganglia`, the module gmond's Python host (modpython)
builds into the interpreter it embeds. Point your editor or type checker at
this directory (e.g. mypy's ``mypy_path``) to get completion for it.

See docs/writing-modules.md.
"""

import io
import logging

def get_debug_msg_level() -> int:
    """gmond's debug level: ``-d N`` on its command line, else
    ``globals { debug_level }``. 0 for a daemon."""

def log_error(message: object) -> None:
    """Logs ``str(message)`` as an error in gmond's log (always shown),
    tagged with the calling module's name. One log line per text line."""

def log_warning(message: object) -> None:
    """Logs a warning in gmond's log (always shown)."""

def log_info(message: object) -> None:
    """Logs information (info level); gmond shows it at every debug level,
    a daemonized gmond in syslog."""

def log_debug(message: object) -> None:
    """Logs a debug message; gmond shows it at debug level 2 and above."""

class LogHandler(logging.Handler):
    """The handler the host puts on the root logger: records go to gmond's
    log, ERROR/CRITICAL as errors, WARNING as warnings, INFO as info (all
    shown at every debug level), DEBUG at debug level 2 and above. On the
    host's instance, ``setFormatter`` and ``setLevel`` apply to the calling
    module's records only (see docs/writing-modules.md, "Each module's
    logging is its own")."""

    def emit(self, record: logging.LogRecord) -> None: ...

class LogStream(io.TextIOBase):
    """What ``sys.stdout`` (info level) and ``sys.stderr`` (warning level)
    are while modules run: each complete line goes to gmond's log (stdout
    is dropped with the host setting ``module_stdout = discard``)."""

    def write(self, text: str) -> int: ...
    def flush(self) -> None: ...
    def fileno(self) -> int: ...
