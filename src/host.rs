//! The host's state for the life of gmond: loaded modules, their metrics,
//! the table gmond reads, and what each metric's calls have done so far —
//! last good value, failures, back-off, deadlines, statistics.
//!
//! gmond calls into us from its main thread only; the mutex is there so the
//! state can be a safe global, not because calls race.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use once_cell::sync::OnceCell;
use pyo3::prelude::*;

use crate::descriptor::{MetricDescriptor, ValueType};
use crate::dispatch::{self, CallTarget, Failed, Outcome, Stuck, Targets, Worker};
use crate::gmond_config::{self, ModuleBlock, Param};
use crate::metric_table::{GmondPool, MetricTable};
use crate::permissions;
use crate::python::{self, interrupt, loader};
use crate::self_metrics::{self, SelfMetric, Snapshot, Stats};
use crate::settings::{self, CallMode, HostSettings};
use crate::value::Value;
use crate::{cycles, ffi};

/// How often a metric that keeps failing is mentioned again in the log.
const REPEAT_LOG_EVERY: Duration = Duration::from_secs(600);
/// Failures in a row before a handler is backed off.
const BACKOFF_AFTER: u32 = 3;
/// The first pause of a backed-off handler; it doubles up to `retry_max_interval`.
const BACKOFF_FIRST: Duration = Duration::from_secs(10);
/// gmond's signal handlers are checked (4 system calls) at most once a
/// second, looking at the clock every this many handler calls.
const SIGNAL_CHECK_EVERY: u32 = 8;
/// How long gmond's shutdown waits for all `metric_cleanup()` calls.
const CLEANUP_DEADLINE: Duration = Duration::from_secs(10);

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

/// Per-metric run-time state.
struct MetricState {
    module: usize,
    name: String,
    value_type: ValueType,
    /// Exactly what gmond got from the last successful call.
    last_good: Option<ffi::g_val_t>,
    /// This round's outcome, made by the worker in a batch with a sibling
    /// (see [`Host::protected_outcome`]); taken by the next call.
    prefetched: Option<Outcome>,
    failure: Option<Failure>,
}

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
    /// Metrics after the Python ones in gmond's table.
    self_metrics: Vec<SelfMetric>,
    modules_failed: usize,
    targets: Targets,
    /// The batch (index into `batches`) of each Python metric, if any.
    batch_of: Vec<Option<usize>>,
    /// Metrics of one module that one collection group collects together.
    batches: Vec<Vec<usize>>,
    /// Makes protected calls; replaced when it gets stuck.
    worker: Option<Worker>,
    table: MetricTable,
    settings: HostSettings,
    cleaned_up: bool,
    calls_since_signal_check: u32,
    last_signal_check: Instant,
}

static HOST: OnceCell<Mutex<Host>> = OnceCell::new();

fn host() -> Option<std::sync::MutexGuard<'static, Host>> {
    // A panic while the lock was held must not stop later calls.
    HOST.get()
        .map(|h| h.lock().unwrap_or_else(|p| p.into_inner()))
}

