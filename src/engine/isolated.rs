//! The engine's third way to call a module: in a process of its own
//! (`call_mode = isolated`, see [`crate::isolation`]).
//!
//! Each isolated module has a [`Life`], a state machine that every event
//! leaves in a final state:
//!
//! ```text
//!            spawn at start-up ─► Loading ──Loaded, same metrics──► Up ◄──┐
//!                                   │  │                              │   │ results
//!   LoadFailed, crash, init_timeout │  └─ metrics changed ─► Refused  │   │ (late ones too)
//!                                   ▼                                 ▼   │
//!   Down { retry_at } ◄── crash ── Busy (past its deadline) ◄── batch sent ┘
//!        │    ▲                      │
//!        │    └──── killed after kill_after
//!        └── retry_at passed: spawn ─► Loading
//! ```
//!
//! gmond's thread never waits for a module process beyond a call's
//! deadline, or [`FIRST_ANSWER_WAIT`] for a restarted process's
//! `metric_init` answer: a slower start is picked up in a later round.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::Level;

use crate::descriptor::{MetricDescriptor, ValueType};
use crate::isolation::protocol::{FromChild, StartRequest, ToChild, WireOutcome};
use crate::isolation::{self, Ended, Event, ModuleProcess, Status};
use crate::python::loader::{ModuleRef, report};
use crate::python::stdio::MODULE_LOG_TARGET;
use crate::value::ConversionError;

use super::call::{Failed, Outcome};

/// Restarts after crashes wait 1 s, 2 s, 4 s … up to this.
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// How long one round waits for the rest of a restarted process's
/// `Loaded` message once part of it has arrived (see [`Life::Loading`]).
const LOADING_SLICE: Duration = Duration::from_millis(20);

/// How long the round that starts a module process again waits for its
/// `metric_init` answer on gmond's thread.
const FIRST_ANSWER_WAIT: Duration = Duration::from_millis(200);

/// The end of the wait for a restarted process's first answer: modules
/// started again in the same round share one [`FIRST_ANSWER_WAIT`], so
/// that several restarts at once do not hold gmond's thread for each.
fn first_answer_by() -> Instant {
    static WINDOW: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    let mut window = WINDOW.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    match *window {
        Some(end) if now < end => end,
        _ => {
            let end = now + FIRST_ANSWER_WAIT;
            *window = Some(end);
            end
        }
    }
}

/// How early a round may come for a restart due at `retry_at`.
const ROUND_SLACK: Duration = Duration::from_millis(100);

/// What ran when a process died outside a call, after "during".
const BETWEEN_CALLS: &str =
    "the module's own code between calls (a thread of its own, a hook or a destructor)";

/// A process that ran this long before it crashed starts its back-off afresh.
const STABLE_AFTER: Duration = Duration::from_secs(600);

/// Where an isolated module is in its life.
pub(crate) enum Life {
    /// Started, `metric_init` not yet answered.
    Loading {
        process: ModuleProcess,
        since: Instant,
        /// Until when gmond's thread waits for the answer in the round
        /// that started the process (see [`FIRST_ANSWER_WAIT`]).
        answer_by: Instant,
    },
    /// Ready for a batch.
    Up(ModuleProcess),
    /// A batch ran past its deadline and has not answered yet.
    Busy {
        process: ModuleProcess,
        seq: u32,
        /// The metrics (engine indices) of the batch, in its order.
        calls: Vec<usize>,
        since: Instant,
        /// The metric whose call was running at the deadline.
        running: Option<usize>,
    },
    /// No process; the next starts at `retry_at`.
    Down { retry_at: Instant },
    /// Started again with other metrics than gmond registered: never called again.
    Refused,
}

/// One isolated module, as the engine keeps it.
pub(crate) struct IsolatedModule {
    pub(crate) life: Life,
    helper: PathBuf,
    /// The start request, used again for each restart.
    request: StartRequest,
    /// The registered metrics: engine index, name, type, and their
    /// position in the current process's list.
    registered: Vec<Registered>,
    /// Consecutive failed starts and crashes (for the back-off).
    attempts: u32,
    pub(crate) seq: u32,
    kill_after: Duration,
    init_timeout: Duration,
    positions: Vec<u32>,
    /// Metrics the module returned at start-up that gmond did not register
    /// (another module had defined the name): a restart may return them
    /// again without counting as a change.
    unregistered: HashSet<String>,
}

