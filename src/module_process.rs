//! The module process (`modpython-module`): one Python module, loaded and
//! called by the same code as in gmond (loader, descriptor checks, value
//! conversion, module output), answering gmond over the socket it was
//! given. Whatever the module's native code does here — a segfault,
//! `os._exit`, `abort()`, the memory limit, a C loop holding the GIL — ends
//! or stalls this process only; gmond reports it and starts another.
//!
//! Descriptors it inherits (set up by gmond, see [`crate::isolation::ModuleProcess::spawn`]): [`SOCKET_FD`], the
//! socket to gmond; [`CRASH_FD`], where `faulthandler` writes a fatal
//! signal's traceback; [`STATUS_FD`], a shared page telling gmond which
//! call is running ([`crate::isolation::Status`]).

use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use log::{Log, Metadata, Record};
use pyo3::exceptions::PyMemoryError;
use pyo3::prelude::*;

use crate::engine::call::{self, CallTarget, Step};
use crate::isolation::protocol::{
    Encoder, FrameBuffer, FromChild, StartRequest, ToChild, WireOutcome,
};
use crate::isolation::{
    CRASH_FD, EXIT_LOST_PARENT, EXIT_MEMORY, EXIT_PRIVILEGES, SOCKET_FD, STATUS_FD, Status,
};
use crate::python::{self, loader, stdio};
use crate::settings::CallMode;

/// The socket's writing end, shared by the calls and the log (a module's
/// own threads log too), with the log frames it had no room for yet; each
/// frame is written whole, in order, under the lock.
static OUT: Mutex<Option<Out>> = Mutex::new(None);

struct Out {
    stream: UnixStream,
    /// Log frames (or the rest of one) waiting for room in the socket:
    /// gmond reads it only while it waits for this process (a round, or
    /// while it takes the answer of `metric_init`, which at start-up may
    /// be after it has loaded other modules). Sent before anything else.
    held: Vec<u8>,
    /// Bytes ever sent from `held`, by any thread: a frame added to it is
    /// sent once this passes where the frame ended.
    sent_from_held: u64,
}

/// Log bytes held back at most; lines past it are dropped and counted.
const HELD_MAX: usize = 1024 * 1024;

