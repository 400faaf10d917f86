//! The module process (`modpython-module`): one Python module, loaded and
//! called by the same code as in gmond (loader, descriptor checks, value
//! conversion, module output), answering gmond over the socket it was
//! given. Whatever the module's native code does here — a segfault,
//! `os._exit`, `abort()`, the memory limit, a C loop holding the GIL — ends
//! or stalls this process only; gmond reports it and starts another.
//!
//! Descriptors it inherits (set up by [`super::spawn`]): [`SOCKET_FD`], the
//! socket to gmond; [`CRASH_FD`], where `faulthandler` writes a fatal
//! signal's traceback; [`STATUS_FD`], a shared page telling gmond which
//! call is running ([`super::Status`]).

use std::io::Write;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

use log::{Log, Metadata, Record};
use pyo3::exceptions::PyMemoryError;
use pyo3::prelude::*;

use super::protocol::{Encoder, FrameBuffer, FromChild, StartRequest, ToChild, WireOutcome};
use super::{
    CRASH_FD, EXIT_LOST_PARENT, EXIT_MEMORY, EXIT_PRIVILEGES, SOCKET_FD, STATUS_FD, Status,
};
use crate::engine::call::{self, CallTarget, Step};
use crate::python::{self, loader, stdio};
use crate::settings::CallMode;

/// The socket's writing end, shared by the calls and the log (a module's
/// own threads log too); each frame is written whole under the lock.
static OUT: Mutex<Option<UnixStream>> = Mutex::new(None);

fn send(frame: &[u8]) {
    let mut out = OUT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(stream) = out.as_mut() {
        if stream.write_all(frame).is_err() {
            // gmond is gone: nothing is left to answer.
            // SAFETY: ends this process at once, as a lost parent must.
            unsafe { libc::_exit(EXIT_LOST_PARENT) };
        }
    }
}

fn send_message(message: &FromChild) {
    let mut e = Encoder::default();
    e.from_child(message);
    send(e.bytes());
}

/// Hands every log line to gmond, which decides where it goes (its log,
/// or `modpython-check`'s report) by the same rules as its own lines.
struct ForwardingLogger {
    debug_level: i32,
}

impl Log for ForwardingLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        crate::gmond_log::shown_at(metadata, self.debug_level)
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            send_message(&FromChild::Log {
                level: record.level(),
                module_output: record.target() == stdio::MODULE_LOG_TARGET,
                text: record.args().to_string(),
            });
        }
    }

    fn flush(&self) {}
}

/// Ends this process unless gmond (`parent`) is still its parent: a
/// module process never outlives the gmond that started it.
fn check_parent(parent: u32) {
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } as u32 != parent {
        // SAFETY: as in `send`.
        unsafe { libc::_exit(EXIT_LOST_PARENT) };
    }
}

/// The kernel ends this process with SIGKILL when gmond's thread that
/// started it ends. Any change of credentials clears the setting, so it is
/// made again after each, and then the parent checked, since it may have
/// died in between.
fn die_with_parent(parent: u32) {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and no pointers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    check_parent(parent);
}

