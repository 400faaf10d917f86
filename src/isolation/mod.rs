//! Isolated modules: a module that runs in a process of its own
//! (`call_mode = isolated`), so that nothing its native code does can take
//! gmond or the other modules down.
//!
//! * [`protocol`]: the frames gmond and the module process exchange;
//! * this file: gmond's side of one process — starting it with the
//!   descriptors it inherits, talking to it with deadlines, and telling how
//!   it ended. When to start, restart or kill one is the engine's
//!   (`engine::isolated`).
//!
//! The module process's own side is [`crate::module_process`] (the
//! `modpython-module` program, installed beside `modpython.so`).

pub mod protocol;

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use protocol::{Encoder, FrameBuffer, FromChild, ToChild};

/// The program that runs one isolated module, installed beside modpython.so.
pub const HELPER_NAME: &str = "modpython-module";

/// The module process's inherited descriptors.
pub const SOCKET_FD: RawFd = 3;
pub const CRASH_FD: RawFd = 4;
pub const STATUS_FD: RawFd = 5;

/// Exit statuses of the module process with a meaning of their own.
pub const EXIT_MEMORY: i32 = 86;
pub const EXIT_PRIVILEGES: i32 = 87;
pub const EXIT_LOST_PARENT: i32 = 88;

/// A page both processes map: which phase the module process is in and
/// which call it is making, one word written with one store per call, so
/// that gmond never reads a phase with another call's position. gmond reads
/// it when the process crashed or hangs, to name the metric whose call it
/// was.
pub struct Status {
    page: *mut AtomicU64,
}

// SAFETY: the page is only ever accessed through atomics, and stays mapped
// until the `Status` is dropped, whichever thread holds it.
unsafe impl Send for Status {}

impl Drop for Status {
    fn drop(&mut self) {
        // SAFETY: unmaps the page mapped in `map`, which nothing else uses:
        // every access goes through `&self`.
        unsafe { libc::munmap(self.page.cast(), Status::SIZE) };
    }
}

impl Status {
    pub const LOADING: u32 = 0;
    pub const IDLE: u32 = 1;
    pub const CALLING: u32 = 2;
    pub const CLEANUP: u32 = 3;
    const SIZE: usize = 4096;

    fn create() -> io::Result<(Status, OwnedFd)> {
        // SAFETY: memfd_create takes a NUL-terminated name and flags.
        let fd = unsafe {
            libc::memfd_create(
                c"modpython-status".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor that we own from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on our own memfd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), Status::SIZE as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // Sealed at its size: module code that truncated the memfd would
        // otherwise make gmond's next read of the page a SIGBUS.
        // SAFETY: F_ADD_SEALS on our own memfd.
        let sealed = unsafe {
            libc::fcntl(
                fd.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
            )
        };
        if sealed != 0 {
            return Err(io::Error::last_os_error());
        }
        let status = Status::map(fd.as_raw_fd()).ok_or_else(io::Error::last_os_error)?;
        Ok((status, fd))
    }

    /// Maps the page behind `fd`.
    pub fn map(fd: RawFd) -> Option<Status> {
        // SAFETY: mapping a shared page of a memfd; it is unmapped when the
        // `Status` is dropped, and gmond's memfd is sealed at this size.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Status::SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        (page != libc::MAP_FAILED).then(|| Status {
            page: page.cast::<AtomicU64>(),
        })
    }

    /// The phase in the low half, the call's position in the high half.
    fn word(&self) -> &AtomicU64 {
        // SAFETY: the page is 4 KiB (page-aligned), mapped until `self` is
        // dropped, zeroed at creation, sealed against shrinking (gmond's
        // side), and only ever accessed through atomics.
        unsafe { &*self.page }
    }

    pub fn set_phase(&self, phase: u32) {
        self.word().store(u64::from(phase), Ordering::Relaxed);
    }

    /// The module process is calling the metric at `position`.
    pub fn calling(&self, position: usize) {
        self.word().store(
            (position as u64) << 32 | u64::from(Status::CALLING),
            Ordering::Relaxed,
        );
    }

    /// The phase, and the position of the call in progress if one is, as
    /// one reading.
    pub fn now(&self) -> (u32, Option<usize>) {
        let word = self.word().load(Ordering::Relaxed);
        let phase = word as u32;
        (
            phase,
            (phase == Status::CALLING).then_some((word >> 32) as usize),
        )
    }

    /// The position of the call in progress, if one is.
    pub fn current_call(&self) -> Option<usize> {
        self.now().1
    }
}