impl Out {
    /// Sends what it can of `bytes` without waiting; returns how much.
    fn send_now(&self, bytes: &[u8]) -> Result<usize, ()> {
        loop {
            // SAFETY: send on our socket, from a buffer that outlives the call.
            let sent = unsafe {
                libc::send(
                    self.stream.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if sent >= 0 {
                return Ok(sent as usize);
            }
            match std::io::Error::last_os_error().kind() {
                std::io::ErrorKind::Interrupted => {}
                std::io::ErrorKind::WouldBlock => return Ok(0),
                _ => return Err(()),
            }
        }
    }

    /// Sends what it can of `bytes` without waiting, unless something is
    /// held (it goes first); returns how much went. Ends the process if
    /// gmond is gone.
    fn send_unless_held(&self, bytes: &[u8]) -> usize {
        if !self.held.is_empty() {
            return 0;
        }
        self.send_now(bytes)
            .unwrap_or_else(|()| end_process_group())
    }

    /// Holds `bytes` behind what is held; `Err` if the memory cannot be
    /// had.
    fn hold(&mut self, bytes: &[u8]) -> Result<(), ()> {
        self.held.try_reserve(bytes.len()).map_err(|_| ())?;
        self.held.extend_from_slice(bytes);
        Ok(())
    }

    /// Sends what it can of the held bytes without waiting.
    fn flush_some(&mut self) -> Result<(), ()> {
        if self.held.is_empty() {
            return Ok(());
        }
        let sent = self.send_now(&self.held)?;
        self.held.drain(..sent);
        self.sent_from_held += sent as u64;
        Ok(())
    }
}

/// Log lines dropped because gmond had not read the socket for a while.
static DROPPED_LINES: AtomicU64 = AtomicU64::new(0);

/// Adds the line that says how many lines were dropped, if any were, to
/// `e`; returns that count (to be counted again should this go too).
fn note_dropped(e: &mut Encoder) -> u64 {
    let dropped = DROPPED_LINES.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        e.from_child(&FromChild::Log {
            level: log::Level::Warn,
            module_output: false,
            text: format!(
                "{dropped} line(s) of the module process's output were dropped: gmond was not reading them"
            ),
        });
    }
    dropped
}

/// Waits until the socket has room (or gmond closed it), or `ms` passed
/// (-1: no limit). Never with [`OUT`] locked: a module thread that logs
/// meanwhile, perhaps holding the GIL, must not wait for gmond too.
fn wait_for_room(fd: RawFd, ms: i32) {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: poll on one descriptor of ours, with a struct we own. EINTR
    // only makes the caller look again.
    unsafe { libc::poll(&mut pollfd, 1, ms) };
}

/// A frame begun cannot be finished for want of memory: the process ends
/// as going over its memory_limit does.
fn out_of_memory() -> ! {
    // SAFETY: _exit ends the process at once; nothing is left to unwind
    // that gmond needs (it sees the exit status).
    unsafe { libc::_exit(EXIT_MEMORY) }
}

/// Sends `frame` whole, after everything held before it: waits as long as
/// gmond does not read, but with [`OUT`] unlocked while it waits.
fn send(frame: &[u8]) {
    if !in_module_process() {
        return;
    }
    // Where this frame ends in the stream of held bytes (a module thread
    // that logs meanwhile may send part of it, or add behind it).
    let end = {
        let mut out = OUT.lock().unwrap_or_else(|p| p.into_inner());
        let Some(out) = out.as_mut() else {
            return;
        };
        let mut e = Encoder::default();
        let dropped = note_dropped(&mut e);
        if dropped > 0 && out.hold(e.bytes()).is_err() {
            DROPPED_LINES.fetch_add(dropped, Ordering::Relaxed);
        }
        // Straight out when nothing waits before it; only the rest is held
        // (copying a large answer could fail under a memory_limit).
        let sent = out.send_unless_held(frame);
        if sent == frame.len() {
            return;
        }
        if out.hold(&frame[sent..]).is_err() {
            out_of_memory();
        }
        out.sent_from_held + out.held.len() as u64
    };
    send_held_through(end, None);
}

/// Waits until the held bytes up to `end` (counted as `sent_from_held`)
/// are sent: with no limit, ending the process if gmond is gone; or until
/// `until`.
fn send_held_through(end: u64, until: Option<Instant>) {
    loop {
        let fd = {
            let mut out = OUT.lock().unwrap_or_else(|p| p.into_inner());
            let Some(out) = out.as_mut() else {
                return;
            };
            if out.flush_some().is_err() {
                if until.is_none() {
                    // gmond is gone: nothing is left to answer.
                    end_process_group();
                }
                return;
            }
            if out.sent_from_held >= end {
                return;
            }
            out.stream.as_raw_fd()
        };
        let ms = match until {
            None => -1,
            Some(until) => {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return;
                }
                left.as_millis().clamp(1, 1000) as i32
            }
        };
        wait_for_room(fd, ms);
    }
}

/// Sends what is held now (not what module threads add meanwhile),
/// waiting up to `limit` for gmond to read it: the last lines before the
/// process ends say why it ends.
fn flush_before_exit(limit: Duration) {
    let end = {
        let out = OUT.lock().unwrap_or_else(|p| p.into_inner());
        let Some(out) = out.as_ref() else {
            return;
        };
        out.sent_from_held + out.held.len() as u64
    };
    send_held_through(end, Some(Instant::now() + limit));
}

fn send_message(message: &FromChild) {
    let mut e = Encoder::default();
    e.from_child(message);
    send(e.bytes());
}

