//! The call engine: everything about making a module's calls that does not
//! depend on gmond, shared by the host (`host`, gmond's `handler`) and
//! `modpython-check` (`check`), so that both follow one set of rules:
//!
//! * start-up in gmond's order: signals remembered, Python started, the
//!   deadline handler installed, modules loaded ([`Engine::start`]);
//! * call targets, and the labels the watchdog names calls by;
//! * batches: a module's metrics that one collection group collects are
//!   called together on the first call of a round ([`crate::collection`]);
//! * the call modes and their deadlines ([`worker`] for protected calls,
//!   [`inline`] for inline ones);
//! * stuck calls, Python's GIL held by somebody else, back-off
//!   ([`failures`]), and late values;
//! * the modules' cleanup under [`cleanup::CLEANUP_DEADLINE`].
//!
//! The caller asks for one metric at a time, in gmond's order
//! ([`Engine::collect`]), and gets the value to publish; an [`Observer`]
//! hears of each call and of each metric not called, for a report.
//!
//! The engine lives on the thread that started it (gmond's main thread):
//! workers hand their results back to it.

pub mod call;
pub mod cleanup;
pub mod failures;
pub mod inline;
pub mod isolated;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use crate::clock;
use crate::collection::{self, Plan};
use crate::descriptor::MetricDescriptor;
use crate::gmond_config::{CollectedMetric, ModuleBlock};
use crate::isolation;
use crate::python::loader::report;
use crate::python::{self, interrupt, loader};
use crate::self_metrics::{self, SelfMetric, Stats};
use crate::settings::{self, CallMode, HostSettings};
use crate::value::{Kept, Value};
use call::{CallTarget, Failed, Outcome, Targets};
use failures::{Subject, Trouble};
use isolated::{BatchResult, Happened, IsolatedModule};
use log::Level;
use worker::{BatchEnd, Stuck, Worker};

/// While one module's metrics are called one after another, gmond's signal
/// handlers are checked (a few system calls) after a batch at most this often.
const SIGNAL_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How long a call may wait for the GIL once a call of ours is known to be
/// stuck: a free GIL is had within Python's switch interval (5 ms). Past
/// this, the GIL is taken to be held (by the stuck call, most likely) and
/// the calls are not made, rather than cost each module a whole deadline.
pub const GIL_GRACE: Duration = Duration::from_millis(50);

/// What the engine needs to start.
pub struct StartInput {
    /// The module directory, already checked.
    pub dir: PathBuf,
    pub settings: HostSettings,
    /// Every `module { … }` block of the configuration.
    pub blocks: Vec<ModuleBlock>,
    /// Owners allowed for module code (see `permissions`).
    pub trusted_uids: Vec<u32>,
    /// Every `collection_group { metric { … } }` entry.
    pub collected: Vec<CollectedMetric>,
    /// gmond's debug level (module debug lines show above 1).
    pub debug_level: i32,
    /// Time each call (for a report; gmond's calls read no clock per call).
    pub timed: bool,
    /// The user gmond drops to after init (`globals { setuid user }`), which
    /// isolated modules follow.
    pub gmond_user: Option<String>,
}

/// A started engine and what its caller publishes.
pub struct Started {
    pub engine: Engine,
    /// The Python metrics' descriptors (by index), then the host's own.
    pub descriptors: Vec<MetricDescriptor>,
    /// The host's own metrics, after the Python ones.
    pub self_metrics: Vec<SelfMetric>,
    /// Modules that failed to load.
    pub failed: Vec<loader::ModuleRef>,
}

/// Why a metric was not called when its round came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Backed off after failing calls.
    BackedOff,
    /// An earlier call of its module has not returned.
    ModuleStuck,
    /// Python's GIL is held by somebody else.
    NoGil,
    /// A call before it in its batch ran late; it waits for the next round.
    AfterLateCall,
    /// Its module's process is down: crashed, killed, or starting again
    /// (isolated modules).
    ModuleDown,
}

/// Hears what the engine does; every method has a default that does
/// nothing, so gmond's path pays nothing for it.
pub trait Observer {
    /// A call was made; `seconds` is its run time when the engine times
    /// calls. Late results of stuck calls are not reported.
    fn called(&mut self, _index: usize, _outcome: &Outcome, _seconds: f32) {}
    /// A metric was not called this round.
    fn skipped(&mut self, _index: usize, _why: Skip) {}
}

/// Observes nothing (gmond's calls).
pub struct Unobserved;

impl Observer for Unobserved {}

/// Per-metric run-time state: all of the engine's that a call touches, in
/// one place and small (gmond calls thousands of metrics a round, and at
/// that count memory traffic is most of the cost of a call).
struct MetricState {
    /// What gmond gets: the value of the last successful call, or zero of
    /// the metric's type before the first. A failed, late or skipped call
    /// leaves it as it is.
    current: Kept,
    /// Present while calls fail (rare, so boxed).
    failure: Option<Box<Trouble>>,
    module: u32,
    /// Whether a call has ever succeeded.
    has_good: bool,
    /// Whether this round's value has been made (in a batch started by a
    /// sibling's call) and not yet taken. A call of a metric that is not
    /// fresh starts the next round of its batch.
    fresh: bool,
}

