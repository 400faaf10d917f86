//! The host's own metrics (`modpython_*`, group `modpython`): how many
//! modules loaded and failed, and per module the handler calls, errors,
//! timeouts and time spent, so an operator sees in the web front end which
//! module is slow or broken. They are ordinary gmond metrics; a
//! `collection_group` must list them (e.g. `name_match = "^modpython_"`).

use crate::descriptor::{MetricDescriptor, ValueType};
use crate::value::Value;

/// Counters kept for one module (or, summed, for the host).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    pub calls: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub seconds: f64,
    /// Isolated modules: processes started again after the first.
    pub restarts: u64,
    /// Isolated modules: processes killed because a call hung.
    pub kills: u64,
}

impl Stats {
    pub fn add(&mut self, other: &Stats) {
        self.calls += other.calls;
        self.errors += other.errors;
        self.timeouts += other.timeouts;
        self.seconds += other.seconds;
        self.restarts += other.restarts;
        self.kills += other.kills;
    }
}

/// What one self metric reports.
#[derive(Debug, Clone, PartialEq)]
pub enum SelfMetric {
    ModulesLoaded,
    ModulesFailed,
    /// `None`: all modules together.
    Calls(Option<usize>),
    Errors(Option<usize>),
    Timeouts(Option<usize>),
    Millis(Option<usize>),
    Restarts(Option<usize>),
    Kills(Option<usize>),
}

/// The host's numbers a self metric is computed from.
pub struct Snapshot<'a> {
    pub modules_loaded: usize,
    pub modules_failed: usize,
    /// Per loaded module, in load order.
    pub per_module: &'a [Stats],
}

impl SelfMetric {
    pub fn value(&self, snap: &Snapshot<'_>) -> Value {
        let pick = |module: &Option<usize>| -> Stats {
            match module {
                Some(i) => snap.per_module.get(*i).copied().unwrap_or_default(),
                None => snap.per_module.iter().fold(Stats::default(), |mut acc, s| {
                    acc.add(s);
                    acc
                }),
            }
        };
        // Counters wrap like gmond's own uint32 counters; gmetad's COUNTER
        // data sources (slope positive) handle the wrap.
        let wrap = |n: u64| Value::Uint((n % (1u64 << 32)) as u32);
        match self {
            SelfMetric::ModulesLoaded => Value::Uint(snap.modules_loaded as u32),
            SelfMetric::ModulesFailed => Value::Uint(snap.modules_failed as u32),
            SelfMetric::Calls(m) => wrap(pick(m).calls),
            SelfMetric::Errors(m) => wrap(pick(m).errors),
            SelfMetric::Timeouts(m) => wrap(pick(m).timeouts),
            // Whole milliseconds in a uint: gmetad stores slope-positive
            // metrics as RRD COUNTERs, which take integers only.
            SelfMetric::Millis(m) => wrap((pick(m).seconds * 1000.0) as u64),
            SelfMetric::Restarts(m) => wrap(pick(m).restarts),
            SelfMetric::Kills(m) => wrap(pick(m).kills),
        }
    }
}

fn descriptor(
    name: String,
    value_type: ValueType,
    units: &str,
    slope: &str,
    description: String,
) -> MetricDescriptor {
    MetricDescriptor {
        name,
        value_type,
        time_max: 120,
        units: units.to_owned(),
        slope: slope.to_owned(),
        format: value_type.default_format().to_owned(),
        description,
        groups: vec!["modpython".to_owned()],
        extra: Vec::new(),
        callback_key: String::new(),
    }
}

