//! The host's state for the life of gmond: loaded modules, their metrics,
//! the table gmond reads, and what each metric's calls have done so far —
//! last good value, failures, back-off, deadlines, statistics.
//!
//! gmond calls into us from its main thread only, so the state lives in
//! that thread's storage: no lock on the call path, and a call from any
//! other thread finds no host rather than a data race.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use crate::descriptor::MetricDescriptor;
use crate::dispatch::{self, CallTarget, Failed, Outcome, Stuck, Targets, Worker};
use crate::gmond_config::{self, ModuleBlock, Param};
use crate::metric_table::{GmondPool, MetricTable};
use crate::permissions;
use crate::python::{self, interrupt, loader};
use crate::self_metrics::{self, SelfMetric, Snapshot, Stats};
use crate::settings::{self, CallMode, HostSettings};
use crate::value::{Kept, Value};
use crate::{cycles, ffi};

/// How often a metric that keeps failing is mentioned again in the log.
const REPEAT_LOG_EVERY: Duration = Duration::from_secs(600);
/// Failures in a row before a handler is backed off.
const BACKOFF_AFTER: u32 = 3;
/// The first pause of a backed-off handler; it doubles up to `retry_max_interval`.
const BACKOFF_FIRST: Duration = Duration::from_secs(10);
/// While one module's metrics are called one after another, gmond's signal
/// handlers are checked (4 system calls) after a batch at most this often.
const SIGNAL_CHECK_INTERVAL: Duration = Duration::from_secs(1);

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

/// What gmond hands `init`, already copied out of its structures.
pub struct InitInput {
    /// The `params` of the python_module block: the module directory.
    pub module_dir: Option<String>,
    /// The python_module block's own `param` list (host settings).
    pub host_params: Vec<Param>,
    /// Every `module { … }` block of gmond's configuration.
    pub blocks: Vec<ModuleBlock>,
    /// The user gmond drops to after init (`globals { setuid user }`).
    pub gmond_user: Option<String>,
    /// Every `collection_group { metric { … } }` entry, to learn which of a
    /// module's metrics gmond collects together.
    pub collected: Vec<gmond_config::CollectedMetric>,
    /// The pool gmond passed to init.
    pub pool: GmondPool,
}

/// Per-metric run-time state: all of ours that a call touches, in one
/// place and small (gmond calls thousands of metrics a round, and at that
/// count memory traffic is most of the cost of a call).
struct MetricState {
    /// What gmond gets: the value of the last successful call, or zero of
    /// the metric's type before the first. A failed, late or skipped call
    /// leaves it as it is.
    current: Kept,
    /// Present while calls fail (rare, so boxed).
    failure: Option<Box<Failure>>,
    module: u32,
    /// Whether a call has ever succeeded.
    has_good: bool,
    /// Whether this round's value has been made (in a batch started by a
    /// sibling's call) and not yet taken by gmond. gmond's call of a metric
    /// that is not fresh starts the next round of its batch.
    fresh: bool,
}

const _: () = assert!(std::mem::size_of::<MetricState>() <= 32);

/// A run of failed calls: logged in full once, then summarised; backed off
/// after a few in a row.
struct Failure {
    since: Instant,
    count: u64,
    last_logged: Instant,
    /// No call before this instant (back-off), if set.
    retry_at: Option<Instant>,
}

/// Per-module run-time state.
struct ModuleState {
    id: loader::ModuleRef,
    mode: CallMode,
    timeout: Duration,
    /// A call gmond stopped waiting for: until it returns, this module's
    /// metrics keep their last good values without being called.
    stuck: Option<Stuck>,
    stats: Stats,
    /// Time spent in calls, in `cycles` ticks (converted when reported).
    ticks: u64,
}