/// Where the module program is: beside the code running now — modpython.so
/// in gmond, or the program itself for the tools (which link the same code
/// statically); cargo's test binaries sit in `deps/`, one directory below it.
pub fn helper_path() -> Result<PathBuf, String> {
    let mut info: libc::Dl_info = empty_dl_info();
    // SAFETY: dladdr fills `info` for an address inside this library; the
    // file name it returns stays valid while the library is loaded.
    let found = unsafe { libc::dladdr(helper_path as *const libc::c_void, &mut info) } != 0;
    let dir = (found && !info.dli_fname.is_null())
        .then(|| {
            // SAFETY: a NUL-terminated string owned by the dynamic loader.
            let name = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
            let path = PathBuf::from(name.to_string_lossy().into_owned());
            std::fs::canonicalize(&path).unwrap_or(path)
        })
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .ok_or_else(|| {
            "cannot tell where modpython.so is, to find the module program beside it".to_owned()
        })?;
    let mut candidates = vec![dir.join(HELPER_NAME)];
    if dir.file_name().is_some_and(|n| n == "deps") {
        if let Some(up) = dir.parent() {
            candidates.push(up.join(HELPER_NAME));
        }
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            format!(
                "the module program {HELPER_NAME} is not installed beside modpython.so (looked for {})",
                candidates[0].display()
            )
        })
}

fn empty_dl_info() -> libc::Dl_info {
    libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    }
}

/// How a module process ended.
#[derive(Debug, Clone)]
pub struct Ended {
    pub signal: Option<i32>,
    pub code: Option<i32>,
    /// Killed by us (a hang past `kill_after`, or shutdown).
    pub killed: bool,
}

impl Ended {
    /// Whether the end was the module's doing: a signal or a failing exit
    /// status, not a kill of gmond's (a stop request that could not be
    /// sent, a malformed message) or a clean exit.
    pub fn is_crash(&self) -> bool {
        !self.killed && (self.signal.is_some() || self.code.is_some_and(|c| c != 0))
    }

    /// "killed by signal SIGSEGV (segmentation fault)", "exited with status 3", …
    pub fn how(&self) -> String {
        match (self.signal, self.code) {
            (Some(s), _) => format!("was killed by signal {}", signal_name(s)),
            (None, Some(EXIT_MEMORY)) => {
                "ended: it went over its modpython.memory_limit (MemoryError)".to_owned()
            }
            (None, Some(EXIT_PRIVILEGES)) => {
                "ended: it could not change to the user it must run as".to_owned()
            }
            (None, Some(c)) => format!("exited with status {c}"),
            (None, None) if self.killed => {
                "was killed, and has not died yet (a process stuck in the kernel dies when it leaves it)".to_owned()
            }
            (None, None) => "ended, with its exit status taken by someone else's wait in gmond".to_owned(),
        }
    }
}

/// A signal's name and what it usually means, for the log.
pub fn signal_name(signal: i32) -> String {
    let known = [
        (libc::SIGSEGV, "SIGSEGV (segmentation fault)"),
        (libc::SIGBUS, "SIGBUS (bus error)"),
        (libc::SIGFPE, "SIGFPE (arithmetic error)"),
        (libc::SIGILL, "SIGILL (illegal instruction)"),
        (libc::SIGABRT, "SIGABRT (abort)"),
        (
            libc::SIGKILL,
            "SIGKILL (the kernel's OOM killer, or a kill -9)",
        ),
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGINT, "SIGINT"),
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGPIPE, "SIGPIPE"),
        (libc::SIGXCPU, "SIGXCPU (CPU time limit)"),
    ];
    known
        .iter()
        .find(|(s, _)| *s == signal)
        .map_or_else(|| format!("{signal}"), |(_, n)| (*n).to_owned())
}