/// Metric names allow what module names allow, minus what gmetad dislikes.
fn metric_safe(module: &str) -> String {
    module
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// One family of per-module counters: constructor, name suffix, type, units, meaning.
type Kind = (
    fn(Option<usize>) -> SelfMetric,
    &'static str,
    ValueType,
    &'static str,
    &'static str,
);

/// The self metrics for these modules, with their descriptors.
pub fn all(modules: &[String]) -> Vec<(SelfMetric, MetricDescriptor)> {
    let mut out = vec![
        (
            SelfMetric::ModulesLoaded,
            descriptor(
                "modpython_modules_loaded".into(),
                ValueType::Uint,
                "modules",
                "zero",
                "Python metric modules loaded by modpython".into(),
            ),
        ),
        (
            SelfMetric::ModulesFailed,
            descriptor(
                "modpython_modules_failed".into(),
                ValueType::Uint,
                "modules",
                "zero",
                "Python metric modules modpython could not load (see gmond's log)".into(),
            ),
        ),
    ];
    let kinds: [Kind; 6] = [
        (
            SelfMetric::Calls,
            "calls",
            ValueType::Uint,
            "calls",
            "handler calls",
        ),
        (
            SelfMetric::Errors,
            "errors",
            ValueType::Uint,
            "calls",
            "handler calls that raised or returned an unusable value",
        ),
        (
            SelfMetric::Timeouts,
            "timeouts",
            ValueType::Uint,
            "calls",
            "handler calls that ran past their deadline",
        ),
        (
            SelfMetric::Millis,
            "ms",
            ValueType::Uint,
            "ms",
            "time spent in handler calls",
        ),
        (
            SelfMetric::Restarts,
            "restarts",
            ValueType::Uint,
            "restarts",
            "module processes started again after a crash, a hang or a failed start (call_mode isolated)",
        ),
        (
            SelfMetric::Kills,
            "kills",
            ValueType::Uint,
            "kills",
            "module processes killed because a call ran past kill_after (call_mode isolated)",
        ),
    ];
    // `my-mod` and `my_mod` (or `Foo` and `foo`) would give the same names;
    // gmond keeps only the last of two metrics with one name.
    let mut keys: Vec<String> = Vec::with_capacity(modules.len());
    for module in modules {
        let base = metric_safe(module);
        let mut key = base.clone();
        let mut n = 2;
        while keys.iter().any(|k| k.eq_ignore_ascii_case(&key)) {
            key = format!("{base}_{n}");
            n += 1;
        }
        keys.push(key);
    }
    for (make, suffix, value_type, units, what) in kinds {
        out.push((
            make(None),
            descriptor(
                format!("modpython_{suffix}"),
                value_type,
                units,
                "positive",
                format!("All Python modules: {what}"),
            ),
        ));
        for (i, module) in modules.iter().enumerate() {
            out.push((
                make(Some(i)),
                descriptor(
                    format!("modpython_{}_{suffix}", keys[i]),
                    value_type,
                    units,
                    "positive",
                    format!("Python module {module}: {what}"),
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values() {
        let metrics = all(&["diskio".into(), "my-mod".into(), "my_mod".into()]);
        let names: Vec<&str> = metrics.iter().map(|(_, d)| d.name.as_str()).collect();
        assert!(names.contains(&"modpython_calls"));
        assert!(names.contains(&"modpython_diskio_timeouts"));
        assert!(names.contains(&"modpython_my_mod_ms"));
        assert!(names.contains(&"modpython_my_mod_2_ms"));
        assert_eq!(names.len(), 2 + 6 * 4);
        let stats = [
            Stats {
                calls: 3,
                errors: 1,
                timeouts: 0,
                seconds: 0.5,
                ..Stats::default()
            },
            Stats {
                calls: 2,
                errors: 0,
                timeouts: 1,
                seconds: 0.25,
                restarts: 2,
                kills: 1,
            },
        ];
        let snap = Snapshot {
            modules_loaded: 2,
            modules_failed: 1,
            per_module: &stats,
        };
        assert_eq!(SelfMetric::Calls(None).value(&snap), Value::Uint(5));
        assert_eq!(SelfMetric::Timeouts(Some(1)).value(&snap), Value::Uint(1));
        assert_eq!(SelfMetric::Millis(None).value(&snap), Value::Uint(750));
        assert_eq!(SelfMetric::ModulesFailed.value(&snap), Value::Uint(1));
        assert_eq!(SelfMetric::Restarts(None).value(&snap), Value::Uint(2));
        assert_eq!(SelfMetric::Kills(Some(1)).value(&snap), Value::Uint(1));
        assert!(metrics.iter().all(|(_, d)| d.groups == ["modpython"]));
    }
}