pub struct Host {
    modules: Vec<loader::LoadedModule>,
    module_states: Vec<ModuleState>,
    metrics: Vec<MetricState>,
    /// The metrics' names, by index (only messages need them).
    names: Vec<Arc<str>>,
    /// How many metrics are backed off (their failure has a `retry_at`):
    /// while none are, a round need not look at each one's failure.
    backed_off: usize,
    /// Metrics after the Python ones in gmond's table.
    self_metrics: Vec<SelfMetric>,
    modules_failed: usize,
    targets: Targets,
    /// The batch (index into `batches`) of each Python metric, if any.
    batch_of: Vec<Option<usize>>,
    /// Metrics of one module that one collection group collects together.
    batches: Vec<Arc<[usize]>>,
    /// Makes protected calls; replaced when it gets stuck.
    worker: Option<Worker>,
    table: MetricTable,
    settings: HostSettings,
    cleaned_up: bool,
    /// The module (and metric) called last, which gets the blame for a
    /// signal handler found changed before the next module's call.
    last_called: Option<(usize, usize)>,
    /// When gmond's signal handlers were last checked ([`cycles::coarse_ns`]).
    last_signal_check: u64,
    /// Reused for each batch's list of calls.
    calls_scratch: Vec<usize>,
    /// Reused for the self metrics' snapshot.
    stats_scratch: Vec<Stats>,
}

thread_local! {
    /// The host, on the thread that ran `init`: gmond's main thread, which
    /// makes every later call. Leaked on purpose: it lives as long as gmond,
    /// and nothing of it may be torn down at exit (Python is never finalised).
    static HOST: Cell<Option<&'static RefCell<Host>>> = const { Cell::new(None) };
}

/// Runs `f` on the host; `None` before init, from another thread, or if
/// re-entered (a panic unwinding out of `f` releases the host).
fn with_host<R>(f: impl FnOnce(&mut Host) -> R) -> Option<R> {
    let Some(cell) = HOST.with(Cell::get) else {
        static REPORTED: AtomicBool = AtomicBool::new(false);
        if !REPORTED.swap(true, Ordering::Relaxed) {
            log::error!(
                "gmond called modpython before its init, or from a thread other than the one that ran init; such calls get zero (reported once)"
            );
        }
        return None;
    };
    let mut host = cell.try_borrow_mut().ok()?;
    Some(f(&mut host))
}