struct Registered {
    index: usize,
    name: String,
    value_type: ValueType,
    position: u32,
}

/// A module process starting up, before the engine knows its metrics'
/// indices (see [`start`]).
pub(crate) struct Starting {
    pub(crate) process: ModuleProcess,
    helper: PathBuf,
    request: StartRequest,
    /// The names of the metrics the process returned from `metric_init`.
    offered: Vec<String>,
}

/// What the engine is told about a change in a module's life, to count
/// and to apply.
pub(crate) enum Happened {
    Nothing,
    /// A late batch answered: its outcomes, for the engine to keep.
    LateResults {
        calls: Vec<usize>,
        outcomes: Vec<(WireOutcome, f32)>,
        running: Option<usize>,
        ran: Duration,
    },
    Restarted,
    Killed,
}

/// Passes a module process's log lines and loading problems on, as if the
/// module had run here; returns any other message.
pub(crate) fn forward(message: FromChild) -> Option<FromChild> {
    match message {
        FromChild::Log {
            level,
            module_output,
            text,
        } => {
            if module_output {
                log::log!(target: MODULE_LOG_TARGET, level, "{text}");
            } else {
                log::log!(level, "{text}");
            }
            None
        }
        FromChild::Diagnostic(d) => {
            report(d.level, d.module.as_ref(), d.metric.as_deref(), d.message);
            None
        }
        other => Some(other),
    }
}

/// The uid and gid of user `name`.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let c_name = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: getpwnam_r reads a NUL-terminated name and fills `pw` with
    // pointers into `buf`, all ours; we copy two integers out.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let r = libc::getpwnam_r(
            c_name.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        );
        (r == 0 && !found.is_null()).then_some((pw.pw_uid, pw.pw_gid))
    }
}

/// The user an isolated module runs as from the start (`modpython.user`).
fn resolve_user(name: &str) -> Result<(u32, u32), String> {
    lookup_user(name).ok_or_else(|| format!("modpython.user '{name}' is not a user on this system"))
}