/// Module processes killed but not yet reaped (one stuck in the kernel
/// dies only when it leaves it): looked at again later, never waited for.
static UNREAPED: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

/// Reaps what it can of [`UNREAPED`].
pub fn reap_unreaped() {
    let mut list = UNREAPED.lock().unwrap_or_else(|p| p.into_inner());
    if list.is_empty() {
        return;
    }
    list.retain(|&pid| {
        let mut status = 0;
        // SAFETY: waitpid on our own child, without blocking.
        unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) == 0 }
    });
}

/// Module processes a previous gmond image started, before a SIGHUP
/// re-exec kept gmond's pid: they are still this process's children, and
/// end when they see their socket closed. Taken into [`UNREAPED`] so that
/// they are reaped, not left as zombies. Call once, at start-up.
pub fn adopt_earlier_processes() {
    // Once per process image: a later call would take this image's own.
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(adopt);
}

fn adopt() {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<libc::pid_t>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid …": comm may hold spaces and parentheses.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        // The kernel keeps 15 bytes of the program's name.
        if ppid == Some(me) && head.ends_with(&HELPER_NAME[..15]) {
            found.push(pid);
        }
    }
    if found.is_empty() {
        return;
    }
    for &pid in &found {
        // Its group too: our unreaped child keeps the group's id from
        // being reused.
        // SAFETY: signals to our own child, left by the image before, and
        // to the process group it leads.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
            libc::kill(pid, libc::SIGKILL);
        }
    }
    UNREAPED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(found);
    // They die at once (SIGKILL), unless one is stuck in the kernel: that
    // one is reaped in a later round, if this gmond has isolated modules.
    for _ in 0..100 {
        reap_unreaped();
        if UNREAPED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What reading the socket came to.
pub enum Event {
    Message(FromChild),
    /// The socket closed: the process ended (or closed it).
    Closed,
    /// Nothing arrived before the time given.
    Timeout,
}

/// gmond's side of one module process.
pub struct ModuleProcess {
    pid: libc::pid_t,
    socket: UnixStream,
    crash: std::fs::File,
    status: Status,
    _status_fd: OwnedFd,
    frames: FrameBuffer,
    encoder: Encoder,
    /// The effective uid the process runs module code as.
    pub uid: u32,
    pub started: Instant,
    ended: Option<Ended>,
    /// gmond sent it SIGKILL ([`ModuleProcess::kill`]): a death by that
    /// signal is gmond's doing, not the module's.
    killed: bool,
}

/// A descriptor moved to 10 or above (close-on-exec), so that placing the
/// three inherited ones at 3, 4 and 5 cannot overwrite one of the others.
fn high(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

impl ModuleProcess {
    /// Starts the module program and sends it `start`. Must run on the
    /// thread that lives as long as gmond (its main thread): the kernel
    /// ends the process when the thread that started it ends.
    pub fn spawn(helper: &Path, module_name: &str, start: &ToChild, uid: u32) -> io::Result<Self> {
        let (ours, theirs) = UnixStream::pair()?;
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two-element array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors are new and ours.
        let (crash_read, crash_write) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // The write end blocks in the child (faulthandler writes it whole).
        // SAFETY: F_SETFL on our own descriptor.
        unsafe { libc::fcntl(crash_write.as_raw_fd(), libc::F_SETFL, 0) };
        let (status, status_fd) = Status::create()?;
        let inherited = [
            high(theirs.as_raw_fd())?,
            high(crash_write.as_raw_fd())?,
            high(status_fd.as_raw_fd())?,
        ];
        let sources: [RawFd; 3] = [
            inherited[0].as_raw_fd(),
            inherited[1].as_raw_fd(),
            inherited[2].as_raw_fd(),
        ];
        let mut command = std::process::Command::new(helper);
        command.arg(module_name).stdin(std::process::Stdio::null());
        // SAFETY: runs in the forked child before exec and only makes
        // async-signal-safe system calls on descriptors and the process's
        // own settings.
        unsafe {
            command.pre_exec(move || {
                for (source, target) in sources.iter().zip([SOCKET_FD, CRASH_FD, STATUS_FD]) {
                    if libc::dup2(*source, target) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                // Nothing else of gmond's (its sockets) reaches the module.
                // Close-on-exec rather than closed: std's own pipe, which
                // reports a failed exec to `spawn`, must stay open until then.
                libc::syscall(
                    libc::SYS_close_range,
                    6u32,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                );
                // Its own process group: a Ctrl-C meant for a foreground
                // gmond is gmond's to handle, and the group is killed whole.
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                Ok(())
            });
        }
        let child = command.spawn()?;
        drop(inherited);
        drop(theirs);
        drop(crash_write);
        let pid = child.id() as libc::pid_t;
        // The `Child` would reap only on wait(); we reap by pid ourselves.
        drop(child);
        let mut process = ModuleProcess {
            pid,
            socket: ours,
            crash: std::fs::File::from(crash_read),
            status,
            _status_fd: status_fd,
            frames: FrameBuffer::default(),
            encoder: Encoder::default(),
            uid,
            started: Instant::now(),
            ended: None,
            killed: false,
        };
        process.send(start)?;
        Ok(process)
    }

    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    pub fn send(&mut self, message: &ToChild) -> io::Result<()> {
        self.encoder.clear();
        self.encoder.to_child(message);
        let bytes = self.encoder.take();
        let result = protocol::send(&mut self.socket, &bytes);
        self.encoder = Encoder::default();
        result
    }

    /// Sends a batch of calls (gmond's path: no message built).
    pub fn send_calls(&mut self, seq: u32, timed: bool, positions: &[u32]) -> io::Result<()> {
        self.encoder.clear();
        self.encoder.calls(seq, timed, positions);
        let bytes = self.encoder.bytes();
        protocol::send(&mut self.socket, bytes)
    }

    /// The next message, waiting until `until` at the latest (`None`: do
    /// not wait at all).
    pub fn next_event(&mut self, until: Option<Instant>) -> Event {
        loop {
            match self.frames.next_frame() {
                Ok(Some((kind, mut decoder))) => match decoder.from_child(kind) {
                    Ok(message) => return Event::Message(message),
                    Err(e) => {
                        log::error!(
                            "the module process (pid {}) sent a malformed message ({e}); it is stopped",
                            self.pid
                        );
                        return Event::Closed;
                    }
                },
                Ok(None) => {}
                Err(_) => return Event::Closed,
            }
            let wait_ms = match until {
                None => 0,
                Some(t) => {
                    let left = t.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        0
                    } else {
                        left.as_millis().clamp(1, i32::MAX as u128) as i32
                    }
                }
            };
            let mut pollfd = libc::pollfd {
                fd: self.socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one descriptor we own, with a struct we own.
            let ready = unsafe { libc::poll(&mut pollfd, 1, wait_ms) };
            if ready < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Event::Closed;
            }
            if ready == 0 {
                if until.is_some_and(|t| Instant::now() < t) {
                    continue;
                }
                return Event::Timeout;
            }
            match self.frames.fill(&mut self.socket) {
                Ok(0) => return Event::Closed,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Event::Closed,
            }
        }
    }

    /// Whether a message is arriving: part of it is here.
    pub fn mid_message(&self) -> bool {
        self.frames.mid_frame()
    }

    /// What `faulthandler` wrote before the process died (a traceback).
    pub fn crash_text(&mut self) -> String {
        let mut text = Vec::new();
        let mut chunk = [0u8; 4096];
        while text.len() < 64 * 1024 {
            match self.crash.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => text.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        String::from_utf8_lossy(&text).trim_end().to_owned()
    }

    /// Kills the process (and whatever it started in its process group).
    pub fn kill(&mut self) {
        if self.ended.is_none() {
            self.killed = true;
            // Once gmond has dropped its privileges, it may not signal a
            // process that runs as modpython.user: the module process
            // watches the socket and kills itself and its group when gmond
            // shuts it down (`module_process::watch_gmond`).
            // SAFETY: shutdown of our own socket; signals to our own child
            // and its process group.
            unsafe {
                libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR);
                libc::kill(-self.pid, libc::SIGKILL);
                libc::kill(self.pid, libc::SIGKILL);
            }
        }
    }

    /// Whether the process is known to have exited, whatever its socket
    /// says: a child the module forked may hold the socket open after the
    /// module process itself died.
    pub fn exited(&self) -> bool {
        self.ended.is_some() || self.has_exited() != Some(false)
    }

    /// How the process ended, once it has (its socket closed, or after
    /// [`ModuleProcess::kill`]). gmond's thread waits here at most ~60 ms:
    /// a process whose socket closed is normally dead already; one that
    /// closed it and lives on is killed; one the kernel does not let die at
    /// once (stuck in a system call) is left in [`UNREAPED`] and `None`
    /// returned.
    pub fn reap(&mut self) -> Option<Ended> {
        if let Some(e) = &self.ended {
            return Some(e.clone());
        }
        let mut signalled = self.killed;
        let mut exited = self.has_exited();
        for step in 0..60 {
            if exited != Some(false) {
                break;
            }
            if step == 50 && !signalled {
                self.kill();
                signalled = true;
            }
            std::thread::sleep(Duration::from_millis(1));
            exited = self.has_exited();
        }
        match exited {
            Some(false) => {
                UNREAPED
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(self.pid);
                self.ended = Some(Ended {
                    signal: None,
                    code: None,
                    killed: true,
                });
                return None;
            }
            None => {
                self.ended = Some(Ended {
                    signal: None,
                    code: None,
                    killed: false,
                });
                return self.ended.clone();
            }
            Some(true) => {}
        }
        // What the module started in its process group goes with it; the
        // unreaped zombie still holds the group's id, so it is not reused.
        // SAFETY: a signal to our child's process group.
        unsafe { libc::kill(-self.pid, libc::SIGKILL) };
        let mut status = 0;
        // SAFETY: waitpid on our own child, which has exited: no waiting.
        unsafe { libc::waitpid(self.pid, &mut status, 0) };
        let ended = if libc::WIFSIGNALED(status) {
            Ended {
                signal: Some(libc::WTERMSIG(status)),
                code: None,
                killed: signalled,
            }
        } else {
            Ended {
                signal: None,
                code: Some(libc::WEXITSTATUS(status)),
                killed: signalled,
            }
        };
        self.ended = Some(ended.clone());
        Some(ended)
    }

    /// Whether the process has exited (and waits to be reaped); `None` when
    /// it is not our child to wait for any more (someone else reaped it).
    fn has_exited(&self) -> Option<bool> {
        // SAFETY: waitid fills the zeroed siginfo we own; WNOWAIT leaves
        // the child to be reaped by `reap`.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let r = libc::waitid(
                libc::P_PID,
                self.pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            if r != 0 {
                return None;
            }
            Some(info.si_pid() == self.pid)
        }
    }
}

impl Drop for ModuleProcess {
    fn drop(&mut self) {
        if self.ended.is_none() {
            self.kill();
            self.reap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_left_by_an_earlier_image_are_killed_and_reaped() {
        // A child named as the module program, as a module process of the
        // gmond image before a SIGHUP re-exec would be to the new image.
        let dir = std::env::temp_dir().join(format!("modpython-adopt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let program = dir.join(HELPER_NAME);
        std::fs::copy("/bin/sleep", &program).unwrap();
        #[allow(clippy::zombie_processes)]
        let child = std::process::Command::new(&program)
            .arg("600")
            .spawn()
            .unwrap();
        let pid = child.id() as libc::pid_t;
        // Reaped by pid below, as gmond's side does, not through `Child`.
        drop(child);
        adopt();
        let mut status = 0;
        // SAFETY: waitpid on a pid that was our child, without blocking.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        let error = io::Error::last_os_error();
        std::fs::remove_dir_all(&dir).unwrap();
        // Reaped already: it is no longer our child to wait for.
        assert_eq!(r, -1, "the process was not reaped (waitpid gave {r})");
        assert_eq!(error.raw_os_error(), Some(libc::ECHILD));
    }
}