/// gmond's `init`: start Python, load the modules, build the metric table.
/// Returns the table for `mmodule.metrics_info`; `Err` fails the whole
/// host (gmond then logs "Module python_module failed to initialize").
pub fn init(input: InitInput) -> Result<*mut ffi::Ganglia_25metric, String> {
    if let Some(existing) = HOST.with(Cell::get) {
        // gmond calls init once; a second call (e.g. a test) gets the same table.
        return Ok(existing.borrow().table.as_ptr());
    }
    let (settings, problems) = settings::parse_host(&input.host_params);
    for problem in problems {
        log::warn!("{problem}");
    }
    let dir = gmond_config::check_module_dir(input.module_dir.as_deref())?;
    crate::signals::remember_gmond_handlers();
    crate::signals::defuse_stray_signals();
    cycles::start();
    python::start()?;
    crate::signals::restore_if_changed("starting Python");
    Python::attach(interrupt::install).map_err(|e| format!("cannot set up call deadlines: {e}"))?;

    let options = loader::LoadOptions {
        settings: &settings,
        trusted_uids: permissions::trusted_uids(input.gmond_user.as_deref(), true),
    };
    let loaded = Python::attach(|py| loader::load_all(py, &dir, &input.blocks, &options))?;

    let module_states: Vec<ModuleState> = loaded
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
                ticks: 0,
            }
        })
        .collect();
    let module_names: Vec<Arc<str>> = loaded
        .modules
        .iter()
        .map(|m| Arc::from(m.id.name.as_str()))
        .collect();
    let mut descriptors: Vec<MetricDescriptor> = Vec::with_capacity(loaded.metrics.len());
    let mut targets = Vec::with_capacity(loaded.metrics.len());
    let mut metrics = Vec::with_capacity(loaded.metrics.len());
    let mut names = Vec::with_capacity(loaded.metrics.len());
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
    let mut self_metric_list = Vec::new();
    if settings.self_metrics {
        let names: Vec<String> = loaded.modules.iter().map(|m| m.id.name.clone()).collect();
        for (metric, descriptor) in self_metrics::all(&names) {
            if descriptors.iter().any(|d| d.name == descriptor.name) {
                log::warn!(
                    "a Python module already defines '{}'; modpython's own metric of that name is left out",
                    descriptor.name
                );
                continue;
            }
            self_metric_list.push(metric);
            descriptors.push(descriptor);
        }
    }
    let table = MetricTable::build(&descriptors, input.pool);

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
    interrupt::set_metric_labels(interrupt::Labels {
        modules: module_states.iter().map(|m| m.id.to_string()).collect(),
        metrics: metrics
            .iter()
            .zip(&names)
            .map(|(m, name)| (m.module, Arc::clone(name)))
            .collect(),
    });
    let (batch_of, batches) = Python::attach(|py| {
        // gmond tells exact names from prefixes among all it registered,
        // our own metrics included.
        let own: Vec<&str> = descriptors[metrics.len()..]
            .iter()
            .map(|d| d.name.as_str())
            .collect();
        collection_batches(py, &metrics, &names, &own, &input.collected)
    });
    let targets: Targets = Arc::new(targets);
    let needs_worker = module_states.iter().any(|m| m.mode == CallMode::Protected);
    let worker = if needs_worker {
        Some(spawn_worker(&targets)?)
    } else {
        None
    };
    let ptr = table.as_ptr();
    let state = Host {
        modules: loaded.modules,
        module_states,
        metrics,
        names,
        backed_off: 0,
        self_metrics: self_metric_list,
        modules_failed: loaded.failed.len(),
        targets,
        batch_of,
        batches,
        worker,
        table,
        settings,
        cleaned_up: false,
        stats_scratch: Vec::new(),
        last_called: None,
        last_signal_check: cycles::coarse_ns(),
        calls_scratch: Vec::new(),
    };
    HOST.with(|h| h.set(Some(Box::leak(Box::new(RefCell::new(state))))));
    Ok(ptr)
}

/// Groups each module's metrics by the collection group that collects
/// them, as gmond selects them (exact name, else case-insensitive prefix;
/// `name_match` by regular expression, with gmond's own libpcre where it
/// can be found, Python's `re` standing in otherwise). gmond calls a
/// group's metrics one after the other every round, so the first call of a
/// round can have the worker make them all at once. A metric that no
/// entry, or more than one, selects is called on its own.
fn collection_batches(
    py: Python<'_>,
    metrics: &[MetricState],
    metric_names: &[Arc<str>],
    other_registered: &[&str],
    collected: &[gmond_config::CollectedMetric],
) -> (Vec<Option<usize>>, Vec<Arc<[usize]>>) {
    let names: Vec<&str> = metric_names.iter().map(|n| &**n).collect();
    // gmond's own libpcre when it is in the process (it is, in gmond);
    // Python's `re` only otherwise (imported then, not at every start).
    let pcre = crate::pcre::Matcher::in_process();
    let re = if pcre.available() {
        None
    } else {
        py.import("re").ok()
    };
    let search = |pattern: &str, name: &str| -> bool {
        if pcre.available() {
            return pcre.search(pattern, name);
        }
        re.as_ref()
            .and_then(|re| re.call_method1("search", (pattern, name)).ok())
            .is_some_and(|m| !m.is_none())
    };
    // Whether an entry's `name` is a registered metric name does not depend
    // on the metric: looked up once per entry, not once per metric and entry
    // (that was a scan of all names each time, O(N²): ~75 ms at N = 10,000).
    let registered: std::collections::HashSet<&str> =
        names.iter().chain(other_registered).copied().collect();
    let entry_names: Vec<Vec<&str>> = collected
        .iter()
        .map(|e| {
            e.name
                .as_deref()
                .filter(|n| registered.contains(n))
                .into_iter()
                .collect()
        })
        .collect();
    let mut keys: Vec<(usize, usize)> = Vec::new();
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut batch_of = vec![None; metrics.len()];
    for (i, metric) in metrics.iter().enumerate() {
        // Exactly one entry: a metric two entries select is collected
        // twice a round (or at two rates), and a second call must not start
        // a second round of its batch.
        let mut selecting = collected
            .iter()
            .zip(&entry_names)
            .filter(|(entry, exact)| entry.selects(names[i], exact, &search));
        let (Some((entry, _)), None) = (selecting.next(), selecting.next()) else {
            continue;
        };
        let group = entry.group;
        let key = (metric.module as usize, group);
        let b = match keys.iter().position(|k| *k == key) {
            Some(b) => b,
            None => {
                keys.push(key);
                batches.push(Vec::new());
                batches.len() - 1
            }
        };
        batches[b].push(i);
        batch_of[i] = Some(b);
    }
    (batch_of, batches.into_iter().map(Arc::from).collect())
}