/// Takes the credentials of `uid`/`gid` for good (supplementary groups
/// from the group database, as a login would).
fn become_user(uid: u32, gid: u32) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == uid {
        return Ok(());
    }
    // SAFETY: getpwuid returns a pointer into static storage or null; we
    // copy the name out before any other call that could overwrite it.
    let name = unsafe {
        let pw = libc::getpwuid(uid);
        if pw.is_null() {
            None
        } else {
            Some(std::ffi::CStr::from_ptr((*pw).pw_name).to_owned())
        }
    };
    // SAFETY: initgroups/setgroups/setgid/setuid take plain values and a
    // NUL-terminated name (or a one-element array) that outlive the call.
    let ok = unsafe {
        let groups_ok = match &name {
            Some(n) => libc::initgroups(n.as_ptr(), gid) == 0,
            None => libc::setgroups(1, &gid) == 0,
        };
        groups_ok && libc::setgid(gid) == 0 && libc::setuid(uid) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "cannot become uid {uid} gid {gid}: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// The module process's `main`. Returns the exit status.
pub fn main() -> i32 {
    // SAFETY: the socket's descriptor was set up for us by gmond (see
    // `super::spawn`) and nothing else in this process owns it.
    let stream = unsafe { UnixStream::from_raw_fd(SOCKET_FD) };
    let Ok(writer) = stream.try_clone() else {
        return EXIT_LOST_PARENT;
    };
    *OUT.lock().unwrap_or_else(|p| p.into_inner()) = Some(writer);
    let mut reader = stream;
    let mut frames = FrameBuffer::default();
    let Some(ToChild::Start(request)) = next_request(&mut reader, &mut frames) else {
        return EXIT_LOST_PARENT;
    };
    let status = Status::map(STATUS_FD);
    // As in gmond: a write to a closed pipe is an error, not a death.
    // SAFETY: ignoring SIGPIPE changes this process's disposition only.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let _ = log::set_boxed_logger(Box::new(ForwardingLogger {
        debug_level: request.debug_level,
    }));
    log::set_max_level(log::LevelFilter::Trace);

    if let Some((uid, gid)) = request.user {
        if let Err(why) = become_user(uid, gid) {
            send_message(&FromChild::LoadFailed {
                message: format!("the module process cannot switch to modpython.user: {why}"),
            });
            return EXIT_PRIVILEGES;
        }
    }
    die_with_parent(request.parent_pid);
    // Chosen by the kernel's OOM killer before gmond (whose score is 0).
    let _ = std::fs::write("/proc/self/oom_score_adj", "500");
    if let Some(bytes) = request.memory_limit {
        let limit = libc::rlimit {
            rlim_cur: bytes,
            rlim_max: bytes,
        };
        // SAFETY: setrlimit reads the struct we own.
        unsafe { libc::setrlimit(libc::RLIMIT_DATA, &limit) };
    }

    let module = match load(&request) {
        Ok(m) => m,
        Err(message) => {
            send_message(&FromChild::LoadFailed { message });
            return 0;
        }
    };
    status.set_phase(Status::IDLE);
    serve(&request, module, &mut reader, &mut frames, &status)
}

