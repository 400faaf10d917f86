//! The host's state for the life of gmond: loaded modules, their metrics,
//! the table gmond reads, and each metric's last good value.
//!
//! gmond calls into us from its main thread only; the mutex is there so the
//! state can be a safe global, not because calls race.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use once_cell::sync::OnceCell;
use pyo3::prelude::*;

use crate::descriptor::ValueType;
use crate::ffi;
use crate::gmond_config::{ModuleBlock, Param};
use crate::metric_table::{GmondPool, MetricTable};
use crate::python::{self, errors, extract, loader};
use crate::value::{self, Value};
use crate::{permissions, settings};

/// How often a metric that keeps failing is mentioned again in the log.
const REPEAT_LOG_EVERY: Duration = Duration::from_secs(600);

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
    /// The pool gmond passed to init.
    pub pool: GmondPool,
}

/// Per-metric run-time state.
struct MetricState {
    module: usize,
    name: String,
    value_type: ValueType,
    callback: Py<PyAny>,
    py_name: Py<pyo3::types::PyString>,
    last_good: Option<Value>,
    failure: Option<Failure>,
}

/// A run of failed calls: logged in full once, then summarised.
struct Failure {
    since: Instant,
    count: u64,
    last_logged: Instant,
}

pub struct Host {
    modules: Vec<loader::LoadedModule>,
    metrics: Vec<MetricState>,
    table: MetricTable,
    cleaned_up: bool,
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
    let dir = check_module_dir(input.module_dir.as_deref())?;
    crate::signals::remember_gmond_handlers();
    python::start()?;
    crate::signals::restore_if_changed("starting Python");

    let options = loader::LoadOptions {
        settings: &settings,
        trusted_uids: permissions::trusted_uids(input.gmond_user.as_deref()),
    };
    let loaded = Python::attach(|py| loader::load_all(py, &dir, &input.blocks, &options))?;
    let table = MetricTable::build(loaded.metrics.iter().map(|m| &m.descriptor), input.pool);
    let metrics: Vec<MetricState> = loaded
        .metrics
        .into_iter()
        .map(|m| MetricState {
            module: m.module,
            name: m.descriptor.name.clone(),
            value_type: m.descriptor.value_type,
            callback: m.callback,
            py_name: m.py_name,
            last_good: None,
            failure: None,
        })
        .collect();
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
    let ptr = table.as_ptr();
    let state = Host {
        modules: loaded.modules,
        metrics,
        table,
        cleaned_up: false,
    };
    if HOST.set(Mutex::new(state)).is_err() {
        return Err("modpython was initialised twice at once".to_owned());
    }
    Ok(ptr)
}

fn check_module_dir(dir: Option<&str>) -> Result<PathBuf, String> {
    let Some(dir) = dir.filter(|d| !d.trim().is_empty()) else {
        return Err(
            "the python_module block has no params: set params = \"<directory of your Python metric modules>\"".to_owned(),
        );
    };
    let path = Path::new(dir);
    match std::fs::metadata(path) {
        Err(e) => Err(format!(
            "cannot open the Python module directory {dir} (params of the python_module block): {e}"
        )),
        Ok(m) if !m.is_dir() => Err(format!(
            "{dir} (params of the python_module block) is not a directory"
        )),
        Ok(_) => Ok(path.to_path_buf()),
    }
}

/// gmond's `handler(index)`: the metric's current value, or its last good
/// one when the callback fails.
pub fn collect(index: i32) -> ffi::g_val_t {
    let Some(mut guard) = host() else {
        return Value::Uint(0).to_g_val();
    };
    let Host {
        modules, metrics, ..
    } = &mut *guard;
    let Some(metric) = usize::try_from(index).ok().and_then(|i| metrics.get_mut(i)) else {
        log::error!("gmond asked for metric index {index}, which modpython never registered");
        return Value::Uint(0).to_g_val();
    };
    let outcome =
        Python::attach(
            |py| match metric.callback.bind(py).call1((metric.py_name.bind(py),)) {
                Ok(obj) => value::convert(&extract::returned(&obj), metric.value_type)
                    .map_err(Failed::Value),
                Err(err) => Err(Failed::Raised(err)),
            },
        );
    let module = &modules[metric.module].id;
    match outcome {
        Ok(value) => {
            if let Some(failure) = metric.failure.take() {
                log::warn!(
                    "{module}: metric '{}' recovered after {} failed call(s) over {}s",
                    metric.name,
                    failure.count,
                    failure.since.elapsed().as_secs()
                );
            }
            let g = value.to_g_val();
            metric.last_good = Some(value);
            g
        }
        Err(failed) => {
            report_failure(metric, module, failed);
            metric.last_good.as_ref().map_or_else(
                || Value::zero(metric.value_type).to_g_val(),
                Value::to_g_val,
            )
        }
    }
}

/// Why a call produced no value.
enum Failed {
    /// The callback raised (SystemExit and KeyboardInterrupt included).
    Raised(PyErr),
    /// It returned something that does not convert to the metric's type.
    Value(value::ConversionError),
}

impl Failed {
    /// The traceback (or reason) in full, for the first report of a run.
    fn detail(&self) -> String {
        match self {
            Failed::Raised(err) => Python::attach(|py| errors::describe(py, err)),
            Failed::Value(e) => e.0.clone(),
        }
    }

    /// One line, for the periodic reminders.
    fn summary(&self) -> String {
        match self {
            Failed::Raised(err) => Python::attach(|py| errors::summary(py, err)),
            Failed::Value(e) => e.0.clone(),
        }
    }
}

/// Logs the first failure of a run in full, then at most every ten minutes;
/// formatting a traceback costs more than the call, so it is only done then.
fn report_failure(metric: &mut MetricState, module: &loader::ModuleRef, failed: Failed) {
    let now = Instant::now();
    match &mut metric.failure {
        None => {
            let kept = match &metric.last_good {
                Some(_) => "gmond keeps its last good value",
                None => "it has no good value yet, so gmond gets zero/empty",
            };
            log::error!(
                "{module}: metric '{}' failed ({kept}; repeats are logged every {} minutes)\n{}",
                metric.name,
                REPEAT_LOG_EVERY.as_secs() / 60,
                failed.detail()
            );
            metric.failure = Some(Failure {
                since: now,
                count: 1,
                last_logged: now,
            });
        }
        Some(failure) => {
            failure.count += 1;
            if now.duration_since(failure.last_logged) >= REPEAT_LOG_EVERY {
                failure.last_logged = now;
                log::error!(
                    "{module}: metric '{}' still failing: {} failed call(s) in {}s; latest: {}",
                    metric.name,
                    failure.count,
                    failure.since.elapsed().as_secs(),
                    failed.summary()
                );
            }
        }
    }
}

/// gmond's `cleanup`: every module's `metric_cleanup()`, once.
pub fn cleanup() {
    let Some(mut host) = host() else { return };
    if host.cleaned_up {
        return;
    }
    host.cleaned_up = true;
    Python::attach(|py| loader::cleanup_all(py, &host.modules));
    log::info!(
        "metric_cleanup called for {} Python module(s)",
        host.modules.len()
    );
}

/// The value gmond gets if `collect` itself panicked: the last good one.
pub fn fallback_value(index: i32) -> ffi::g_val_t {
    host()
        .and_then(|h| {
            h.metrics
                .get(usize::try_from(index).ok()?)
                .and_then(|m| m.last_good.clone())
        })
        .unwrap_or(Value::Uint(0))
        .to_g_val()
}