fn spawn_worker(targets: &Targets) -> Result<Worker, String> {
    Worker::spawn(Arc::clone(targets))
        .map_err(|e| format!("cannot start a thread for handler calls: {e}"))
}

/// gmond's `handler(index)`: the metric's current value, or its last good
/// one when the call fails, is backed off, or its module is stuck.
pub fn collect(index: i32) -> ffi::g_val_t {
    with_host(|host| match usize::try_from(index) {
        Ok(i) if i < host.metrics.len() => host.collect_python(i),
        Ok(i) => host.self_metric_value(i - host.metrics.len()),
        Err(_) => Value::Uint(0).to_g_val(),
    })
    .unwrap_or_else(|| Value::Uint(0).to_g_val())
}

impl Host {
    fn self_metric_value(&mut self, i: usize) -> ffi::g_val_t {
        let Some(metric) = self.self_metrics.get(i) else {
            log::error!(
                "gmond asked for metric index {}, which modpython never registered",
                i + self.metrics.len()
            );
            return Value::Uint(0).to_g_val();
        };
        self.stats_scratch.clear();
        self.stats_scratch
            .extend(self.module_states.iter().map(|m| Stats {
                seconds: cycles::seconds(m.ticks),
                ..m.stats
            }));
        let snapshot = Snapshot {
            modules_loaded: self.modules.len(),
            modules_failed: self.modules_failed,
            per_module: &self.stats_scratch,
        };
        metric.value(&snapshot).to_g_val()
    }

    /// gmond collects a group's metrics one after the other every round, so
    /// the first call of a round makes the calls of all the module's
    /// metrics in that group (one hand-off to the worker, or one
    /// acquisition of the GIL), and gmond's calls of the others just take
    /// their values. This is the path of almost every call: keep it short.
    #[inline]
    fn collect_python(&mut self, index: usize) -> ffi::g_val_t {
        let metric = &mut self.metrics[index];
        if metric.fresh {
            metric.fresh = false;
            return metric.current.to_g_val();
        }
        self.make_calls(index);
        self.metrics[index].current.to_g_val()
    }

