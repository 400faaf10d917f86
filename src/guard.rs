//! The one wrapper every `extern "C"` entry point runs its body in.
//!
//! A Rust panic must never unwind into gmond (undefined behaviour, and gmond
//! would die with every other module's metrics). Each entry point therefore
//! hands `ffi_boundary` the value gmond should get if something goes wrong.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

/// Runs `body`; if it panics, logs the panic for the operator and returns `fallback()`.
pub fn ffi_boundary<T>(entry: &str, fallback: impl FnOnce() -> T, body: impl FnOnce() -> T) -> T {
    install_panic_hook();
    match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-text panic payload".to_owned());
            log::error!(
                "internal error in {entry}: {what}; gmond keeps running, please report this as a modpython bug"
            );
            fallback()
        }
    }
}

/// The default hook prints to stderr, which is /dev/null under a daemonized
/// gmond; the location of the panic goes to gmond's log as well. The hook
/// that was there before (Rust's default, or one another library in gmond's
/// process installed) still runs: it is chained, not replaced.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_else(|| "unknown location".to_owned());
            log::error!("internal error at {location}");
            previous(info);
        }));
    });
}