fn next_request(reader: &mut UnixStream, frames: &mut FrameBuffer) -> Option<ToChild> {
    loop {
        match frames.next_frame() {
            Ok(Some((kind, mut d))) => return d.to_child(kind).ok(),
            Ok(None) => {}
            Err(_) => return None,
        }
        match frames.fill(reader) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

struct Module {
    id: loader::ModuleRef,
    module: Py<PyModule>,
    targets: Vec<CallTarget>,
}

fn load(request: &StartRequest) -> Result<Module, String> {
    python::start(request.debug_level)?;
    stdio::set_stdout(request.settings.module_stdout);
    let (loaded, diagnostics) = loader::collect_diagnostics(|| {
        Python::attach(|py| -> Result<loader::Loaded, String> {
            // A fatal signal's traceback goes to gmond, which logs it.
            let faulthandler = py.import("faulthandler").map_err(|e| e.to_string())?;
            let kwargs = pyo3::types::PyDict::new(py);
            kwargs
                .set_item("file", CRASH_FD)
                .map_err(|e| e.to_string())?;
            kwargs
                .set_item("all_threads", false)
                .map_err(|e| e.to_string())?;
            faulthandler
                .call_method("enable", (), Some(&kwargs))
                .map_err(|e| format!("cannot enable faulthandler: {e}"))?;
            let mut settings = request.settings.clone();
            // Loading here runs on a thread with init_timeout, as a
            // protected module's does in gmond.
            settings.call_mode = CallMode::Protected;
            let options = loader::LoadOptions {
                settings: &settings,
                trusted_uids: request.trusted_uids.clone(),
                isolate: None,
                only: Some(&request.module.name),
            };
            loader::load_all(
                py,
                &request.dir,
                std::slice::from_ref(&request.block),
                &options,
            )
        })
    });
    for d in diagnostics {
        send_message(&FromChild::Diagnostic(d));
    }
    let mut loaded = loaded?;
    let Some(module) = loaded.modules.pop() else {
        return Err(loaded.failed.first().map_or_else(
            || "the module was not loaded".to_owned(),
            |_| "the module failed to load (see the lines above)".to_owned(),
        ));
    };
    let Some(py_module) = module.module else {
        return Err("the module was not loaded in this process".to_owned());
    };
    let name: std::sync::Arc<str> = module.id.name.as_str().into();
    let mut descriptors = Vec::with_capacity(loaded.metrics.len());
    let mut targets = Vec::with_capacity(loaded.metrics.len());
    for m in loaded.metrics {
        targets.push(CallTarget {
            module_name: std::sync::Arc::clone(&name),
            callback: m.callback,
            py_name: m.py_name,
            value_type: m.descriptor.value_type,
        });
        descriptors.push(m.descriptor);
    }
    send_message(&FromChild::Loaded { descriptors });
    Ok(Module {
        id: module.id,
        module: py_module,
        targets,
    })
}

fn serve(
    request: &StartRequest,
    module: Module,
    reader: &mut UnixStream,
    frames: &mut FrameBuffer,
    status: &Status,
) -> i32 {
    let mut encoder = Encoder::default();
    let mut batch: Vec<usize> = Vec::new();
    let limited = request.memory_limit.is_some();
    loop {
        let Some(request_frame) = next_request(reader, frames) else {
            // gmond closed the socket: it is gone, or re-executing.
            return EXIT_LOST_PARENT;
        };
        check_parent(request.parent_pid);
        match request_frame {
            ToChild::Calls {
                seq,
                timed,
                positions,
            } => {
                batch.clear();
                batch.extend(positions.iter().map(|p| *p as usize));
                encoder.clear();
                let at = encoder.results_begin(seq, batch.len());
                let mut over_limit = false;
                Python::attach(|py| {
                    call::in_module_scopes(&module.targets, &batch, |step| match step {
                        Step::Call(target, position) => {
                            status.calling(position);
                            let watch = call::Stopwatch::start(timed);
                            let outcome = match call::call_and_convert(py, target) {
                                Ok(value) => WireOutcome::Value(value),
                                Err(Ok(err)) => {
                                    if limited && err.is_instance_of::<PyMemoryError>(py) {
                                        over_limit = true;
                                        return false;
                                    }
                                    match call::described(py, Ok(err)) {
                                        call::Failed::Raised { summary, detail } => {
                                            WireOutcome::Raised { summary, detail }
                                        }
                                        call::Failed::Value(e) => WireOutcome::Conversion(e.0),
                                    }
                                }
                                Err(Err(conversion)) => WireOutcome::Conversion(conversion.0),
                            };
                            encoder.outcome(&outcome, watch.seconds());
                            true
                        }
                        Step::ResetHooks => {
                            call::reset_thread_hooks(py);
                            true
                        }
                    });
                });
                if over_limit {
                    // Over modpython.memory_limit: gmond counts it as a
                    // crash during the call the status page names.
                    return EXIT_MEMORY;
                }
                status.set_phase(Status::IDLE);
                encoder.results_end(at);
                send(encoder.bytes());
            }
            ToChild::BecomeUser { uid, gid } => {
                if let Err(why) = become_user(uid, gid) {
                    log::error!(
                        "{}: the module process cannot follow gmond to uid {uid}: {why}; it ends rather than go on calling the module with more privileges than gmond has",
                        module.id
                    );
                    return EXIT_PRIVILEGES;
                }
                die_with_parent(request.parent_pid);
            }
            ToChild::Cleanup => {
                status.set_phase(Status::CLEANUP);
                Python::attach(|py| {
                    loader::cleanup_modules(
                        py,
                        &[(module.id.clone(), module.module.clone_ref(py))],
                        &|_| {},
                    )
                });
                send_message(&FromChild::CleanedUp);
                return 0;
            }
            ToChild::Start(_) => {
                log::error!("{}: a second start request (an internal error)", module.id);
            }
        }
    }
}