    /// Makes this round's calls of `index` and of the siblings of its batch
    /// (or of `index` alone), and applies their outcomes. Siblings that are
    /// not called now — backed off, their module stuck, or left after a
    /// late call — keep their value for this round.
    #[cold]
    fn make_calls(&mut self, index: usize) {
        let module = self.metrics[index].module as usize;
        let ready = self.module_ready(module);
        let calls = match self.batch_of[index] {
            // The usual round: the whole batch, as it is (each call's
            // outcome marks its metric fresh).
            Some(b) if ready && self.backed_off == 0 => Calls::Batch(Arc::clone(&self.batches[b])),
            _ => Calls::Some(self.calls_due(index, ready)),
        };
        if calls.is_empty() {
            if let Calls::Some(list) = calls {
                self.calls_scratch = list;
            }
            return;
        }
        self.check_signals(module, SignalCheck::BeforeCalling);
        let (mode, timeout) = {
            let state = &self.module_states[module];
            (state.mode, state.timeout)
        };
        let started = cycles::now();
        // Taken out while it works, so the outcomes can be applied as they come.
        let worker = match mode {
            CallMode::Protected => self.ensure_worker().then(|| self.worker.take()).flatten(),
            CallMode::Inline => None,
        };
        let mut made = 0;
        let stuck = match worker {
            Some(worker) => {
                let stuck = worker.call_batch(&calls, timeout, |j, outcome| {
                    made += 1;
                    self.apply(index, j, outcome, mode, timeout)
                });
                if stuck.is_none() {
                    // A stuck worker is dropped: it stays with its call and
                    // exits when the call returns.
                    self.worker = Some(worker);
                }
                stuck
            }
            None => {
                let targets = Arc::clone(&self.targets);
                dispatch::call_inline_batch(&targets, &calls, timeout, |j, outcome| {
                    made += 1;
                    self.apply(index, j, outcome, mode, timeout)
                });
                None
            }
        };
        self.module_states[module].ticks += cycles::now().wrapping_sub(started);
        match calls {
            Calls::Batch(batch) if made < batch.len() => {
                // Cut short (a late or stuck call): the rest keep their
                // values this round.
                for &j in batch.iter() {
                    self.metrics[j].fresh = j != index;
                }
            }
            Calls::Batch(_) => {}
            Calls::Some(list) => self.calls_scratch = list,
        }
        if let Some(stuck) = stuck {
            let elapsed = stuck.since.elapsed();
            log::error!(
                "{}: metric '{}' did not return within {:.1}s; gmond keeps its last good value and the call is left to finish in the background; the module's metrics are not called until it does",
                self.module_states[module].id,
                self.names[stuck.index],
                elapsed.as_secs_f64()
            );
            let j = stuck.index;
            self.module_states[module].stuck = Some(stuck);
            self.apply(index, j, Outcome::TimedOut(elapsed), mode, timeout);
        }
        self.last_called = Some((module, index));
        self.check_signals(module, SignalCheck::AfterCalling);
    }