/// The user module processes become right after `metric_init`: gmond's
/// `setuid` user, when gmond starts as root and drops to it after init.
pub(crate) fn user_after_init(gmond_user: Option<&str>) -> Option<(u32, u32)> {
    if euid() != 0 {
        return None;
    }
    let name = gmond_user?;
    let found = lookup_user(name);
    if found.is_none() {
        log::warn!(
            "gmond's user '{name}' is not a user on this system; isolated modules go on as root after metric_init until gmond's first call"
        );
    }
    found
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// An isolated module's process started at gmond's start-up, whose metrics
/// are not yet taken: every isolated module's process is started before
/// any is waited for, so that they load side by side (and beside gmond's
/// own imports of its in-process modules).
pub(crate) struct Spawned {
    process: ModuleProcess,
    helper: PathBuf,
    request: StartRequest,
}

/// Starts an isolated module's process at gmond's start-up; the loader
/// takes its metrics with [`Spawned::wait`] and registers them as it
/// would an in-process module's.
pub(crate) fn spawn_at_start(
    template: StartRequest,
    user: Option<&str>,
) -> Result<Spawned, String> {
    let helper = isolation::helper_path()?;
    let mut request = template;
    request.user = match user {
        Some(name) => {
            let (uid, gid) = resolve_user(name)?;
            if euid() != 0 && euid() != uid {
                return Err(format!(
                    "modpython.user '{name}' needs gmond to start as root, and it runs as uid {}; the module is skipped",
                    euid()
                ));
            }
            Some((uid, gid))
        }
        None => None,
    };
    // A module given a user of its own keeps it (it is never root, so it
    // has no more rights than gmond); one that runs as root follows gmond.
    if request.user.is_some_and(|(uid, _)| uid != 0) {
        request.then_user = None;
    }
    let process = spawn(&helper, &request)?;
    Ok(Spawned {
        process,
        helper,
        request,
    })
}

impl Spawned {
    /// Waits for the module's metrics, up to `init_timeout` from now: a
    /// module gets its whole deadline of gmond's attention, as when modules
    /// loaded one after the other, however long gmond was busy with others
    /// and however many loaded beside it (sharing the CPUs), so loading
    /// side by side never makes a module late that would not have been.
    pub(crate) fn wait(self) -> Result<(Starting, Vec<MetricDescriptor>), String> {
        let Spawned {
            mut process,
            helper,
            request,
        } = self;
        let until = Instant::now() + request.settings.init_timeout;
        let descriptors = loop {
            let event = match next_event_or_exit(&mut process, until) {
                // A stream of log lines does not hold gmond's start past the
                // deadline.
                Event::Message(message) => match forward(message) {
                    Some(FromChild::Loaded { descriptors }) => break descriptors,
                    Some(FromChild::LoadFailed { message }) => {
                        process.reap();
                        return Err(message);
                    }
                    _ if Instant::now() >= until => Event::Timeout,
                    _ => continue,
                },
                other => other,
            };
            match event {
                Event::Message(_) => {}
                Event::Closed => return Err(ended_while_loading(&mut process)),
                Event::Timeout => {
                    process.kill();
                    process.reap();
                    return Err(format!(
                        "import or metric_init did not finish within init_timeout ({:.0}s); its process was killed and the module is skipped",
                        request.settings.init_timeout.as_secs_f64()
                    ));
                }
            }
        };
        Ok((
            Starting {
                process,
                helper,
                request,
                offered: descriptors.iter().map(|d| d.name.clone()).collect(),
            },
            descriptors,
        ))
    }
}

fn spawn(helper: &std::path::Path, request: &StartRequest) -> Result<ModuleProcess, String> {
    let uid = request.user.map_or_else(euid, |(uid, _)| uid);
    ModuleProcess::spawn(
        helper,
        &request.module.name,
        &ToChild::Start(Box::new(request.clone())),
        uid,
    )
    .map_err(|e| format!("cannot start its process ({}): {e}", helper.display()))
}

/// How often a long wait for one message looks at whether the process has
/// exited: a child the module forked may hold the socket open after the
/// process itself died, and then the socket alone would not say so until
/// the deadline.
const EXIT_LOOK: Duration = Duration::from_millis(100);

/// The next event before `until`; `Closed` as soon as the process has
/// exited, whoever still holds its socket.
fn next_event_or_exit(process: &mut ModuleProcess, until: Instant) -> Event {
    loop {
        let event = process.next_event(Some((Instant::now() + EXIT_LOOK).min(until)));
        if !matches!(event, Event::Timeout) {
            return event;
        }
        if process.exited() {
            // All it wrote before it exited is in the socket by now (the
            // children it forked never write): that is read first, so a
            // last answer is not taken for a crash.
            return match process.next_event(None) {
                Event::Timeout => Event::Closed,
                event => event,
            };
        }
        if Instant::now() >= until {
            return Event::Timeout;
        }
    }
}

fn ended_while_loading(process: &mut ModuleProcess) -> String {
    let how = process
        .reap()
        .map_or_else(|| "did not end".to_owned(), |e| e.how());
    let traceback = process.crash_text();
    format!(
        "its process (pid {}) {how} during import or metric_init; the module is skipped{}",
        process.pid(),
        with_traceback(&traceback)
    )
}

fn with_traceback(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!("\n{text}")
    }
}

impl IsolatedModule {
    /// An isolated module whose process loaded at start-up; `registered`
    /// holds its metrics' engine indices and position in the process.
    pub(crate) fn new(
        starting: Starting,
        registered: impl Iterator<Item = (usize, MetricDescriptor, u32)>,
        kill_after: Duration,
    ) -> IsolatedModule {
        let init_timeout = starting.request.settings.init_timeout;
        let registered: Vec<Registered> = registered
            .map(|(index, d, position)| Registered {
                index,
                name: d.name,
                value_type: d.value_type,
                position,
            })
            .collect();
        let known: HashSet<&str> = registered.iter().map(|r| r.name.as_str()).collect();
        let unregistered = starting
            .offered
            .into_iter()
            .filter(|name| !known.contains(name.as_str()))
            .collect();
        IsolatedModule {
            life: Life::Up(starting.process),
            helper: starting.helper,
            request: starting.request,
            registered,
            attempts: 0,
            seq: 0,
            kill_after,
            init_timeout,
            positions: Vec::new(),
            unregistered,
        }
    }

    pub(crate) fn kill_after(&self) -> Duration {
        self.kill_after
    }

    fn position_of(&self, index: usize) -> Option<u32> {
        let first = self.registered.first()?.index;
        self.registered
            .get(index.checked_sub(first)?)
            .map(|r| r.position)
    }

    fn index_at(&self, position: usize) -> Option<usize> {
        self.registered
            .iter()
            .find(|r| r.position as usize == position)
            .map(|r| r.index)
    }