/// Sends a log line, or holds it back if the socket has no room now. A
/// module's own thread printing while gmond does not read (between rounds,
/// or while a call is late) must not block: it may hold the GIL the calls
/// need.
fn send_log(message: &FromChild) {
    if !in_module_process() {
        return;
    }
    let mut e = Encoder::default();
    let dropped = note_dropped(&mut e);
    e.from_child(message);
    let bytes = e.bytes();
    let mut out = OUT.lock().unwrap_or_else(|p| p.into_inner());
    let Some(out) = out.as_mut() else {
        DROPPED_LINES.fetch_add(dropped + 1, Ordering::Relaxed);
        return;
    };
    if out.flush_some().is_err() {
        end_process_group();
    }
    let sent = out.send_unless_held(bytes);
    if sent == bytes.len() {
        return;
    }
    let rest = &bytes[sent..];
    // A frame begun must be finished before any other: its rest is held.
    // A line not begun is held only within the bound, and only if the
    // memory can be had (under a memory_limit a failed allocation would
    // abort the process).
    if sent > 0 {
        if out.hold(rest).is_err() {
            out_of_memory();
        }
    } else if out.held.len() + rest.len() > HELD_MAX || out.hold(rest).is_err() {
        DROPPED_LINES.fetch_add(dropped + 1, Ordering::Relaxed);
    }
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
            send_log(&FromChild::Log {
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
        end_process_group();
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
    let name = user_name(uid);
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

/// The name of user `uid`, for its supplementary groups.
fn user_name(uid: u32) -> Option<std::ffi::CString> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: getpwuid_r fills `pw` with pointers into `buf`, both ours
    // and alive while we copy the name out.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let r = libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut found);
        if r != 0 || found.is_null() || pw.pw_name.is_null() {
            return None;
        }
        Some(std::ffi::CStr::from_ptr(pw.pw_name).to_owned())
    }
}

/// Ends this process, and what the module started in its process group,
/// when gmond shuts their socket down or closes it. gmond may not be
/// allowed to signal this process (once gmond has dropped to its user, a
/// module running as modpython.user belongs to another), and a SIGHUP
/// re-exec keeps gmond's pid, so neither a kill nor the parent-death
/// signal would end it. This thread takes no GIL: a C loop holding it, or a
/// call stuck in Python, does not stop it.
fn watch_gmond() -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("modpython-watch".into())
        .spawn(|| {
            loop {
                let mut pollfd = libc::pollfd {
                    fd: SOCKET_FD,
                    events: libc::POLLRDHUP,
                    revents: 0,
                };
                // SAFETY: poll on one descriptor, with a struct we own.
                let ready = unsafe { libc::poll(&mut pollfd, 1, -1) };
                if ready < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                    continue;
                }
                if ready != 0 {
                    end_process_group();
                }
            }
        })
        .map(drop)
}

/// Kills this process's group (its own, set up by gmond) or, should it not
/// lead one, this process alone: never gmond's group. Every way of finding
/// gmond gone ends here, so that what the module started goes too even
/// where gmond may not signal it.
fn end_process_group() -> ! {
    // SAFETY: getpgrp/getpid have no preconditions; the signals go to this
    // process's own group or to itself; _exit ends it should SIGKILL not.
    unsafe {
        if libc::getpgrp() == libc::getpid() {
            libc::kill(0, libc::SIGKILL);
        }
        libc::kill(libc::getpid(), libc::SIGKILL);
        libc::_exit(EXIT_LOST_PARENT)
    }
}

/// This process's pid: a child the module forked (`multiprocessing`, a
/// stray `os.fork()`) shares the socket, and must not write into gmond's
/// stream, nor wait on a lock copied while another thread held it.
static MAIN_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

fn in_module_process() -> bool {
    // SAFETY: getpid has no preconditions.
    MAIN_PID.load(Ordering::Relaxed) == unsafe { libc::getpid() }
}

/// Closes every descriptor from 6 up: gmond's spawn marks them
/// close-on-exec with close_range, which kernels before 5.11 lack; there,
/// this keeps gmond's sockets out of the module process. Nothing of this
/// process's own is open yet.
fn close_inherited() {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > STATUS_FD)
        .collect();
    for fd in fds {
        // SAFETY: closes descriptors nothing in this process uses (the
        // directory's own, closed by now, makes close fail harmlessly).
        unsafe { libc::close(fd) };
    }
}

/// The module process's `main`. Returns the exit status.
pub fn main() -> i32 {
    let status = run();
    if status != 0 {
        // It ends on its own (over its memory limit, a user it could not
        // become): the line saying why may be held, gmond not reading at
        // that moment. After a clean end gmond reads no more.
        flush_before_exit(Duration::from_secs(2));
    }
    status
}