    /// The calls to make now for `index` and its batch, when some of them
    /// may be backed off or the module is stuck: those are left out, and
    /// keep their values this round (marked fresh).
    fn calls_due(&mut self, index: usize, ready: bool) -> Vec<usize> {
        let siblings: &[usize] = match self.batch_of[index] {
            Some(b) => &self.batches[b],
            None => &[],
        };
        let now = (self.backed_off > 0).then(Instant::now);
        let due = |m: &MetricState| {
            ready
                && now.is_none_or(|now| {
                    m.failure
                        .as_ref()
                        .and_then(|f| f.retry_at)
                        .is_none_or(|at| now >= at)
                })
        };
        let mut calls = std::mem::take(&mut self.calls_scratch);
        calls.clear();
        if due(&self.metrics[index]) {
            calls.push(index);
        }
        for &j in siblings {
            if j != index {
                let sibling = &mut self.metrics[j];
                sibling.fresh = true;
                if due(sibling) {
                    calls.push(j);
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
                cycles::coarse_ns().saturating_sub(self.last_signal_check)
                    >= SIGNAL_CHECK_INTERVAL.as_nanos() as u64
            }
        };
        if !due {
            return;
        }
        self.last_signal_check = cycles::coarse_ns();
        for problem in crate::signals::restore_changed() {
            log::warn!(
                "{}: {problem} (noticed after its call of metric '{}')",
                self.module_states[previous].id,
                self.names[metric]
            );
        }
    }

    /// Records what one call came to: a new value for gmond, or a failure
    /// logged, counted and maybe backed off (gmond keeps the last good value).
    /// `trigger` is the metric whose call started the round; the others'
    /// values are fresh for gmond's calls that follow.
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
        match outcome {
            Outcome::Value(value) => {
                metric.current.set(value);
                metric.has_good = true;
                if let Some(failure) = metric.failure.take() {
                    log::warn!(
                        "{}: metric '{}' recovered after {} failed call(s) over {}s",
                        state.id,
                        self.names[index],
                        failure.count,
                        failure.since.elapsed().as_secs()
                    );
                }
            }
            Outcome::Failed(failed) => {
                state.stats.errors += 1;
                metric.record_failure(&state.id, &self.names[index], &failed, retry_max, true);
            }
            Outcome::TimedOut(elapsed) => {
                state.stats.timeouts += 1;
                let reason = Failed::Value(crate::value::ConversionError(match mode {
                    CallMode::Inline => format!(
                        "the call ran past its {:.1}s deadline ({:.1}s) and was interrupted",
                        timeout.as_secs_f64(),
                        elapsed.as_secs_f64()
                    ),
                    CallMode::Protected => format!(
                        "the call did not return within {:.1}s",
                        timeout.as_secs_f64()
                    ),
                }));
                // A protected timeout was just reported in full; it still
                // counts towards back-off, so a handler that hangs on every
                // call does not cost gmond a deadline every round.
                let log_first = mode == CallMode::Inline;
                metric.record_failure(&state.id, &self.names[index], &reason, retry_max, log_first);
            }
        }
        match (was_backed_off, metric.backed_off()) {
            (false, true) => self.backed_off += 1,
            (true, false) => self.backed_off -= 1,
            _ => {}
        }
    }

    /// Whether a module can be called now; notices when a stuck call returned.
    fn module_ready(&mut self, module: usize) -> bool {
        let state = &mut self.module_states[module];
        let Some(stuck) = &state.stuck else {
            return true;
        };
        if !stuck.finished() {
            return false;
        }
        log::warn!(
            "{}: the stuck call of metric '{}' returned after {:.1}s; the module's metrics are called again",
            state.id,
            self.names[stuck.index],
            stuck.since.elapsed().as_secs_f64()
        );
        state.stuck = None;
        true
    }

    /// Whether a worker for protected calls is there, started again if the
    /// last one got stuck.
    fn ensure_worker(&mut self) -> bool {
        if self.worker.is_none() {
            match spawn_worker(&self.targets) {
                Ok(w) => self.worker = Some(w),
                Err(e) => log::error!("{e}; the call is made on gmond's thread instead"),
            }
        }
        self.worker.is_some()
    }
}

impl MetricState {
    fn backed_off(&self) -> bool {
        self.failure.as_ref().is_some_and(|f| f.retry_at.is_some())
    }

