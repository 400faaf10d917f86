//! What is gmond's in the host: `init` reading gmond's parsed
//! configuration into the engine's start, the metric table gmond reads,
//! each `handler(i)` answered with a `g_val_t`, the host's own metrics, and
//! `cleanup`. How calls are made is the engine's (`engine`).
//!
//! gmond calls into us from its main thread only, so the host lives in
//! that thread's storage: no lock on the call path, and a call from any
//! other thread finds no host rather than a data race.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::engine::{Engine, StartInput, Unobserved};
use crate::gmond_config::{self, CollectedMetric, ModuleBlock, Param};
use crate::metric_table::{GmondPool, MetricTable};
use crate::self_metrics::{SelfMetric, Snapshot, Stats};
use crate::value::Value;
use crate::{ffi, permissions, settings};

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
    pub collected: Vec<CollectedMetric>,
    /// gmond's debug level: module logging at info and debug above 1.
    pub debug_level: i32,
    /// The pool gmond passed to init.
    pub pool: GmondPool,
}

pub struct Host {
    engine: Engine,
    /// Metrics after the Python ones in gmond's table.
    self_metrics: Vec<SelfMetric>,
    table: MetricTable,
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

/// gmond's `init`: start the engine, build the metric table.
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
    let started = Engine::start(StartInput {
        dir,
        settings,
        blocks: input.blocks,
        trusted_uids: permissions::trusted_uids(input.gmond_user.as_deref(), true),
        gmond_user: input.gmond_user.clone(),
        collected: input.collected,
        debug_level: input.debug_level,
        timed: false,
    })?;
    let table = MetricTable::build(&started.descriptors, input.pool);
    let ptr = table.as_ptr();
    let host = Host {
        engine: started.engine,
        self_metrics: started.self_metrics,
        table,
        stats_scratch: Vec::new(),
    };
    HOST.with(|h| h.set(Some(Box::leak(Box::new(RefCell::new(host))))));
    Ok(ptr)
}

/// gmond's `handler(index)`: the metric's current value, or its last good
/// one when the call fails, is backed off, or its module is stuck.
pub fn collect(index: i32) -> ffi::g_val_t {
    with_host(|host| match usize::try_from(index) {
        Ok(i) if i < host.engine.metric_count() => {
            host.engine.collect(i, &mut Unobserved).to_g_val()
        }
        Ok(i) => host.self_metric_value(i - host.engine.metric_count()),
        Err(_) => Value::Uint(0).to_g_val(),
    })
    .unwrap_or_else(|| Value::Uint(0).to_g_val())
}

impl Host {
    fn self_metric_value(&mut self, i: usize) -> ffi::g_val_t {
        let Some(metric) = self.self_metrics.get(i) else {
            log::error!(
                "gmond asked for metric index {}, which modpython never registered",
                i + self.engine.metric_count()
            );
            return Value::Uint(0).to_g_val();
        };
        self.engine.stats(&mut self.stats_scratch);
        let snapshot = Snapshot {
            modules_loaded: self.stats_scratch.len(),
            modules_failed: self.engine.modules_failed(),
            per_module: &self.stats_scratch,
        };
        metric.value(&snapshot).to_g_val()
    }
}

/// gmond's `cleanup`: every module's `metric_cleanup()`, once, within
/// the engine's cleanup deadline.
pub fn cleanup() {
    with_host(|host| host.engine.cleanup());
}

/// The value gmond gets if `collect` itself panicked: the last good one.
pub fn fallback_value(index: i32) -> ffi::g_val_t {
    with_host(|h| Some(h.engine.current(usize::try_from(index).ok()?)?.to_g_val()))
        .flatten()
        .unwrap_or_else(|| Value::Uint(0).to_g_val())
}