const _: () = assert!(std::mem::size_of::<MetricState>() <= 32);

/// Per-module run-time state.
struct ModuleState {
    id: loader::ModuleRef,
    mode: CallMode,
    timeout: Duration,
    /// A call the engine stopped waiting for: until it returns, this
    /// module's metrics keep their last good values without being called.
    stuck: Option<Stuck>,
    stats: Stats,
    /// Time spent in calls, in ns of the monotonic clock: the clock the
    /// deadlines are kept by, so a call given up on at its deadline counts
    /// at least the whole deadline (the counter's learnt rate can be off
    /// by a part in a thousand while NTP slews the clock). Read at a batch's
    /// start and end, not per call, so the precise clock costs nothing that
    /// shows.
    call_ns: u64,
    /// Its process, when the module is isolated.
    isolated: Option<Box<IsolatedModule>>,
}

/// Python's GIL found held: no call can start until it is released.
struct GilHold {
    since: Instant,
    /// The worker's count of GIL acquisitions when it could not get it: a
    /// higher count means it got the GIL since, and the hold is over.
    taken: u64,
}

/// The calls of one round: a whole batch, or those of it that are due.
enum Calls {
    Batch(Arc<[usize]>),
    Some(Vec<usize>),
}

impl std::ops::Deref for Calls {
    type Target = [usize];

    fn deref(&self) -> &[usize] {
        match self {
            Calls::Batch(batch) => batch,
            Calls::Some(list) => list,
        }
    }
}

#[derive(Clone, Copy)]
enum SignalCheck {
    BeforeCalling,
    AfterCalling,
}

pub struct Engine {
    modules: Vec<loader::LoadedModule>,
    module_states: Vec<ModuleState>,
    modules_failed: usize,
    metrics: Vec<MetricState>,
    /// The metrics' names, by index (only messages need them).
    names: Vec<Arc<str>>,
    /// How many metrics are backed off (their failure has a `retry_at`):
    /// while none are, a round need not look at each one's failure.
    backed_off: usize,
    /// How many modules have a stuck call.
    stuck: usize,
    gil_hold: Option<GilHold>,
    targets: Targets,
    /// How the collection groups select the metrics, and the batches that
    /// follow from it.
    plan: Plan,
    /// Makes protected calls; replaced when it gets stuck.
    worker: Option<Worker>,
    settings: HostSettings,
    timed: bool,
    cleaned_up: bool,
    /// The module (and metric) called last, which gets the blame for a
    /// signal handler found changed before the next module's call.
    last_called: Option<(usize, usize)>,
    /// When gmond's signal handlers were last checked ([`clock::coarse_ns`]).
    last_signal_check: u64,
    /// Reused for each batch's list of calls.
    calls_scratch: Vec<usize>,
}

