//! `log` → gmond's own logger, so every message (ours and, through the
//! `ganglia` module, Python's) lands where gmond's do: stderr in the
//! foreground, syslog when daemonized.
//!
//! Error and Warn always reach `err_msg`, and so do the modules' Info lines
//! (what they print, `logging.info`, `ganglia.log_info`); the host's own
//! Info and everything at Debug go to `debug_msg`, which gmond prints only
//! at debug level > 1.
//!
//! `err_msg` is what puts a module's info line where an operator looks, at
//! gmond's default debug level 0: in the foreground it writes to stderr;
//! once gmond has daemonized (it sets libganglia's `daemon_proc` and calls
//! `openlog(argv[0], LOG_PID, LOG_DAEMON)` right after detaching), it calls
//! `syslog(LOG_INFO, …)`, so the line lands in syslog with priority info,
//! facility daemon and gmond's ident, next to gmond's own messages (checked
//! against the disassembly of gmond 3.7.2 and libganglia, and by
//! tests/module_output.rs). `debug_msg` would lose it there: it only ever
//! writes to stderr, which a daemon has pointed at /dev/null.

use std::ffi::CString;

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::ffi;
use crate::python::stdio::MODULE_LOG_TARGET;

/// Where log lines go. Outside gmond (the tools, unit tests) libganglia's
/// `err_msg` still works: it writes to stderr.
struct GmondLogger;

static LOGGER: GmondLogger = GmondLogger;

/// Installs the logger once per process; later calls are no-ops.
pub fn install() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(LevelFilter::Trace);
    }
}

/// The prefix every operator-facing line starts with.
pub const PREFIX: &str = crate::text::LOG_PREFIX;

/// gmond's effective debug level (`-d` beats `globals.debug_level`).
pub fn debug_level() -> i32 {
    // SAFETY: a plain getter in libganglia; no arguments, no preconditions.
    unsafe { ffi::get_debug_msg_level() }
}

/// Turns a message into a C string gmond can print: interior NULs would cut it
/// short, so they become spaces.
fn c_line(text: &str) -> CString {
    let bytes: Vec<u8> = text
        .bytes()
        .map(|b| if b == 0 { b' ' } else { b })
        .collect();
    CString::new(bytes).unwrap_or_default()
}

/// Whether a record goes to `err_msg` (always printed) rather than
/// `debug_msg`: errors, warnings, and info from modules.
fn through_err_msg(metadata: &Metadata) -> bool {
    metadata.level() <= Level::Warn
        || (metadata.level() == Level::Info && metadata.target() == MODULE_LOG_TARGET)
}

/// Whether a line is logged at gmond's debug level `level` (the module
/// process decides by it what to send gmond).
pub fn shown_at(metadata: &Metadata, level: i32) -> bool {
    through_err_msg(metadata) || level > 1
}

impl Log for GmondLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        shown_at(metadata, debug_level())
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let tag = match record.level() {
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            _ => "",
        };
        let message = record.args().to_string();
        // One err_msg per line: syslog shows multi-line messages badly.
        for (i, line) in message.lines().enumerate() {
            let text = if i == 0 {
                format!("{PREFIX} {tag}{line}")
            } else {
                format!("{PREFIX}   {line}")
            };
            let line = c_line(&text);
            // SAFETY: constant "%s" format with one NUL-terminated argument that
            // outlives the call; libganglia copies what it needs.
            unsafe {
                if through_err_msg(record.metadata()) {
                    ffi::err_msg(c"%s".as_ptr(), line.as_ptr());
                } else {
                    ffi::debug_msg(c"%s\n".as_ptr(), line.as_ptr());
                }
            }
        }
    }

    fn flush(&self) {}
}