    /// Whether a batch can be sent now. Looks at what happened since the
    /// last round: late results, a crash, a hang past `kill_after`, a
    /// restart due or finished.
    pub(crate) fn ready(
        &mut self,
        id: &ModuleRef,
        names: &[std::sync::Arc<str>],
    ) -> (bool, Happened) {
        isolation::reap_unreaped();
        let life = std::mem::replace(&mut self.life, Life::Refused);
        let (life, happened) = self.next_life(life, id, names);
        self.life = life;
        (matches!(self.life, Life::Up(_)), happened)
    }

    fn next_life(
        &mut self,
        life: Life,
        id: &ModuleRef,
        names: &[std::sync::Arc<str>],
    ) -> (Life, Happened) {
        match life {
            Life::Up(mut process) => match drain(&mut process) {
                // A child the module forked may hold the socket open after
                // the process itself died: its exit is looked at too.
                Some(Event::Closed) => self.crashed(process, id, names, BETWEEN_CALLS),
                _ if process.exited() => self.crashed(process, id, names, BETWEEN_CALLS),
                _ => (Life::Up(process), Happened::Nothing),
            },
            Life::Busy {
                mut process,
                seq,
                calls,
                since,
                running,
            } => {
                let slice_end = Instant::now() + LOADING_SLICE;
                for _ in 0..DRAIN_MAX {
                    // Results that are partly here at kill_after are waited
                    // for a little: the process did answer.
                    let until = (since.elapsed() >= self.kill_after
                        && process.mid_message()
                        && Instant::now() < slice_end)
                        .then_some(slice_end);
                    match process.next_event(until) {
                        Event::Message(FromChild::Results { seq: s, outcomes }) if s == seq => {
                            if outcomes.len() != calls.len() {
                                return self.miscounted(process, id, outcomes.len(), calls.len());
                            }
                            return (
                                Life::Up(process),
                                Happened::LateResults {
                                    calls,
                                    outcomes,
                                    running,
                                    ran: since.elapsed(),
                                },
                            );
                        }
                        Event::Message(message) => {
                            forward(message);
                        }
                        Event::Closed => {
                            let during = self.during(&process, names);
                            return self.crashed(process, id, names, &during);
                        }
                        Event::Timeout => break,
                    }
                }
                if process.exited() {
                    let during = self.during(&process, names);
                    return self.crashed(process, id, names, &during);
                }
                if since.elapsed() < self.kill_after {
                    return (
                        Life::Busy {
                            process,
                            seq,
                            calls,
                            since,
                            running,
                        },
                        Happened::Nothing,
                    );
                }
                let during = self.during(&process, names);
                process.kill();
                let ended = process.reap();
                let traceback = process.crash_text();
                let ran = since.elapsed();
                self.down_after(
                    &process,
                    id,
                    running.map(|j| &*names[j]),
                    Happened::Killed,
                    |retry| {
                        format!(
                            "its process (pid {}) was killed: {during} had not returned after {:.1}s (kill_after){}; the module's metrics keep their last good values; it is started again in {:.0}s{}",
                            process.pid(),
                            ran.as_secs_f64(),
                            if ended.is_none() {
                                " (it has not died yet: a call stuck in the kernel ends when it leaves it)"
                            } else {
                                ""
                            },
                            retry.as_secs_f64(),
                            with_traceback(&traceback)
                        )
                    },
                )
            }
            Life::Loading {
                mut process,
                since,
                answer_by,
            } => {
                // The round that starts the process waits a little for its
                // answer (a small module loads in well under it), so that
                // it is called again in that round rather than the next.
                let slice_end = Instant::now().max(answer_by) + LOADING_SLICE;
                for _ in 0..DRAIN_MAX {
                    // A large module's metrics arrive in one message bigger
                    // than the socket's buffer: while it streams in, this
                    // round waits a little for the rest instead of taking
                    // one buffer's worth per round.
                    let now = Instant::now();
                    let until = if now < answer_by {
                        Some(answer_by)
                    } else {
                        (process.mid_message() && now < slice_end).then_some(slice_end)
                    };
                    match process.next_event(until) {
                        Event::Message(message) => match forward(message) {
                            Some(FromChild::Loaded { descriptors }) => {
                                return self.loaded_again(process, id, &descriptors);
                            }
                            Some(FromChild::LoadFailed { message }) => {
                                process.reap();
                                return self.down_after(
                                    &process,
                                    id,
                                    None,
                                    Happened::Nothing,
                                    |retry| {
                                        format!(
                                            "starting its process again failed: {message}; tried again in {:.0}s",
                                            retry.as_secs_f64()
                                        )
                                    },
                                );
                            }
                            _ => {}
                        },
                        Event::Closed => return self.died_loading(process, id),
                        Event::Timeout => break,
                    }
                }
                if process.exited() {
                    return self.died_loading(process, id);
                }
                if since.elapsed() < self.init_timeout {
                    return (
                        Life::Loading {
                            process,
                            since,
                            answer_by,
                        },
                        Happened::Nothing,
                    );
                }
                process.kill();
                process.reap();
                let init_timeout = self.init_timeout;
                self.down_after(&process, id, None, Happened::Nothing, |retry| {
                    format!(
                        "its restarted process did not finish import and metric_init within init_timeout ({:.0}s) and was killed; tried again in {:.0}s",
                        init_timeout.as_secs_f64(),
                        retry.as_secs_f64()
                    )
                })
            }
            Life::Down { retry_at } => {
                // gmond's rounds are not exactly one interval apart: one a
                // little early does not put the restart off a whole round.
                if Instant::now() + ROUND_SLACK < retry_at {
                    return (Life::Down { retry_at }, Happened::Nothing);
                }
                isolation::reap_unreaped();
                if let Some((uid, _)) = self.request.user {
                    if euid() != 0 && euid() != uid {
                        report(
                            Level::Error,
                            Some(id),
                            None,
                            format!(
                                "its process cannot be started again as modpython.user (uid {uid}): gmond runs as uid {} now; the module stays down until gmond is restarted",
                                euid()
                            ),
                        );
                        return (Life::Refused, Happened::Nothing);
                    }
                }
                match spawn(&self.helper, &self.request) {
                    Ok(process) => {
                        let life = Life::Loading {
                            process,
                            since: Instant::now(),
                            answer_by: first_answer_by(),
                        };
                        // Answered in this round for a small module; if
                        // not, a later round picks it up.
                        self.next_life(life, id, names)
                    }
                    Err(why) => {
                        self.attempts += 1;
                        let retry = backoff(self.attempts);
                        report(
                            Level::Error,
                            Some(id),
                            None,
                            format!("{why}; tried again in {:.0}s", retry.as_secs_f64()),
                        );
                        down_for(retry, Happened::Nothing)
                    }
                }
            }
            Life::Refused => (Life::Refused, Happened::Nothing),
        }
    }