impl Engine {
    /// Starts Python and loads the modules, in gmond's order: signals
    /// remembered before any Python code runs, the interpreter, the
    /// deadline handler, then each module's import and `metric_init`.
    pub fn start(input: StartInput) -> Result<Started, String> {
        let StartInput {
            dir,
            settings,
            blocks,
            trusted_uids,
            collected,
            debug_level,
            timed,
            gmond_user,
        } = input;
        crate::signals::remember_gmond_handlers();
        crate::signals::defuse_stray_signals();
        python::start(debug_level)?;
        python::stdio::set_stdout(settings.module_stdout);
        crate::signals::restore_if_changed("starting Python");
        Python::attach(interrupt::install)
            .map_err(|e| format!("cannot set up call deadlines: {e}"))?;
        crate::fatal_signal::install(inline_call);

        isolation::adopt_earlier_processes();
        let then_user = isolated::user_after_init(gmond_user.as_deref());
        let starting: std::cell::RefCell<Vec<(String, isolated::Starting)>> = Default::default();
        let isolate = |id: &loader::ModuleRef,
                       block: &ModuleBlock,
                       overrides: &settings::ModuleOverrides|
         -> Result<loader::PendingLoad<'_>, String> {
            let template = isolation::protocol::StartRequest {
                parent_pid: std::process::id(),
                dir: dir.clone(),
                module: id.clone(),
                block: block.clone(),
                settings: settings.clone(),
                trusted_uids: trusted_uids.clone(),
                debug_level,
                user: None,
                then_user,
                memory_limit: overrides.memory_limit,
            };
            let spawned = isolated::spawn_at_start(template, overrides.user.as_deref())?;
            let starting = &starting;
            let name = id.name.clone();
            let wait: loader::PendingLoad<'_> = Box::new(move || {
                // Waited for without the GIL held: its log lines reach
                // gmond's log meanwhile.
                let (process, descriptors) = Python::attach(|py| py.detach(|| spawned.wait()))?;
                starting.borrow_mut().push((name, process));
                Ok(descriptors)
            });
            Ok(wait)
        };
        let options = loader::LoadOptions {
            settings: &settings,
            trusted_uids: trusted_uids.clone(),
            isolate: Some(&isolate),
            only: None,
        };
        let loaded = Python::attach(|py| loader::load_all(py, &dir, &blocks, &options))?;
        let mut starting = starting.into_inner();

        let mut module_states: Vec<ModuleState> = loaded
            .modules
            .iter()
            .map(|m| {
                let (mode, timeout) = settings::effective(&settings, &m.overrides);
                ModuleState {
                    id: m.id.clone(),
                    mode,
                    timeout,
                    stuck: None,
                    stats: Stats::default(),
                    call_ns: 0,
                    isolated: None,
                }
            })
            .collect();
        let module_names: Vec<Arc<str>> = loaded
            .modules
            .iter()
            .map(|m| Arc::from(m.id.name.as_str()))
            .collect();
        for (i, state) in module_states.iter_mut().enumerate() {
            let Some(at) = starting.iter().position(|(name, _)| *name == state.id.name) else {
                continue;
            };
            let (_, process) = starting.swap_remove(at);
            let kill_after = loaded.modules[i]
                .overrides
                .kill_after
                .unwrap_or(settings.kill_after)
                .max(state.timeout);
            let registered = loaded
                .metrics
                .iter()
                .enumerate()
                .filter(|(_, m)| m.module == i)
                .map(|(index, m)| (index, m.descriptor.clone(), m.position));
            state.isolated = Some(Box::new(IsolatedModule::new(
                process, registered, kill_after,
            )));
        }
        let count = loaded.metrics.len();
        let mut descriptors: Vec<MetricDescriptor> = Vec::with_capacity(count);
        let mut targets = Vec::with_capacity(count);
        let mut metrics = Vec::with_capacity(count);
        let mut names: Vec<Arc<str>> = Vec::with_capacity(count);
        for m in loaded.metrics {
            names.push(m.descriptor.name.as_str().into());
            metrics.push(MetricState {
                current: Kept::zero(m.descriptor.value_type),
                failure: None,
                module: m.module as u32,
                has_good: false,
                fresh: false,
            });
            targets.push(CallTarget {
                module_name: Arc::clone(&module_names[m.module]),
                callback: m.callback,
                py_name: m.py_name,
                value_type: m.descriptor.value_type,
            });
            descriptors.push(m.descriptor);
        }
        let mut own_metrics = Vec::new();
        if settings.self_metrics {
            let module_list: Vec<String> =
                loaded.modules.iter().map(|m| m.id.name.clone()).collect();
            for (metric, descriptor) in self_metrics::all(&module_list) {
                if descriptors.iter().any(|d| d.name == descriptor.name) {
                    log::warn!(
                        "a Python module already defines '{}'; modpython's own metric of that name is left out",
                        descriptor.name
                    );
                    continue;
                }
                own_metrics.push(metric);
                descriptors.push(descriptor);
            }
        }

        let message = format!(
            "{} Python module(s) loaded from {} with {} metric(s){}",
            loaded.modules.len(),
            dir.display(),
            metrics.len(),
            if loaded.failed.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} module(s) failed: {}",
                    loaded.failed.len(),
                    loaded
                        .failed
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
        if loaded.failed.is_empty() {
            log::info!("{message}");
        } else {
            log::warn!("{message}");
        }
        let labels = Arc::new(interrupt::Labels {
            modules: module_states.iter().map(|m| m.id.to_string()).collect(),
            metrics: metrics
                .iter()
                .zip(&names)
                .map(|(m, name)| (m.module, Arc::clone(name)))
                .collect(),
        });
        // The watchdog and the fatal-signal handler name calls alike.
        crate::fatal_signal::publish_names(&labels.modules, &labels.metrics);
        interrupt::set_metric_labels(labels);
        let plan = Python::attach(|py| {
            let python_metrics: Vec<(usize, &str)> = metrics
                .iter()
                .zip(&names)
                .map(|(m, n)| (m.module as usize, &**n))
                .collect();
            // gmond tells exact names from prefixes among all it
            // registered, the host's own metrics included.
            let own: Vec<&str> = descriptors[count..]
                .iter()
                .map(|d| d.name.as_str())
                .collect();
            collection::plan(py, &python_metrics, &own, &collected)
        });
        let targets: Targets = Arc::new(targets);
        let worker = if module_states.iter().any(|m| m.mode == CallMode::Protected) {
            Some(spawn_worker(&targets, timed)?)
        } else {
            None
        };
        let engine = Engine {
            modules: loaded.modules,
            module_states,
            modules_failed: loaded.failed.len(),
            metrics,
            names,
            backed_off: 0,
            stuck: 0,
            gil_hold: None,
            targets,
            plan,
            worker,
            settings,
            timed,
            cleaned_up: false,
            last_called: None,
            last_signal_check: clock::coarse_ns(),
            calls_scratch: Vec::new(),
        };
        Ok(Started {
            engine,
            descriptors,
            self_metrics: own_metrics,
            failed: loaded.failed,
        })
    }

    /// How gmond's collection groups select the Python metrics.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// How many Python metrics there are (their indices come first).
    pub fn metric_count(&self) -> usize {
        self.metrics.len()
    }

    pub fn modules(&self) -> impl Iterator<Item = &loader::ModuleRef> {
        self.module_states.iter().map(|m| &m.id)
    }

    /// The module (index into [`Engine::modules`]) of a metric.
    pub fn module_of(&self, index: usize) -> usize {
        self.metrics[index].module as usize
    }

    /// Each module's call mode and deadline, in load order.
    pub fn call_settings(&self) -> impl Iterator<Item = (CallMode, Duration)> + '_ {
        self.module_states.iter().map(|m| (m.mode, m.timeout))
    }

    pub fn modules_failed(&self) -> usize {
        self.modules_failed
    }

    /// Each module's counters, in load order.
    pub fn stats(&self, out: &mut Vec<Stats>) {
        out.clear();
        out.extend(self.module_states.iter().map(|m| Stats {
            seconds: m.call_ns as f64 / 1e9,
            ..m.stats
        }));
    }

    /// The value gmond gets for `index` now, without a call.
    pub fn current(&self, index: usize) -> Option<&Kept> {
        self.metrics.get(index).map(|m| &m.current)
    }

    /// gmond's call of metric `index`: its value for this round. The first
    /// call of a round makes the calls of the whole batch (one hand-off to
    /// the worker, or one acquisition of the GIL), and the calls of the
    /// others just take their values. This is the path of almost every
    /// call: keep it short.
    #[inline]
    pub fn collect<O: Observer>(&mut self, index: usize, observer: &mut O) -> &Kept {
        if self.metrics[index].fresh {
            self.metrics[index].fresh = false;
        } else {
            self.make_calls(index, observer);
        }
        &self.metrics[index].current
    }

    /// Makes this round's calls of `index` and of the siblings of its batch
    /// (or of `index` alone), and applies their outcomes. Siblings that are
    /// not called now — backed off, their module stuck, the GIL held, or
    /// left after a late call — keep their value for this round.
    #[cold]
    fn make_calls<O: Observer>(&mut self, index: usize, observer: &mut O) {
        let module = self.metrics[index].module as usize;
        let ready = self.module_ready(module);
        let calls = match self.plan.batch_of[index] {
            // The usual round: the whole batch, as it is (each call's
            // outcome marks its metric fresh).
            Some(b) if ready && self.backed_off == 0 => {
                Calls::Batch(Arc::clone(&self.plan.batches[b]))
            }
            _ => Calls::Some(self.calls_due(index, ready, observer)),
        };
        if calls.is_empty() {
            if let Calls::Some(list) = calls {
                self.calls_scratch = list;
            }
            return;
        }
        if self.module_states[module].isolated.is_some() {
            // No module code runs in gmond: no GIL, no signals to check.
            self.isolated_calls(module, index, &calls, observer);
            self.finish_calls(calls);
            return;
        }
        self.check_signals(module, SignalCheck::BeforeCalling);
        let (mode, timeout) = {
            let state = &self.module_states[module];
            (state.mode, state.timeout)
        };
        // Taken out while it works, so the outcomes can be applied as they come.
        let Ok(worker) = self.worker_for_mode(mode) else {
            self.not_called(index, &calls, Skip::NoGil, observer);
            self.finish_calls(calls);
            return;
        };
        // Calls made on the worker while in doubt about the GIL (an inline
        // module's too) have a protected call's deadline and report.
        let mode = if worker.is_some() {
            CallMode::Protected
        } else {
            mode
        };
        let started = clock::monotonic_ns();
        let mut made = 0;
        let end = match worker {
            Some(worker) => {
                let gil_wait = if self.in_doubt() {
                    GIL_GRACE.min(timeout)
                } else {
                    timeout
                };
                let end = worker.call_batch(&calls, timeout, gil_wait, |j, outcome, seconds| {
                    made += 1;
                    observer.called(j, &outcome, seconds);
                    self.apply(index, j, outcome, mode, timeout);
                });
                match end {
                    // A stuck worker stays with its call and ends when it
                    // returns; a lost one is replaced on the next call.
                    BatchEnd::Stuck(_) | BatchEnd::Lost => {}
                    BatchEnd::Done => self.worker = Some(worker),
                    BatchEnd::NoGil { waited, taken } => {
                        if self.gil_hold.is_none() {
                            self.log_gil_hold(waited);
                        }
                        self.gil_hold = Some(GilHold {
                            since: self.gil_hold.as_ref().map_or_else(
                                || {
                                    Instant::now()
                                        .checked_sub(waited)
                                        .unwrap_or_else(Instant::now)
                                },
                                |h| h.since,
                            ),
                            taken,
                        });
                        self.worker = Some(worker);
                    }
                }
                end
            }
            None => {
                let targets = Arc::clone(&self.targets);
                inline::call_batch(
                    &targets,
                    &calls,
                    timeout,
                    self.timed,
                    |j, outcome, seconds| {
                        made += 1;
                        observer.called(j, &outcome, seconds);
                        self.apply(index, j, outcome, mode, timeout);
                    },
                );
                BatchEnd::Done
            }
        };
        self.module_states[module].call_ns += clock::monotonic_ns().saturating_sub(started);
        match end {
            BatchEnd::NoGil { .. } => {
                self.not_called(index, &calls, Skip::NoGil, observer);
            }
            BatchEnd::Lost => {
                report(
                    Level::Error,
                    Some(&self.module_states[module].id),
                    None,
                    "the thread making protected calls ended unexpectedly (an internal error; please report it); the module's calls are made again next round".to_owned(),
                );
                self.not_called_after(index, &calls, made, Skip::AfterLateCall, observer);
            }
            BatchEnd::Stuck(stuck) if made >= calls.len() => {
                // Every call returned; what hangs is module code the worker
                // ran after them (the release of a trace or profile hook).
                report(
                    Level::Error,
                    Some(&self.module_states[module].id),
                    None,
                    format!(
                        "code the module left behind after its call of metric '{}' (a trace or profile hook, or an object it released) did not return within {:.1}s; the module's metrics are not called until it does",
                        self.names[stuck.index],
                        timeout.as_secs_f64()
                    ),
                );
                self.module_states[module].stuck = Some(stuck);
                self.stuck += 1;
            }
            BatchEnd::Stuck(stuck) => {
                let j = stuck.index;
                let ran = stuck.run_time();
                let metric = &self.metrics[j];
                // Once per spell of trouble: a handler that hangs now and
                // then is summarised with its other failures.
                let say = metric.failure.as_ref().is_none_or(|t| !t.stuck_logged);
                if say {
                    report(
                        Level::Error,
                        Some(&self.module_states[module].id),
                        Some(&self.names[j]),
                        format!(
                            "metric '{}' did not return within {:.1}s; {}; the call is left to finish in the background and the module's metrics are not called until it does",
                            self.names[j],
                            timeout.as_secs_f64(),
                            failures::kept(metric.has_good, matches!(metric.current, Kept::Str(_)))
                        ),
                    );
                }
                observer.called(j, &Outcome::TimedOut(ran), ran.as_secs_f32());
                self.apply(index, j, Outcome::TimedOut(ran), mode, timeout);
                if let Some(t) = &mut self.metrics[j].failure {
                    t.stuck_logged = true;
                }
                self.module_states[module].stuck = Some(stuck);
                self.stuck += 1;
                let after = calls.iter().position(|&c| c == j).map_or(made, |p| p + 1);
                self.not_called_after(index, &calls, after, Skip::ModuleStuck, observer);
            }
            BatchEnd::Done => {
                if made < calls.len() {
                    // Cut short by a late inline call.
                    self.not_called_after(index, &calls, made, Skip::AfterLateCall, observer);
                }
            }
        }
        self.finish_calls(calls);
        self.last_called = Some((module, index));
        self.check_signals(module, SignalCheck::AfterCalling);
    }

    fn finish_calls(&mut self, calls: Calls) {
        if let Calls::Some(list) = calls {
            self.calls_scratch = list;
        }
    }

    /// The calls of `calls` from position `from` on were not made: they
    /// keep their values this round.
    fn not_called_after<O: Observer>(
        &mut self,
        trigger: usize,
        calls: &[usize],
        from: usize,
        why: Skip,
        observer: &mut O,
    ) {
        for &j in calls.get(from..).unwrap_or_default() {
            self.metrics[j].fresh = j != trigger;
            observer.skipped(j, why);
        }
    }

    fn not_called<O: Observer>(
        &mut self,
        trigger: usize,
        calls: &[usize],
        why: Skip,
        observer: &mut O,
    ) {
        self.not_called_after(trigger, calls, 0, why, observer);
    }

    /// Whether a thread of ours might hold the GIL now, or has been seen to.
    fn in_doubt(&self) -> bool {
        self.stuck > 0 || self.gil_hold.is_some()
    }

    /// The worker to make this batch's calls, taken out, or `None` for
    /// calls on this thread (inline); `Err` when no call can be made
    /// because the GIL is held. With no call of ours stuck and no hold
    /// seen, inline calls run here and nothing is checked (the usual case
    /// costs nothing). In doubt, every call goes to the worker, inline
    /// modules' too: this thread (gmond's) must never wait for the GIL,
    /// which has no deadline, and a worker's wait for it does. While a hold
    /// lasts, nothing is asked of the worker until it has had the GIL since
    /// (or is not even waiting for it: then it is asked again).
    fn worker_for_mode(&mut self, mode: CallMode) -> Result<Option<Worker>, ()> {
        if self.stuck > 0 {
            // A stuck call of another module may have returned: while one
            // is stuck every call is in doubt, so find out now rather than
            // when that module's own metric comes round.
            for m in 0..self.module_states.len() {
                if self.module_states[m].stuck.is_some() {
                    self.module_ready(m);
                }
            }
        }
        if !self.in_doubt() {
            return Ok(match mode {
                CallMode::Protected => self.worker_for_calls(),
                // Isolated calls never come here (see make_calls).
                CallMode::Inline | CallMode::Isolated => None,
            });
        }
        let Some(worker) = self.worker_for_calls() else {
            return Err(());
        };
        if let Some(hold) = &self.gil_hold {
            if worker.gil_taken() > hold.taken {
                report(
                    Level::Warn,
                    None,
                    None,
                    format!(
                        "Python's GIL is free again after {:.1}s; calls resume",
                        hold.since.elapsed().as_secs_f64()
                    ),
                );
                self.gil_hold = None;
            } else if worker.wants_gil() {
                self.worker = Some(worker);
                return Err(());
            }
        }
        Ok(Some(worker))
    }

    /// The worker for the calls about to be made (started again if the
    /// last one got stuck), if a module calls in protected mode or a call
    /// is stuck.
    fn worker_for_calls(&mut self) -> Option<Worker> {
        if self.worker.as_ref().is_some_and(Worker::exited) {
            self.worker = None;
        }
        if self.worker.is_none() {
            match spawn_worker(&self.targets, self.timed) {
                Ok(w) => {
                    // A hold is judged by the worker's own count of GIL
                    // acquisitions: a new worker's starts at 0.
                    if let Some(hold) = &mut self.gil_hold {
                        hold.taken = 0;
                    }
                    self.worker = Some(w);
                }
                Err(e) => log::error!("{e}; the call is made on gmond's thread instead"),
            }
        }
        self.worker.take()
    }

    fn log_gil_hold(&self, waited: Duration) {
        let holder = self
            .module_states
            .iter()
            .find_map(|m| {
                let stuck = m.stuck.as_ref()?;
                Some(format!(
                    "most likely {}: metric '{}', whose call has run for {:.1}s",
                    m.id,
                    self.names[stuck.index],
                    stuck.run_time().as_secs_f64()
                ))
            })
            .unwrap_or_else(|| {
                "a thread outside modpython's calls (a module's own thread, or a C extension that does not release it)".to_owned()
            });
        report(
            Level::Warn,
            None,
            None,
            format!(
                "Python's GIL has not been free for {:.2}s: it is held by {holder}; until it is released no module's metrics are called, and each keeps its last good value (those modules are not hung)",
                waited.as_secs_f64()
            ),
        );
    }

    /// The calls to make now for `index` and its batch, when some of them
    /// may be backed off or the module is stuck: those are left out, and
    /// keep their values this round (marked fresh).
    fn calls_due<O: Observer>(
        &mut self,
        index: usize,
        ready: bool,
        observer: &mut O,
    ) -> Vec<usize> {
        let siblings: &[usize] = match self.plan.batch_of[index] {
            Some(b) => &self.plan.batches[b],
            None => &[],
        };
        let now = (self.backed_off > 0).then(Instant::now);
        let due = |m: &MetricState| -> Result<(), Skip> {
            if !ready {
                return Err(Skip::ModuleStuck);
            }
            let waiting = now.is_some_and(|now| {
                m.failure
                    .as_ref()
                    .and_then(|f| f.retry_at)
                    .is_some_and(|at| now < at)
            });
            if waiting {
                Err(Skip::BackedOff)
            } else {
                Ok(())
            }
        };
        let mut calls = std::mem::take(&mut self.calls_scratch);
        calls.clear();
        match due(&self.metrics[index]) {
            Ok(()) => calls.push(index),
            Err(why) => observer.skipped(index, why),
        }
        for &j in siblings {
            if j != index {
                let sibling = &mut self.metrics[j];
                sibling.fresh = true;
                match due(sibling) {
                    Ok(()) => calls.push(j),
                    Err(why) => observer.skipped(j, why),
                }
            }
        }
        calls
    }

    /// A call can take a signal from gmond (signal.signal in inline mode,
    /// faulthandler.register from any thread). Looking costs a few system
    /// calls, so it is done before another module is called (once per
    /// module and round when gmond collects in groups), which also tells
    /// which module to blame, and after a batch when a second has passed
    /// since the last look (so a site with one module gets its handlers
    /// back before gmond goes idle until the next round).
    fn check_signals(&mut self, module: usize, when: SignalCheck) {
        let Some((previous, metric)) = self.last_called else {
            return;
        };
        let due = match when {
            SignalCheck::BeforeCalling => previous != module,
            SignalCheck::AfterCalling => {
                clock::coarse_ns().saturating_sub(self.last_signal_check)
                    >= SIGNAL_CHECK_INTERVAL.as_nanos() as u64
            }
        };
        if !due {
            return;
        }
        self.last_signal_check = clock::coarse_ns();
        let problems = crate::signals::restore_changed()
            .into_iter()
            .chain(interrupt::restore_if_changed());
        for problem in problems {
            report(
                Level::Warn,
                Some(&self.module_states[previous].id),
                None,
                format!(
                    "{problem} (noticed after its call of metric '{}')",
                    self.names[metric]
                ),
            );
        }
    }

    /// Records what one call came to: a new value, or a failure logged,
    /// counted and maybe backed off (the last good value stays).
    /// `trigger` is the metric whose call started the round; the others'
    /// values are fresh for the calls of the round that follow.
    fn apply(
        &mut self,
        trigger: usize,
        index: usize,
        outcome: Outcome,
        mode: CallMode,
        timeout: Duration,
    ) {
        let metric = &mut self.metrics[index];
        metric.fresh = index != trigger;
        let state = &mut self.module_states[metric.module as usize];
        state.stats.calls += 1;
        let retry_max = self.settings.retry_max_interval;
        let was_backed_off = metric.backed_off();
        let subject = |metric: &MetricState| Subject {
            module: &state.id,
            metric: &self.names[index],
            has_good: metric.has_good,
            text: matches!(metric.current, Kept::Str(_)),
        };
        match outcome {
            Outcome::Value(value) => {
                metric.current.set(value);
                metric.has_good = true;
                if metric.failure.is_some() {
                    let subject = subject(metric);
                    failures::succeeded(&mut metric.failure, &subject);
                }
            }
            Outcome::Failed(failed) => {
                state.stats.errors += 1;
                let subject = subject(metric);
                failures::record(&mut metric.failure, &subject, &failed, retry_max, true);
            }
            Outcome::TimedOut(elapsed) => {
                state.stats.timeouts += 1;
                let reason = Failed::Value(crate::value::ConversionError(match mode {
                    CallMode::Inline => format!(
                        "the call ran past its {:.1}s deadline ({:.1}s) and was interrupted",
                        timeout.as_secs_f64(),
                        elapsed.as_secs_f64()
                    ),
                    CallMode::Protected | CallMode::Isolated => format!(
                        "the call did not return within {:.1}s",
                        timeout.as_secs_f64()
                    ),
                }));
                // A protected timeout was just reported in full; it still
                // counts towards back-off, so a handler that hangs on every
                // call does not cost gmond a deadline every round.
                let log_first = mode == CallMode::Inline;
                let subject = subject(metric);
                failures::record(&mut metric.failure, &subject, &reason, retry_max, log_first);
            }
        }
        match (was_backed_off, metric.backed_off()) {
            (false, true) => self.backed_off += 1,
            (true, false) => self.backed_off -= 1,
            _ => {}
        }
    }

    /// Whether a module can be called now; notices when a stuck call
    /// returned, and gives its result to gmond as the metric's last good
    /// value when it is one.
    fn module_ready(&mut self, module: usize) -> bool {
        if self.module_states[module].isolated.is_some() {
            return self.isolated_ready(module);
        }
        let state = &mut self.module_states[module];
        let Some(stuck) = &state.stuck else {
            return true;
        };
        if !stuck.finished() {
            return false;
        }
        let Some(stuck) = state.stuck.take() else {
            return true;
        };
        self.stuck -= 1;
        let mut result = String::from("it made no result");
        stuck.take_results(|j, outcome| {
            let text = self.keep_late(j, outcome);
            if j == stuck.index {
                result = text;
            }
        });
        let say = match &mut self.metrics[stuck.index].failure {
            Some(t) => !std::mem::replace(&mut t.return_logged, true),
            None => true,
        };
        if say {
            report(
                Level::Warn,
                Some(&self.module_states[module].id),
                Some(&self.names[stuck.index]),
                format!(
                    "the stuck call of metric '{}' returned after {:.1}s; {result}; the module's metrics are called again",
                    self.names[stuck.index],
                    stuck.run_time().as_secs_f64()
                ),
            );
        }
        true
    }

    /// Gives gmond a late call's value as the metric's last good value; says
    /// what the call came to, for the log.
    fn keep_late(&mut self, j: usize, outcome: Outcome) -> String {
        match outcome {
            Outcome::Value(value) => {
                let text = format!(
                    "its value {} is gmond's last good value now",
                    value_text(&value)
                );
                let metric = &mut self.metrics[j];
                metric.current.set(value);
                metric.has_good = true;
                let was_backed_off = metric.backed_off();
                // A success as far as back-off goes; the line that follows
                // says so (no "recovered" line besides).
                if let Some(t) = &mut metric.failure {
                    t.in_a_row = 0;
                    t.retry_at = None;
                }
                if was_backed_off {
                    self.backed_off -= 1;
                }
                text
            }
            Outcome::Failed(failed) => format!("it failed: {}", failed.summary()),
            Outcome::TimedOut(_) => "it made no result".to_owned(),
        }
    }

    /// Whether an isolated module can be called now (see
    /// [`IsolatedModule::ready`]); counts its restarts and kills, and
    /// keeps a late batch's values.
    fn isolated_ready(&mut self, module: usize) -> bool {
        let Engine {
            module_states,
            names,
            ..
        } = self;
        let state = &mut module_states[module];
        let Some(process) = state.isolated.as_mut() else {
            return true;
        };
        let (ready, happened) = process.ready(&state.id, names);
        match happened {
            Happened::Nothing => {}
            Happened::Restarted => state.stats.restarts += 1,
            Happened::Killed => state.stats.kills += 1,
            Happened::LateResults {
                calls,
                outcomes,
                running,
                ran,
            } => {
                let mut result = String::from("it made no result");
                for (j, (wire, _)) in calls.into_iter().zip(outcomes) {
                    let text = self.keep_late(j, isolated::outcome(wire));
                    if Some(j) == running {
                        result = text;
                    }
                }
                if let Some(j) = running {
                    let say = match &mut self.metrics[j].failure {
                        Some(t) => !std::mem::replace(&mut t.return_logged, true),
                        None => true,
                    };
                    if say {
                        report(
                            Level::Warn,
                            Some(&self.module_states[module].id),
                            Some(&self.names[j]),
                            format!(
                                "the late call of metric '{}' returned after {:.1}s; {result}; the module's metrics are called again",
                                self.names[j],
                                ran.as_secs_f64()
                            ),
                        );
                    }
                }
            }
        }
        ready
    }

    /// One batch of an isolated module: one round trip to its process.
    fn isolated_calls<O: Observer>(
        &mut self,
        module: usize,
        trigger: usize,
        calls: &[usize],
        observer: &mut O,
    ) {
        let started = clock::monotonic_ns();
        let timeout = self.module_states[module].timeout;
        let result = {
            let Engine {
                module_states,
                names,
                timed,
                ..
            } = self;
            let state = &mut module_states[module];
            match state.isolated.as_mut() {
                Some(process) => process.call_batch(&state.id, names, calls, timeout, *timed),
                None => BatchResult::NotReady,
            }
        };
        self.module_states[module].call_ns += clock::monotonic_ns().saturating_sub(started);
        match result {
            BatchResult::Done(outcomes) => {
                let made = outcomes.len();
                for (&j, (wire, seconds)) in calls.iter().zip(outcomes) {
                    let outcome = isolated::outcome(wire);
                    observer.called(j, &outcome, seconds);
                    self.apply(trigger, j, outcome, CallMode::Isolated, timeout);
                }
                self.not_called_after(trigger, calls, made, Skip::AfterLateCall, observer);
            }
            BatchResult::Late { running } => {
                if let Some(j) = running {
                    let metric = &self.metrics[j];
                    let say = metric.failure.as_ref().is_none_or(|t| !t.stuck_logged);
                    if say {
                        let kill_after = self.module_states[module]
                            .isolated
                            .as_ref()
                            .map_or(Duration::ZERO, |p| p.kill_after());
                        report(
                            Level::Error,
                            Some(&self.module_states[module].id),
                            Some(&self.names[j]),
                            format!(
                                "metric '{}' did not return within {:.1}s; {}; its process is killed if the call has not returned after {:.0}s (kill_after), and the module's metrics are not called until then",
                                self.names[j],
                                timeout.as_secs_f64(),
                                failures::kept(
                                    metric.has_good,
                                    matches!(metric.current, Kept::Str(_))
                                ),
                                kill_after.as_secs_f64()
                            ),
                        );
                    }
                    let outcome = Outcome::TimedOut(timeout);
                    observer.called(j, &outcome, timeout.as_secs_f32());
                    self.apply(trigger, j, outcome, CallMode::Isolated, timeout);
                    if let Some(t) = &mut self.metrics[j].failure {
                        t.stuck_logged = true;
                        t.return_logged = false;
                    }
                }
                for &j in calls {
                    if Some(j) != running {
                        self.metrics[j].fresh = j != trigger;
                        observer.skipped(j, Skip::AfterLateCall);
                    }
                }
            }
            BatchResult::Crashed | BatchResult::NotReady => {
                self.not_called(trigger, calls, Skip::ModuleDown, observer);
            }
        }
    }

    /// Every module's `metric_cleanup()`, once, within the cleanup
    /// deadline. The worker is let go first; the calling thread never
    /// waits for the GIL here.
    pub fn cleanup(&mut self) {
        self.cleanup_within(cleanup::CLEANUP_DEADLINE);
    }

    /// [`Engine::cleanup`] with a given deadline (tests).
    pub fn cleanup_within(&mut self, deadline: Duration) {
        if self.cleaned_up {
            return;
        }
        self.cleaned_up = true;
        self.worker = None;
        // Module processes clean up at the same time as the modules here.
        let until = Instant::now() + deadline;
        for state in &mut self.module_states {
            if let Some(process) = &mut state.isolated {
                process.begin_cleanup();
            }
        }
        // Moved, not cloned: cloning a Py takes the GIL.
        let modules = std::mem::take(&mut self.modules)
            .into_iter()
            .filter_map(|m| Some((m.id, m.module?)))
            .collect();
        cleanup::run_within(modules, deadline);
        for state in &mut self.module_states {
            if let Some(process) = &mut state.isolated {
                process.finish_cleanup(&state.id, &self.names, until);
            }
        }
    }
}

impl MetricState {
    fn backed_off(&self) -> bool {
        self.failure.as_ref().is_some_and(|f| f.retry_at.is_some())
    }
}

/// A value as the log shows it.
pub fn value_text(value: &Value) -> String {
    match value {
        Value::Str(s) => format!("'{s}'"),
        Value::Uint(v) => v.to_string(),
        Value::Int(v) => v.to_string(),
        Value::Float(v) => v.to_string(),
        Value::Double(v) => v.to_string(),
    }
}

/// What gmond's thread is running inline, for the fatal-signal handler
/// (atomics only: it runs inside the handler).
fn inline_call() -> crate::fatal_signal::InlineCall {
    use crate::fatal_signal::InlineCall;
    match interrupt::inline_call_in_flight() {
        None => InlineCall::None,
        Some(interrupt::INIT) => InlineCall::Loading,
        Some(index) => InlineCall::Metric(index),
    }
}

fn spawn_worker(targets: &Targets, timed: bool) -> Result<Worker, String> {
    Worker::spawn(Arc::clone(targets), timed)
        .map_err(|e| format!("cannot start a thread for handler calls: {e}"))
}
