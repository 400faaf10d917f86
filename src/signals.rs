//! gmond keeps control of its signals. It installs SIGINT/SIGTERM/SIGHUP
//! handlers (and ignores SIGPIPE) before our `init`; a Python module calling
//! `signal.signal()` would silently take shutdown and reload away from it.
//! We remember gmond's dispositions and put them back after any module code
//! ran, saying which module tried to change them.

use std::sync::Mutex;

/// The signals gmond depends on.
const WATCHED: [(libc::c_int, &str); 4] = [
    (libc::SIGINT, "SIGINT"),
    (libc::SIGTERM, "SIGTERM"),
    (libc::SIGHUP, "SIGHUP"),
    (libc::SIGPIPE, "SIGPIPE"),
];

static SAVED: Mutex<Option<Vec<libc::sigaction>>> = Mutex::new(None);

fn current(signal: libc::c_int) -> libc::sigaction {
    // SAFETY: sigaction with a null new action only reads the disposition
    // into the zero-initialised struct we own.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut action);
        action
    }
}

/// Records gmond's dispositions; call before any Python code runs.
pub fn remember_gmond_handlers() {
    let saved = WATCHED.iter().map(|(signal, _)| current(*signal)).collect();
    *SAVED.lock().unwrap_or_else(|p| p.into_inner()) = Some(saved);
}

/// Restores any watched disposition that changed since
/// [`remember_gmond_handlers`], logging `who` changed it.
pub fn restore_if_changed(who: &str) {
    for problem in restore_changed() {
        log::warn!("{who} {problem}");
    }
}

/// Restores any watched disposition that changed since
/// [`remember_gmond_handlers`]; returns, for each one worth a warning, the
/// text after "whoever changed it" for the caller to report.
pub fn restore_changed() -> Vec<String> {
    let mut problems = Vec::new();
    let guard = SAVED.lock().unwrap_or_else(|p| p.into_inner());
    let Some(saved) = guard.as_ref() else {
        return problems;
    };
    for ((signal, name), original) in WATCHED.iter().zip(saved) {
        let now = current(*signal);
        if now.sa_sigaction != original.sa_sigaction {
            // SAFETY: re-installing exactly the disposition read earlier from
            // the kernel for the same signal.
            unsafe { libc::sigaction(*signal, original, std::ptr::null_mut()) };
            if original.sa_sigaction == libc::SIG_DFL {
                // `gmond -m` installs no handlers, and merely importing Python's
                // `signal` module then claims SIGINT: nothing worth a warning.
                continue;
            }
            problems.push(format!(
                "changed the handler of {name}; gmond's own handler is restored (gmond must keep control of its signals: do shutdown work in metric_cleanup)"
            ));
        }
    }
    problems
}

/// Blocks gmond's signals in the calling thread, for threads modpython
/// starts. A process-directed SIGTERM delivered to one of our threads would
/// run gmond's handler there but not wake gmond's main loop out of its
/// poll, delaying shutdown until the poll times out; blocked here, the
/// kernel delivers it to gmond's thread instead.
pub fn block_in_this_thread() {
    // SAFETY: sigemptyset/sigaddset fill a set we own; pthread_sigmask only
    // changes the calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Signals gmond leaves at their default action, which is to kill the
/// process, and that module code plausibly raises: `signal.alarm()` and
/// `setitimer` timeouts written for a main thread, profilers, and stray
/// `kill -USR1`. Each gets a handler that does nothing, unless it already
/// has one. (A handler, not SIG_IGN: an ignored signal would stay ignored in
/// every program a module starts.)
const STRAY: [libc::c_int; 5] = [
    libc::SIGALRM,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

extern "C" fn ignore_signal(_signal: libc::c_int) {}

pub fn defuse_stray_signals() {
    for signal in STRAY {
        if current(signal).sa_sigaction != libc::SIG_DFL {
            continue;
        }
        // SAFETY: installs an async-signal-safe handler that does nothing,
        // with SA_RESTART so gmond's own system calls are not interrupted.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}