    /// A restarted process ended before it answered `metric_init`.
    fn died_loading(&mut self, mut process: ModuleProcess, id: &ModuleRef) -> (Life, Happened) {
        let why = ended_while_loading(&mut process);
        let why = why.replace("; the module is skipped", "");
        self.down_after(&process, id, None, Happened::Nothing, |retry| {
            format!("{why}\nit is started again in {:.0}s", retry.as_secs_f64())
        })
    }

    /// A restarted process answered `metric_init`: it goes on only with
    /// the metrics gmond registered, each of the same type.
    fn loaded_again(
        &mut self,
        process: ModuleProcess,
        id: &ModuleRef,
        descriptors: &[MetricDescriptor],
    ) -> (Life, Happened) {
        let registered: Vec<(&str, ValueType)> = self
            .registered
            .iter()
            .map(|r| (r.name.as_str(), r.value_type))
            .collect();
        match match_descriptors(&registered, descriptors, &self.unregistered) {
            Ok(positions) => {
                for (r, p) in self.registered.iter_mut().zip(positions) {
                    r.position = p;
                }
                report(
                    Level::Warn,
                    Some(id),
                    None,
                    format!(
                        "its process was started again (pid {}); its metrics are called again",
                        process.pid()
                    ),
                );
                (Life::Up(process), Happened::Restarted)
            }
            Err(changes) => {
                drop(process);
                report(
                    Level::Error,
                    Some(id),
                    None,
                    format!(
                        "its restarted process returned other metrics from metric_init than gmond registered at start-up ({}); gmond's metric table cannot change after start-up, so the module is refused until gmond restarts, and its metrics keep their last good values",
                        changes.join("; ")
                    ),
                );
                (Life::Refused, Happened::Restarted)
            }
        }
    }