/// gmond's `init`: start Python, load the modules, build the metric table.
/// Returns the table for `mmodule.metrics_info`; `Err` fails the whole
/// host (gmond then logs "Module python_module failed to initialize").
pub fn init(input: InitInput) -> Result<*mut ffi::Ganglia_25metric, String> {
    if let Some(existing) = host() {
        // gmond calls init once; a second call (e.g. a test) gets the same table.
        return Ok(existing.table.as_ptr());
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
    for m in loaded.metrics {
        metrics.push(MetricState {
            module: m.module,
            name: m.descriptor.name.clone(),
            value_type: m.descriptor.value_type,
            last_good: None,
            prefetched: None,
            failure: None,
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
    interrupt::set_metric_labels(
        metrics
            .iter()
            .map(|m| format!("{}: metric '{}'", module_states[m.module].id, m.name))
            .collect(),
    );
    let (batch_of, batches) =
        Python::attach(|py| collection_batches(py, &metrics, &descriptors, &input.collected));
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
        self_metrics: self_metric_list,
        modules_failed: loaded.failed.len(),
        targets,
        batch_of,
        batches,
        worker,
        table,
        settings,
        cleaned_up: false,
        calls_since_signal_check: 0,
        last_signal_check: Instant::now(),
    };
    if HOST.set(Mutex::new(state)).is_err() {
        return Err("modpython was initialised twice at once".to_owned());
    }
    Ok(ptr)
}

/// Groups each module's metrics by the collection group that collects
/// them, as gmond selects them (exact name, else case-insensitive prefix;
/// `name_match` by regular expression, Python's `re` standing in for
/// PCRE). gmond calls a group's metrics one after the other every round,
/// so the first call of a round can have the worker make them all at once.
/// A metric in no group, or in several (collected at different times), is
/// called on its own.
fn collection_batches(
    py: Python<'_>,
    metrics: &[MetricState],
    descriptors: &[MetricDescriptor],
    collected: &[gmond_config::CollectedMetric],
) -> (Vec<Option<usize>>, Vec<Vec<usize>>) {
    let names: Vec<&str> = descriptors.iter().map(|d| d.name.as_str()).collect();
    let re = py.import("re").ok();
    let search = |pattern: &str, name: &str| -> bool {
        re.as_ref()
            .and_then(|re| re.call_method1("search", (pattern, name)).ok())
            .is_some_and(|m| !m.is_none())
    };
    let mut keys: Vec<(usize, usize)> = Vec::new();
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut batch_of = vec![None; metrics.len()];
    for (i, metric) in metrics.iter().enumerate() {
        let mut groups: Vec<usize> = collected
            .iter()
            .filter(|entry| entry.selects(&metric.name, &names, &search))
            .map(|entry| entry.group)
            .collect();
        groups.dedup();
        let [group] = groups[..] else { continue };
        let key = (metric.module, group);
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
    (batch_of, batches)
}

fn spawn_worker(targets: &Targets) -> Result<Worker, String> {
    Worker::spawn(Arc::clone(targets))
        .map_err(|e| format!("cannot start a thread for handler calls: {e}"))
}

/// gmond's `handler(index)`: the metric's current value, or its last good
/// one when the call fails, is backed off, or its module is stuck.
pub fn collect(index: i32) -> ffi::g_val_t {
    let Some(mut guard) = host() else {
        return Value::Uint(0).to_g_val();
    };
    let host = &mut *guard;
    let Ok(index) = usize::try_from(index) else {
        return Value::Uint(0).to_g_val();
    };
    if index >= host.metrics.len() {
        return host.self_metric_value(index - host.metrics.len());
    }
    host.collect_python(index)
}

impl Host {
    fn self_metric_value(&self, i: usize) -> ffi::g_val_t {
        let Some(metric) = self.self_metrics.get(i) else {
            log::error!(
                "gmond asked for metric index {}, which modpython never registered",
                i + self.metrics.len()
            );
            return Value::Uint(0).to_g_val();
        };
        let stats: Vec<Stats> = self
            .module_states
            .iter()
            .map(|m| Stats {
                seconds: cycles::seconds(m.ticks),
                ..m.stats
            })
            .collect();
        let snapshot = Snapshot {
            modules_loaded: self.modules.len(),
            modules_failed: self.modules_failed,
            per_module: &stats,
        };
        metric.value(&snapshot).to_g_val()
    }

    fn collect_python(&mut self, index: usize) -> ffi::g_val_t {
        let module = self.metrics[index].module;
        if !self.module_ready(module) {
            return self.metrics[index].fallback();
        }
        if let Some(retry_at) = self.metrics[index]
            .failure
            .as_ref()
            .and_then(|f| f.retry_at)
        {
            if Instant::now() < retry_at {
                return self.metrics[index].fallback();
            }
        }
        let state = &self.module_states[module];
        let (mode, timeout) = (state.mode, state.timeout);
        let started = cycles::now();
        let outcome = match mode {
            CallMode::Inline => self.batched_outcome(index, timeout, CallMode::Inline),
            CallMode::Protected => self.batched_outcome(index, timeout, CallMode::Protected),
        };
        let state = &mut self.module_states[module];
        state.stats.calls += 1;
        // A call can also take a signal from gmond (signal.signal in inline
        // mode, faulthandler.register from any thread); look now and then.
        self.calls_since_signal_check += 1;
        let look = self.calls_since_signal_check >= SIGNAL_CHECK_EVERY;
        if look {
            self.calls_since_signal_check = 0;
        }
        if look && self.last_signal_check.elapsed() >= Duration::from_secs(1) {
            self.last_signal_check = Instant::now();
            for problem in crate::signals::restore_changed() {
                log::warn!(
                    "{}: {problem} (noticed after its call of metric '{}')",
                    state.id,
                    self.metrics[index].name
                );
            }
        }
        state.ticks += cycles::now().wrapping_sub(started);
        let retry_max = self.settings.retry_max_interval;
        let metric = &mut self.metrics[index];
        match outcome {
            Outcome::Value(value) => {
                if let Some(failure) = metric.failure.take() {
                    log::warn!(
                        "{}: metric '{}' recovered after {} failed call(s) over {}s",
                        state.id,
                        metric.name,
                        failure.count,
                        failure.since.elapsed().as_secs()
                    );
                }
                let g = value.to_g_val();
                metric.last_good = Some(g);
                g
            }
            Outcome::Failed(failed) => {
                state.stats.errors += 1;
                metric.record_failure(&state.id, &failed, retry_max, true);
                metric.fallback()
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
                metric.record_failure(&state.id, &reason, retry_max, log_first);
                metric.fallback()
            }
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
            self.metrics[stuck.index].name,
            stuck.since.elapsed().as_secs_f64()
        );
        state.stuck = None;
        true
    }

    /// The outcome of a call: made this round already, in a batch with a
    /// sibling, or now — together with the siblings gmond will ask for next
    /// in the same round, at the price of one hand-off to the worker
    /// (protected) or one acquisition of the GIL (inline).
    fn batched_outcome(&mut self, index: usize, timeout: Duration, mode: CallMode) -> Outcome {
        if let Some(outcome) = self.metrics[index].prefetched.take() {
            return outcome;
        }
        let mut batch = vec![index];
        if let Some(b) = self.batch_of[index] {
            let now = Instant::now();
            batch.extend(self.batches[b].iter().copied().filter(|&j| {
                j != index
                    && self.metrics[j]
                        .failure
                        .as_ref()
                        .and_then(|f| f.retry_at)
                        .is_none_or(|at| now >= at)
            }));
        }
        let reply = match (mode, self.ensure_worker_if(mode == CallMode::Protected)) {
            (CallMode::Protected, Some(worker)) => worker.call_batch(batch, timeout),
            _ => dispatch::BatchReply {
                results: dispatch::call_inline_batch(&self.targets, &batch, timeout),
                stuck: None,
            },
        };
        let mut mine = None;
        for (j, outcome) in reply.results {
            if j == index {
                mine = Some(outcome);
            } else {
                self.metrics[j].prefetched = Some(outcome);
            }
        }
        if let Some(stuck) = reply.stuck {
            // The old worker stays with its call; it exits when the call returns.
            self.worker = None;
            let module = self.metrics[stuck.index].module;
            let elapsed = stuck.since.elapsed();
            log::error!(
                "{}: metric '{}' did not return within {:.1}s; gmond keeps its last good value and the call is left to finish in the background; the module's metrics are not called until it does",
                self.module_states[module].id,
                self.metrics[stuck.index].name,
                elapsed.as_secs_f64()
            );
            self.module_states[module].stuck = Some(stuck);
            return mine.unwrap_or(Outcome::TimedOut(elapsed));
        }
        mine.unwrap_or(Outcome::TimedOut(Duration::ZERO))
    }

    /// The worker for protected calls (if `wanted`), started again if the
    /// last one got stuck.
    fn ensure_worker_if(&mut self, wanted: bool) -> Option<&Worker> {
        if wanted && self.worker.is_none() {
            match spawn_worker(&self.targets) {
                Ok(w) => self.worker = Some(w),
                Err(e) => log::error!("{e}; the call is made on gmond's thread instead"),
            }
        }
        self.worker.as_ref()
    }
}

impl MetricState {
    fn fallback(&self) -> ffi::g_val_t {
        self.last_good
            .unwrap_or_else(|| Value::zero(self.value_type).to_g_val())
    }

    /// Logs the first failure of a run in full, then at most every ten
    /// minutes (formatting a traceback costs more than the call); after a
    /// few failures in a row, calls are spaced out, doubling up to `retry_max`.
    fn record_failure(
        &mut self,
        module: &loader::ModuleRef,
        failed: &Failed,
        retry_max: Duration,
        log_first: bool,
    ) {
        let now = Instant::now();
        match &mut self.failure {
            None if !log_first => {
                self.failure = Some(Failure {
                    since: now,
                    count: 1,
                    last_logged: now,
                    retry_at: None,
                });
            }
            None => {
                let kept = match &self.last_good {
                    Some(_) => "gmond keeps its last good value",
                    None => "it has no good value yet, so gmond gets zero/empty",
                };
                log::error!(
                    "{module}: metric '{}' failed ({kept}; repeats are logged every {} minutes)\n{}",
                    self.name,
                    REPEAT_LOG_EVERY.as_secs() / 60,
                    failed.detail()
                );
                self.failure = Some(Failure {
                    since: now,
                    count: 1,
                    last_logged: now,
                    retry_at: None,
                });
            }
            Some(failure) => {
                failure.count += 1;
                if failure.count >= u64::from(BACKOFF_AFTER) {
                    let doublings = (failure.count - u64::from(BACKOFF_AFTER)).min(16) as u32;
                    let pause = BACKOFF_FIRST.saturating_mul(1 << doublings).min(retry_max);
                    if failure.count == u64::from(BACKOFF_AFTER) {
                        log::warn!(
                            "{module}: metric '{}': {} failures in a row; it is now called at most every {}s, backing off to every {}s while it keeps failing",
                            self.name,
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
                        self.name,
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
/// [`CLEANUP_DEADLINE`] in all: a cleanup that never returns must not keep
/// gmond from exiting or from re-executing itself on SIGHUP.
pub fn cleanup() {
    let Some(mut host) = host() else { return };
    if host.cleaned_up {
        return;
    }
    host.cleaned_up = true;
    // Stop the call worker; it holds no state that needs finishing.
    host.worker = None;
    // Moved, not cloned: gmond's thread must not wait for the GIL here (a
    // stuck call may hold it), so only the cleanup thread touches Python.
    let modules: Vec<(loader::ModuleRef, Py<PyModule>)> = std::mem::take(&mut host.modules)
        .into_iter()
        .map(|m| (m.id, m.module))
        .collect();
    let count = modules.len();
    drop(host);
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
    let deadline = Instant::now() + CLEANUP_DEADLINE;
    let mut current = "metric_cleanup".to_owned();
    loop {
        match progress_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Some(step)) => current = step,
            Ok(None) => break,
            Err(_) => {
                log::error!(
                    "{current} did not return within {}s; gmond goes on without waiting for it",
                    CLEANUP_DEADLINE.as_secs()
                );
                return;
            }
        }
    }
    log::info!("metric_cleanup called for {count} Python module(s)");
}

/// The value gmond gets if `collect` itself panicked: the last good one.
pub fn fallback_value(index: i32) -> ffi::g_val_t {
    host()
        .and_then(|h| {
            h.metrics
                .get(usize::try_from(index).ok()?)
                .map(MetricState::fallback)
        })
        .unwrap_or_else(|| Value::Uint(0).to_g_val())
}