    /// Logs the first failure of a run in full, then at most every ten
    /// minutes (formatting a traceback costs more than the call); after a
    /// few failures in a row, calls are spaced out, doubling up to `retry_max`.
    fn record_failure(
        &mut self,
        module: &loader::ModuleRef,
        name: &str,
        failed: &Failed,
        retry_max: Duration,
        log_first: bool,
    ) {
        let now = Instant::now();
        match &mut self.failure {
            None if !log_first => {
                self.failure = Some(Box::new(Failure {
                    since: now,
                    count: 1,
                    last_logged: now,
                    retry_at: None,
                }));
            }
            None => {
                let kept = if self.has_good {
                    "gmond keeps its last good value"
                } else {
                    "it has no good value yet, so gmond gets zero/empty"
                };
                log::error!(
                    "{module}: metric '{}' failed ({kept}; repeats are logged every {} minutes)\n{}",
                    name,
                    REPEAT_LOG_EVERY.as_secs() / 60,
                    failed.detail()
                );
                self.failure = Some(Box::new(Failure {
                    since: now,
                    count: 1,
                    last_logged: now,
                    retry_at: None,
                }));
            }
            Some(failure) => {
                failure.count += 1;
                if failure.count >= u64::from(BACKOFF_AFTER) {
                    let doublings = (failure.count - u64::from(BACKOFF_AFTER)).min(16) as u32;
                    let pause = BACKOFF_FIRST.saturating_mul(1 << doublings).min(retry_max);
                    if failure.count == u64::from(BACKOFF_AFTER) {
                        log::warn!(
                            "{module}: metric '{}': {} failures in a row; it is now called at most every {}s, backing off to every {}s while it keeps failing",
                            name,
                            failure.count,
                            pause.as_secs(),
                            retry_max.as_secs()
                        );
                    }
                    failure.retry_at = Some(now + pause);
                }
                if now.duration_since(failure.last_logged) >= REPEAT_LOG_EVERY {
                    failure.last_logged = now;
                    log::error!(
                        "{module}: metric '{}' still failing: {} failed call(s) in {}s; latest: {}",
                        name,
                        failure.count,
                        failure.since.elapsed().as_secs(),
                        failed.summary()
                    );
                }
            }
        }
    }
}

/// gmond's `cleanup`: every module's `metric_cleanup()`, once, within
/// [`loader::CLEANUP_DEADLINE`] in all: a cleanup that never returns must not keep
/// gmond from exiting or from re-executing itself on SIGHUP.
pub fn cleanup() {
    let taken = with_host(|host| {
        if host.cleaned_up {
            return None;
        }
        host.cleaned_up = true;
        // Stop the call worker; it holds no state that needs finishing.
        host.worker = None;
        // Moved, not cloned: gmond's thread must not wait for the GIL here (a
        // stuck call may hold it), so only the cleanup thread touches Python.
        Some(
            std::mem::take(&mut host.modules)
                .into_iter()
                .map(|m| (m.id, m.module))
                .collect::<Vec<(loader::ModuleRef, Py<PyModule>)>>(),
        )
    });
    let Some(Some(modules)) = taken else { return };
    let count = modules.len();
    // The cleanup thread reports each step it starts, then None when done.
    let (progress_tx, progress_rx) = std::sync::mpsc::channel::<Option<String>>();
    let spawned = std::thread::Builder::new()
        .name("modpython-cleanup".to_owned())
        .stack_size(dispatch::PYTHON_THREAD_STACK)
        .spawn(move || {
            crate::signals::block_in_this_thread();
            let tx = progress_tx.clone();
            Python::attach(|py| {
                loader::cleanup_modules(py, &modules, &|step| {
                    let _ = tx.send(Some(step.to_string()));
                })
            });
            let _ = progress_tx.send(None);
        });
    if let Err(e) = spawned {
        log::error!("cannot start the cleanup thread ({e}); metric_cleanup is not called");
        return;
    }
    let deadline = Instant::now() + loader::CLEANUP_DEADLINE;
    let mut current = "metric_cleanup".to_owned();
    loop {
        match progress_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Some(step)) => current = step,
            Ok(None) => break,
            Err(_) => {
                log::error!(
                    "{current} did not return within {}s; gmond goes on without waiting for it",
                    loader::CLEANUP_DEADLINE.as_secs()
                );
                return;
            }
        }
    }
    log::info!("metric_cleanup called for {count} Python module(s)");
}

/// The value gmond gets if `collect` itself panicked: the last good one.
pub fn fallback_value(index: i32) -> ffi::g_val_t {
    with_host(|h| {
        Some(
            h.metrics
                .get(usize::try_from(index).ok()?)?
                .current
                .to_g_val(),
        )
    })
    .flatten()
    .unwrap_or_else(|| Value::Uint(0).to_g_val())
}