    /// "the call of metric 'x'", from the process's status page.
    fn during(&self, process: &ModuleProcess, names: &[std::sync::Arc<str>]) -> String {
        let (phase, position) = process.status().now();
        match phase {
            Status::CALLING => match position.and_then(|p| self.index_at(p)) {
                Some(j) => format!("the call of metric '{}'", names[j]),
                None => "a call of a metric gmond did not register".to_owned(),
            },
            Status::CLEANUP => "metric_cleanup".to_owned(),
            Status::LOADING => "import or metric_init".to_owned(),
            _ => BETWEEN_CALLS.to_owned(),
        }
    }

    fn crashed(
        &mut self,
        mut process: ModuleProcess,
        id: &ModuleRef,
        names: &[std::sync::Arc<str>],
        during: &str,
    ) -> (Life, Happened) {
        // What it wrote before it died (its last log lines) goes first.
        drain(&mut process);
        let ended = process.reap();
        let how = ended.map_or_else(|| "did not end".to_owned(), |e| e.how());
        let traceback = process.crash_text();
        let metric = process
            .status()
            .current_call()
            .and_then(|p| self.index_at(p));
        self.down_after(
            &process,
            id,
            metric.map(|j| &*names[j]),
            Happened::Nothing,
            |retry| {
                format!(
                    "its process (pid {}) {how} during {during}; the module's metrics keep their last good values; it is started again in {:.0}s{}",
                    process.pid(),
                    retry.as_secs_f64(),
                    with_traceback(&traceback)
                )
            },
        )
    }

    /// A batch answered with another number of outcomes than it had calls:
    /// they cannot be matched to metrics, and a process that does this
    /// (a `modpython-module` from another build than `modpython.so`, or
    /// one whose memory is corrupt) is stopped and started again.
    fn miscounted(
        &mut self,
        mut process: ModuleProcess,
        id: &ModuleRef,
        got: usize,
        wanted: usize,
    ) -> (Life, Happened) {
        process.kill();
        process.reap();
        self.down_after(&process, id, None, Happened::Nothing, |retry| {
            format!(
                "its process (pid {}) answered {got} result(s) to a batch of {wanted} call(s), which cannot be matched to metrics; it was killed and is started again in {:.0}s. If this repeats, check that {} is the one installed with this modpython.so",
                process.pid(),
                retry.as_secs_f64(),
                crate::isolation::HELPER_NAME
            )
        })
    }

    /// The one way a process's end is told and the module goes down: the
    /// back-off after `process`, the error line `say(retry)` (naming
    /// `metric` where one was running), and no process until then.
    fn down_after(
        &mut self,
        process: &ModuleProcess,
        id: &ModuleRef,
        metric: Option<&str>,
        happened: Happened,
        say: impl FnOnce(Duration) -> String,
    ) -> (Life, Happened) {
        let retry = self.back_off(process);
        report(Level::Error, Some(id), metric, say(retry));
        down_for(retry, happened)
    }

    fn back_off(&mut self, process: &ModuleProcess) -> Duration {
        if process.started.elapsed() >= STABLE_AFTER {
            self.attempts = 0;
        }
        self.attempts += 1;
        backoff(self.attempts)
    }

    /// Sends a batch and waits for its outcomes until `timeout`. Returns
    /// the outcomes in the batch's order, or what stopped them.
    pub(crate) fn call_batch(
        &mut self,
        id: &ModuleRef,
        names: &[std::sync::Arc<str>],
        calls: &[usize],
        timeout: Duration,
        timed: bool,
    ) -> BatchResult {
        let mut process = match std::mem::replace(&mut self.life, Life::Refused) {
            Life::Up(process) => process,
            other => {
                self.life = other;
                return BatchResult::NotReady;
            }
        };
        let started = Instant::now();
        // gmond dropped its privileges after init: the module process
        // follows before it makes another call, as in-process code would.
        if process.uid == 0 && euid() != 0 {
            // SAFETY: getegid has no preconditions.
            let gid = unsafe { libc::getegid() };
            let uid = euid();
            if process.send(&ToChild::BecomeUser { uid, gid }).is_ok() {
                process.uid = uid;
            }
        }
        let mut positions = std::mem::take(&mut self.positions);
        positions.clear();
        positions.extend(
            calls
                .iter()
                .map(|&j| self.position_of(j).unwrap_or(u32::MAX)),
        );
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let sent = process.send_calls(seq, timed, &positions);
        self.positions = positions;
        if sent.is_err() {
            let during = self.during(&process, names);
            let (life, _) = self.crashed(process, id, names, &during);
            self.life = life;
            return BatchResult::Crashed;
        }
        let until = started + timeout;
        loop {
            match process.next_event(Some(until)) {
                Event::Message(FromChild::Results { seq: s, outcomes }) if s == seq => {
                    if outcomes.len() != calls.len() {
                        let got = outcomes.len();
                        (self.life, _) = self.miscounted(process, id, got, calls.len());
                        return BatchResult::Crashed;
                    }
                    self.life = Life::Up(process);
                    return BatchResult::Done(outcomes);
                }
                Event::Message(message) => {
                    forward(message);
                    // A stream of log lines must not hold gmond past the
                    // deadline: past it, the batch is late.
                    if Instant::now() < until {
                        continue;
                    }
                }
                Event::Closed => {
                    let during = self.during(&process, names);
                    let (life, _) = self.crashed(process, id, names, &during);
                    self.life = life;
                    return BatchResult::Crashed;
                }
                Event::Timeout => {}
            }
            let running = process
                .status()
                .current_call()
                .and_then(|p| self.index_at(p));
            self.life = Life::Busy {
                process,
                seq,
                calls: calls.to_vec(),
                since: started,
                running,
            };
            return BatchResult::Late { running };
        }
    }