fn run() -> i32 {
    // SAFETY: getpid has no preconditions.
    MAIN_PID.store(unsafe { libc::getpid() }, Ordering::Relaxed);
    close_inherited();
    // What the module starts (a subprocess, a fork) must not hold these
    // open: gmond would not see this process's end while they live.
    for fd in [SOCKET_FD, CRASH_FD, STATUS_FD] {
        // SAFETY: F_SETFD on descriptors gmond set up for us; a missing
        // one makes fcntl fail harmlessly (EBADF).
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            return EXIT_LOST_PARENT;
        }
    }
    // SAFETY: the socket's descriptor was set up for us by gmond (see
    // `isolation::ModuleProcess::spawn`), checked open just above, and nothing else in this
    // process owns it.
    let stream = unsafe { UnixStream::from_raw_fd(SOCKET_FD) };
    if watch_gmond().is_err() {
        return EXIT_LOST_PARENT;
    }
    let Ok(writer) = stream.try_clone() else {
        return EXIT_LOST_PARENT;
    };
    *OUT.lock().unwrap_or_else(|p| p.into_inner()) = Some(Out {
        stream: writer,
        held: Vec::new(),
        sent_from_held: 0,
    });
    // Never closed: the watcher polls this descriptor until the process
    // ends, and its number must not go to a file the module opens.
    let mut reader = std::mem::ManuallyDrop::new(stream);
    let mut frames = FrameBuffer::default();
    let request = match next_request(&mut reader, &mut frames) {
        Some(Ok(ToChild::Start(request))) => request,
        Some(Err(e)) => {
            send_message(&FromChild::LoadFailed {
                message: format!(
                    "the module program cannot read gmond's start request ({e}): modpython.so and modpython-module come from different builds; restart gmond after an upgrade"
                ),
            });
            return EXIT_PRIVILEGES;
        }
        _ => return EXIT_LOST_PARENT,
    };
    let Some(status) = Status::map(STATUS_FD) else {
        send_message(&FromChild::LoadFailed {
            message: format!(
                "the module process cannot map its status page: {}",
                std::io::Error::last_os_error()
            ),
        });
        return EXIT_PRIVILEGES;
    };
    // As in gmond: a write to a closed pipe is an error, not a death.
    // SAFETY: ignoring SIGPIPE changes this process's disposition only.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let _ = log::set_boxed_logger(Box::new(ForwardingLogger {
        debug_level: request.debug_level,
    }));
    log::set_max_level(log::LevelFilter::Trace);

    // Chosen by the kernel's OOM killer before gmond (whose score is 0).
    // Before any change of user: /proc/self is root's until exec after it.
    let _ = std::fs::write("/proc/self/oom_score_adj", "500");
    if let Some((uid, gid)) = request.user {
        if let Err(why) = become_user(uid, gid) {
            send_message(&FromChild::LoadFailed {
                message: format!("the module process cannot switch to modpython.user: {why}"),
            });
            return EXIT_PRIVILEGES;
        }
    }
    die_with_parent(request.parent_pid);
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
    // gmond drops to its `setuid` user right after its init: so does this
    // process after metric_init, before any call (or a thread the module
    // started) runs on as root.
    if let Some((uid, gid)) = request.then_user {
        if let Err(why) = become_user(uid, gid) {
            log::error!(
                "{}: the module process cannot follow gmond to uid {uid}: {why}; it ends rather than go on running the module with more privileges than gmond has",
                module.id
            );
            return EXIT_PRIVILEGES;
        }
        die_with_parent(request.parent_pid);
    }
    status.set_phase(Status::IDLE);
    serve(&request, module, &mut reader, &mut frames, &status)
}

/// The next request; `None` at the end of the stream, `Err` for one that
/// cannot be read.
fn next_request(
    reader: &mut UnixStream,
    frames: &mut FrameBuffer,
) -> Option<std::io::Result<ToChild>> {
    loop {
        match frames.next_frame() {
            Ok(Some((kind, mut d))) => return Some(d.to_child(kind)),
            Ok(None) => {}
            Err(_) => return None,
        }
        match frames.fill(reader) {
            Ok(0) => return None,
            Ok(_) => {}
            // A module's own signal handler (Python installs them without
            // SA_RESTART) interrupts the read; gmond is still there.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
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
            // This process is the module's own: the loader runs it on the
            // main thread, where signal.signal() works, as its calls do.
            // gmond kills the process if it passes init_timeout.
            settings.forced_mode = Some(CallMode::Isolated);
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
        let Some(Ok(request_frame)) = next_request(reader, frames) else {
            // gmond closed the socket: it is gone, or re-executing, or
            // killing this process (and may not be allowed to signal it).
            end_process_group();
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
                if batch.iter().any(|&p| p >= module.targets.len()) {
                    // gmond asked for a metric this process does not have
                    // (an internal error): every outcome says so, and the
                    // frame keeps its count.
                    for _ in &batch {
                        encoder.outcome(
                            &WireOutcome::Conversion(
                                "internal error: the module process has no such metric (please report it)".to_owned(),
                            ),
                            0.0,
                        );
                    }
                    encoder.results_end(at);
                    send(encoder.bytes());
                    continue;
                }
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