    /// Asks the process to run `metric_cleanup()` and exit; what cannot
    /// (still loading) is killed.
    pub(crate) fn begin_cleanup(&mut self) {
        match &mut self.life {
            Life::Up(process) | Life::Busy { process, .. } => {
                if process.send(&ToChild::Cleanup).is_err() {
                    process.kill();
                }
            }
            Life::Loading { process, .. } => process.kill(),
            Life::Down { .. } | Life::Refused => {}
        }
    }

    /// Waits until `until` for the process to finish its cleanup, then
    /// makes sure it is gone.
    pub(crate) fn finish_cleanup(
        &mut self,
        id: &ModuleRef,
        names: &[std::sync::Arc<str>],
        until: Instant,
    ) {
        let mut process = match std::mem::replace(&mut self.life, Life::Refused) {
            Life::Up(process) | Life::Busy { process, .. } => process,
            // Killed by `begin_cleanup` in the middle of its import or
            // metric_init: there is nothing to clean up.
            Life::Loading { mut process, .. } => {
                process.reap();
                return;
            }
            Life::Down { .. } | Life::Refused => return,
        };
        let mut ended_early = None;
        loop {
            let event = match next_event_or_exit(&mut process, until) {
                Event::Message(FromChild::CleanedUp) => break,
                Event::Closed => {
                    // Before it said it had finished: read while its
                    // status page still says what it was doing.
                    ended_early = Some(self.during(&process, names));
                    break;
                }
                Event::Message(message) => {
                    forward(message);
                    // Log lines streaming in do not hold gmond's stop.
                    if Instant::now() < until {
                        continue;
                    }
                    Event::Timeout
                }
                other => other,
            };
            if let Event::Timeout = event {
                report(
                    Level::Error,
                    Some(id),
                    None,
                    format!(
                        "its process (pid {}) did not finish metric_cleanup in time and is killed",
                        process.pid()
                    ),
                );
                process.kill();
                break;
            }
        }
        // Exits on its own right after CleanedUp; killed if it lingers.
        let ended = process.reap();
        let Some(during) = ended_early else {
            return;
        };
        if let Some(ended) = ended.filter(Ended::is_crash) {
            let traceback = process.crash_text();
            report(
                Level::Error,
                Some(id),
                None,
                format!(
                    "its process (pid {}) {} during {during}{}",
                    process.pid(),
                    ended.how(),
                    with_traceback(&traceback)
                ),
            );
        }
    }
}

/// What became of a batch sent to a module process.
pub(crate) enum BatchResult {
    Done(Vec<(WireOutcome, f32)>),
    /// Past the deadline; `running` is the metric whose call was running.
    Late {
        running: Option<usize>,
    },
    Crashed,
    NotReady,
}

/// Reads what arrived without waiting: log lines are passed on; returns
/// `Closed` if the process ended.
fn drain(process: &mut ModuleProcess) -> Option<Event> {
    // Bounded: the rest waits for the next round.
    for _ in 0..DRAIN_MAX {
        match process.next_event(None) {
            Event::Message(message) => {
                forward(message);
            }
            Event::Closed => return Some(Event::Closed),
            Event::Timeout => return None,
        }
    }
    None
}

/// Messages read from a module process in one look between batches.
const DRAIN_MAX: usize = 200;

/// No process until `retry` has passed.
fn down_for(retry: Duration, happened: Happened) -> (Life, Happened) {
    (
        Life::Down {
            retry_at: Instant::now() + retry,
        },
        happened,
    )
}

/// The wait before the `attempts`-th restart.
fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.saturating_sub(1).min(6)).min(RESTART_BACKOFF_MAX)
}

/// An outcome from a module process, as the engine applies it.
pub(crate) fn outcome(wire: WireOutcome) -> Outcome {
    match wire {
        WireOutcome::Value(v) => Outcome::Value(v),
        WireOutcome::Raised { summary, detail } => {
            Outcome::Failed(Failed::Raised { summary, detail })
        }
        WireOutcome::Conversion(why) => Outcome::Failed(Failed::Value(ConversionError(why))),
    }
}

/// The positions, in a restarted process's list, of the metrics gmond
/// registered (by name and type), or what changed.
pub(crate) fn match_descriptors(
    registered: &[(&str, ValueType)],
    new: &[MetricDescriptor],
    unregistered: &HashSet<String>,
) -> Result<Vec<u32>, Vec<String>> {
    // By name, so that a module with 10,000 metrics restarts in
    // milliseconds on gmond's thread, not in a quadratic half second.
    let mut by_name: HashMap<&str, usize> = HashMap::with_capacity(new.len());
    for (p, d) in new.iter().enumerate() {
        by_name.entry(d.name.as_str()).or_insert(p);
    }
    let mut changes = Vec::new();
    let mut positions = Vec::with_capacity(registered.len());
    for (name, value_type) in registered {
        match by_name.get(name) {
            Some(&p) if new[p].value_type == *value_type => positions.push(p as u32),
            Some(&p) => changes.push(format!(
                "metric '{name}' was {}, now {}",
                value_type.as_str(),
                new[p].value_type.as_str()
            )),
            None => changes.push(format!("metric '{name}' is gone")),
        }
    }
    let known: HashSet<&str> = registered.iter().map(|(name, _)| *name).collect();
    for d in new {
        if !known.contains(d.name.as_str()) && !unregistered.contains(&d.name) {
            changes.push(format!("metric '{}' is new", d.name));
        }
    }
    if changes.is_empty() {
        Ok(positions)
    } else {
        Err(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(name: &str, value_type: ValueType) -> MetricDescriptor {
        MetricDescriptor {
            name: name.into(),
            value_type,
            time_max: 60,
            units: String::new(),
            slope: "both".into(),
            format: "%u".into(),
            description: String::new(),
            groups: Vec::new(),
            extra: Vec::new(),
            callback_key: "call_back".into(),
        }
    }

    #[test]
    fn the_same_metrics_in_another_order_match() {
        let registered = [("a", ValueType::Uint), ("b", ValueType::Float)];
        let new = [d("b", ValueType::Float), d("a", ValueType::Uint)];
        assert_eq!(
            match_descriptors(&registered, &new, &HashSet::new()),
            Ok(vec![1, 0])
        );
    }

    #[test]
    fn changes_are_named() {
        let registered = [("a", ValueType::Uint), ("b", ValueType::Float)];
        let new = [d("a", ValueType::Double), d("c", ValueType::Uint)];
        assert_eq!(
            match_descriptors(&registered, &new, &HashSet::new()),
            Err(vec![
                "metric 'a' was uint, now double".to_owned(),
                "metric 'b' is gone".to_owned(),
                "metric 'c' is new".to_owned(),
            ])
        );
    }

    #[test]
    fn metrics_gmond_refused_at_start_up_may_come_back() {
        // 'b' was defined by another module first, so gmond registered
        // only 'a'; the restarted process returns both again.
        let registered = [("a", ValueType::Uint)];
        let new = [d("b", ValueType::Uint), d("a", ValueType::Uint)];
        let refused: HashSet<String> = ["b".to_owned()].into();
        assert_eq!(match_descriptors(&registered, &new, &refused), Ok(vec![1]));
        let other = [d("a", ValueType::Uint), d("c", ValueType::Uint)];
        assert_eq!(
            match_descriptors(&registered, &other, &refused),
            Err(vec!["metric 'c' is new".to_owned()])
        );
    }

    #[test]
    fn back_off_doubles_up_to_a_minute() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
