//! `modpython-check`: tries Python metric modules the way gmond's host
//! would, without gmond, as any user, and reports what it finds.
//!
//! It drives the host's own call engine ([`crate::engine`]): the same
//! start-up (signals, interpreter, loading under `init_timeout`), the same
//! batches per module and collection group, deadlines, stuck calls, GIL
//! checks and back-off. It calls the metrics in gmond's order, one
//! collection_group entry after another, so what a module does under
//! gmond is what the report shows. The configuration is parsed by
//! libganglia's own parser ([`gmond_config::parse_config_file`]); values are
//! formatted with the metric's format by C's `snprintf`, as gmond does.
//! What the loader would log is collected ([`loader::collect_diagnostics`]);
//! everything else the engine and the modules log is captured by this
//! module's logger, at the levels gmond's debug level lets through.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use log::{Level, LevelFilter, Log, Metadata, Record};

pub mod report;

use report::gmond_text;
pub use report::{CallResult, MetricReport, OutputLine, Problem, Report, Severity, json_str};

use crate::collection::Plan;

use crate::config_files;
use crate::engine::call::{Failed, Outcome};
use crate::engine::{Engine, Observer, Skip, StartInput, Started};
use crate::gmond_config::{self, CollectedMetric, ModuleBlock, Param, Selection, select_block};
use crate::permissions;
use crate::python::{self, loader, stdio};
use crate::settings::{self, CallMode};

/// gmond's default configuration file.
pub const DEFAULT_CONF: &str = "/etc/ganglia/gmond.conf";

pub const USAGE: &str = "\
usage: modpython-check [--conf FILE | --pyconf FILE --dir MODULE_DIR]
                       [--module NAME]... [--count N] [--interval SECONDS]
                       [--set NAME=VALUE]... [--virtualenv DIR] [--python-path DIRS]
                       [--mode protected|inline|isolated] [--debug N] [--json] [--verbose]

Loads gmond's Python metric modules the way gmond's modpython.so does, calls
every metric N times in gmond's order and batches, and prints a table of the
values, then every problem, as gmond would log it.

  --conf FILE       gmond's configuration, with its includes (default /etc/ganglia/gmond.conf)
  --pyconf FILE     just this module configuration (a .pyconf)...
  --dir DIR         ...with the modules in this directory
  --module NAME     only this module (repeatable)
  --count N         rounds of calls (default 1)
  --interval S      seconds between rounds (default 1)
  --set NAME=VALUE  a host setting (see below), over the python_module block's (repeatable)
  --virtualenv DIR  the same as --set virtualenv=DIR
  --python-path D   the same as --set python_path=D (directories separated by ':')
  --mode MODE       call every module in this mode (protected, inline or isolated), whatever
                    its configuration says (default: the mode the configuration gives each)
  --debug N         gmond's debug level (default 0): module debug lines show above 1
  --json            machine-readable output
  --verbose         also show the host's informational messages, and each metric's own
                    line behind a problem several metrics share

Exit status: 0 no problem, 1 errors, 2 warnings only, 64 bad usage.";

/// Where the modules and their configuration come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// gmond's whole configuration: the python_module block names the directory.
    Conf(PathBuf),
    /// One `.pyconf` and the directory holding its modules.
    Pyconf { pyconf: PathBuf, dir: PathBuf },
}

/// The command line, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub source: Source,
    pub modules: Vec<String>,
    pub count: u32,
    pub interval: Duration,
    pub json: bool,
    pub verbose: bool,
    /// gmond's debug level to check against.
    pub debug: i32,
    /// Host settings given on the command line, in order.
    pub settings: Vec<(String, String)>,
    /// `--mode`: every module in this call mode.
    pub mode: Option<CallMode>,
}

/// What the command line asked for.
#[derive(Debug, PartialEq)]
pub enum Command {
    Check(Options),
    Help,
}

/// `--help`: the usage, then the host settings the python_module block takes.
pub fn help() -> String {
    let mut text = format!(
        "{USAGE}\n\nHost settings, each a param NAME {{ value = \"...\" }} in the python_module block\n(per module: param \"{}NAME\" in the module's block, for call_timeout, call_mode, kill_after,\nuser and memory_limit):\n",
        settings::MODULE_PREFIX
    );
    for setting in settings::HOST_SETTINGS {
        let _ = writeln!(text, "  {:<19} {}", setting.name, setting.help);
    }
    text.pop();
    text
}

/// Parses the arguments (without the program name).
pub fn parse_args(args: &[String]) -> Result<Command, String> {
    let mut conf = None;
    let mut pyconf = None;
    let mut dir = None;
    let mut options = Options {
        source: Source::Conf(PathBuf::from(DEFAULT_CONF)),
        modules: Vec::new(),
        count: 1,
        interval: Duration::from_secs(1),
        json: false,
        verbose: false,
        debug: 0,
        settings: Vec::new(),
        mode: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag {
            "-h" | "--help" => return Ok(Command::Help),
            "--conf" | "-c" => conf = Some(PathBuf::from(value(flag)?)),
            "--pyconf" => pyconf = Some(PathBuf::from(value(flag)?)),
            "--dir" => dir = Some(PathBuf::from(value(flag)?)),
            "--module" | "-m" => options.modules.push(value(flag)?),
            "--count" | "-n" => {
                let v = value(flag)?;
                options.count =
                    v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                        format!("--count: '{v}' is not a whole number of at least 1")
                    })?;
            }
            "--interval" | "-i" => {
                let v = value(flag)?;
                options.interval = v
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 3600.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| {
                        format!("--interval: '{v}' is not a number of seconds from 0 to 3600")
                    })?;
            }
            "--set" => {
                let v = value(flag)?;
                let Some((name, setting)) = v.split_once('=') else {
                    return Err(format!("--set: '{v}' is not NAME=VALUE"));
                };
                let name = name.trim();
                if !settings::HOST_SETTINGS
                    .iter()
                    .any(|s| s.name.eq_ignore_ascii_case(name))
                {
                    return Err(format!(
                        "--set: unknown host setting '{name}' (known: {})",
                        settings::HOST_SETTINGS
                            .iter()
                            .map(|s| s.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                options.settings.push((name.to_owned(), setting.to_owned()));
            }
            "--virtualenv" => options
                .settings
                .push(("virtualenv".to_owned(), value(flag)?)),
            "--python-path" => options
                .settings
                .push(("python_path".to_owned(), value(flag)?)),
            "--debug" | "-d" => {
                let v = value(flag)?;
                options.debug =
                    v.parse().ok().filter(|n| *n >= 0).ok_or_else(|| {
                        format!("--debug: '{v}' is not a whole number of at least 0")
                    })?;
            }
            "--mode" => {
                let v = value(flag)?;
                options.mode = Some(v.parse().map_err(|e| format!("--mode: {e}"))?);
            }
            "--json" => options.json = true,
            "--verbose" | "-v" => options.verbose = true,
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    options.source = match (conf, pyconf, dir) {
        (Some(_), Some(_), _) => return Err("give --conf or --pyconf, not both".to_owned()),
        (_, Some(_), None) => return Err("--pyconf needs --dir MODULE_DIR".to_owned()),
        (_, None, Some(_)) => {
            return Err("--dir goes with --pyconf (with --conf, the python_module block's params names the directory)".to_owned());
        }
        (_, Some(pyconf), Some(dir)) => Source::Pyconf { pyconf, dir },
        (Some(conf), None, None) => Source::Conf(conf),
        (None, None, None) => Source::Conf(PathBuf::from(DEFAULT_CONF)),
    };
    Ok(Command::Check(options))
}

// ---------------------------------------------------------------------------
// Capturing log output
// ---------------------------------------------------------------------------

/// Collects log records instead of printing them. Module lines arrive
/// already filtered for the debug level checked, by the rule gmond's log
/// follows ([`stdio::shown`]).
struct Collector {
    records: Mutex<Vec<(Level, bool, String)>>,
}

static COLLECTOR: Collector = Collector {
    records: Mutex::new(Vec::new()),
};

impl Log for Collector {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, record: &Record) {
        let from_module = record.target() == stdio::MODULE_LOG_TARGET;
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((record.level(), from_module, record.args().to_string()));
    }

    fn flush(&self) {}
}

/// Makes every `log` record of this process land in the report. Returns
/// false when another logger was installed first.
pub fn install_collector() -> bool {
    let ok = log::set_logger(&COLLECTOR).is_ok();
    if ok {
        log::set_max_level(LevelFilter::Trace);
    }
    ok
}

fn drain_log(report: &mut Report) {
    let (hidden, discarded) = stdio::take_unshown();
    report.hidden_output += hidden;
    report.discarded_output += discarded;
    let records = std::mem::take(&mut *COLLECTOR.records.lock().unwrap_or_else(|p| p.into_inner()));
    for (level, from_module, text) in records {
        if from_module {
            report.output.push(OutputLine { level, text });
        } else if level <= Level::Warn {
            let severity = if level == Level::Error {
                Severity::Error
            } else {
                Severity::Warning
            };
            report.problems.push(Problem::new(severity, text));
        } else {
            report.info.push(text);
        }
    }
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

/// What the configuration says, whichever way it was given.
struct Setup {
    dir: PathBuf,
    blocks: Vec<ModuleBlock>,
    host_params: Vec<Param>,
    gmond_user: Option<String>,
    collected: Vec<CollectedMetric>,
    /// The configuration is the modules' own (a .pyconf), so every metric a
    /// collection_group names should come from them.
    own_config: bool,
}

fn read_setup(options: &Options, report: &mut Report) -> Option<Setup> {
    match &options.source {
        Source::Conf(conf) => {
            report.source = format!("gmond configuration {}", conf.display());
            let parsed = match gmond_config::parse_config_file(conf) {
                Ok(p) => p,
                Err(e) => {
                    report.error(with_location(conf, e));
                    return None;
                }
            };
            let Some(host) = parsed.host_block() else {
                report.error(format!(
                    "{} (with its includes) has no enabled module block named \"python_module\", so gmond does not load modpython; add one (see README.md, \"Installing by hand\")",
                    conf.display()
                ));
                return None;
            };
            match &host.path {
                Some(path) if !Path::new(path).is_file() => report.error(format!(
                    "the python_module block's path {path} does not exist: gmond cannot load modpython"
                )),
                Some(path) if !Path::new(path).is_absolute() => report.problems.push(Problem::new(
                    Severity::Warning,
                    format!("the python_module block's path {path} is relative; Debian's gmond cannot resolve it, use an absolute path"),
                )),
                _ => {}
            }
            let dir = match gmond_config::check_module_dir(host.params.as_deref()) {
                Ok(dir) => dir,
                Err(e) => {
                    report.error(e);
                    return None;
                }
            };
            Some(Setup {
                dir,
                blocks: config_files::located(parsed.file_name(), parsed.module_blocks()),
                host_params: host.param_list,
                gmond_user: parsed.gmond_user(),
                collected: parsed.collected_metrics(),
                own_config: false,
            })
        }
        Source::Pyconf { pyconf, dir } => {
            report.source = format!("{} with modules in {}", pyconf.display(), dir.display());
            let parsed = match gmond_config::parse_config_file(pyconf) {
                Ok(p) => p,
                Err(e) => {
                    report.error(with_location(pyconf, e));
                    return None;
                }
            };
            let dir = match gmond_config::check_dir(dir, "given with --dir") {
                Ok(dir) => dir,
                Err(e) => {
                    report.error(e);
                    return None;
                }
            };
            // A python_module block in the .pyconf carries host settings
            // (its params, the module directory, is --dir's here).
            let host_params = parsed
                .host_block()
                .map(|h| h.param_list)
                .unwrap_or_default();
            Some(Setup {
                dir,
                blocks: config_files::located(parsed.file_name(), parsed.module_blocks()),
                host_params,
                gmond_user: None,
                collected: parsed.collected_metrics(),
                own_config: true,
            })
        }
    }
}

/// gmond's parser's refusal of `conf`, with the file and line it stops at
/// when they can be found: libconfuse names neither for an error inside a
/// section, and gmond says only "Parse error for '<the -c file>'".
fn with_location(conf: &Path, error: String) -> String {
    match config_files::locate_parse_error(conf) {
        Some(found) => format!(
            "gmond's parser rejects {}: {}: {} (line {} reads: {})",
            conf.display(),
            found.origin,
            found.message,
            found.origin.line,
            found.text
        ),
        None => error,
    }
}

/// Runs the whole check. Installs nothing: call [`install_collector`] first
/// to capture log output (the binary does). Must run on the process's main
/// thread, as gmond's `init` does: inline calls and their deadlines
/// ([`crate::python::interrupt`]) need it.
pub fn run(options: &Options) -> Report {
    let mut report = Report::default();
    let Some(mut setup) = read_setup(options, &mut report) else {
        drain_log(&mut report);
        return report;
    };
    report.module_dir = Some(setup.dir.clone());

    if !options.modules.is_empty() {
        for wanted in &options.modules {
            if select_block(&setup.blocks, wanted) == Selection::Unconfigured {
                report.error(format!(
                    "--module {wanted}: no module block with name \"{wanted}\" and language \"python\" in the configuration"
                ));
            }
        }
        // Blocks of another language stay, for the loader's warning about them.
        setup.blocks.retain(|b| {
            options.modules.iter().any(|wanted| {
                b.name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(wanted))
            })
        });
    }

    // The configuration's host settings, then the command line's.
    let mut host_params = setup.host_params.clone();
    host_params.extend(options.settings.iter().map(|(name, value)| Param {
        name: name.clone(),
        value: Some(value.clone()),
    }));
    let (mut host_settings, setting_problems) = settings::parse_host(&host_params);
    host_settings.forced_mode = options.mode;
    for p in setting_problems {
        report.problems.push(Problem::new(Severity::Warning, p));
    }
    let trusted_uids = match options.source {
        // gmond starts as root: it does not trust whoever runs the checker.
        Source::Conf(_) => permissions::trusted_uids(setup.gmond_user.as_deref(), false),
        // A module under development belongs to whoever writes it.
        Source::Pyconf { .. } => permissions::trusted_uids(None, true),
    };

    let (started, diagnostics) = loader::collect_diagnostics(|| {
        Engine::start(StartInput {
            dir: setup.dir.clone(),
            settings: host_settings,
            blocks: setup.blocks.clone(),
            trusted_uids,
            collected: setup.collected.clone(),
            debug_level: options.debug,
            timed: true,
            gmond_user: match options.source {
                Source::Conf(_) => setup.gmond_user.clone(),
                Source::Pyconf { .. } => None,
            },
        })
    });
    take_diagnostics(&mut report, diagnostics);
    report.python_version = python::python_version();
    let Started {
        mut engine,
        descriptors,
        failed,
        ..
    } = match started {
        Ok(s) => s,
        Err(e) => {
            report.error(e);
            drain_log(&mut report);
            return report;
        }
    };
    let modules: Vec<loader::ModuleRef> = engine.modules().cloned().collect();
    report.loaded_modules = modules
        .iter()
        .map(|m| (m.name.clone(), m.path.clone()))
        .collect();
    report.failed_modules = failed
        .iter()
        .map(|m| (m.name.clone(), m.path.clone()))
        .collect();
    if modules.is_empty() && failed.is_empty() && options.modules.is_empty() {
        report.error(format!(
            "no Python module to check: {} has no enabled module block with language \"python\" whose name matches a .py file in {}; check the block's name and language, and the directory",
            report.source,
            setup.dir.display()
        ));
    }

    report.metrics = descriptors[..engine.metric_count()]
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let module = &modules[engine.module_of(i)];
            MetricReport {
                module: module.name.clone(),
                file: module.path.clone(),
                name: d.name.clone(),
                value_type: d.value_type,
                units: d.units.clone(),
                format: d.format.clone(),
                values: Vec::new(),
                times: Vec::new(),
            }
        })
        .collect();
    check_collection(&setup, options, engine.plan(), &mut report);
    // What the engine says of a module or metric comes back with its
    // module, file and metric, as while loading.
    let (summaries, diagnostics) = loader::collect_diagnostics(|| {
        let summaries = call_metrics(&mut engine, options, &mut report);
        engine.cleanup();
        summaries
    });
    take_diagnostics(&mut report, diagnostics);
    report.problems.extend(summaries);
    drain_log(&mut report);
    report
}

/// Warnings and errors become problems; what gmond logs only at debug
/// level 2 (each metric's own line behind a line about several metrics)
/// goes with the host's other informational lines, shown with --verbose.
fn take_diagnostics(report: &mut Report, diagnostics: Vec<loader::Diagnostic>) {
    for d in diagnostics {
        if d.level <= Level::Warn {
            report.problems.push(problem_of(d));
        } else {
            let line = problem_of(d).line();
            report.info.push(line);
        }
    }
}

fn problem_of(d: loader::Diagnostic) -> Problem {
    Problem {
        severity: if d.level == Level::Error {
            Severity::Error
        } else {
            Severity::Warning
        },
        module: d.module.as_ref().map(|m| m.name.clone()),
        file: d.module.as_ref().map(|m| m.path.clone()),
        metric: d.metric,
        message: d.message,
    }
}

/// Whether gmond's collection groups pick up each metric, and (for a
/// module's own .pyconf) whether each metric they name exists: the
/// engine's plan, made with gmond's own rules.
fn check_collection(setup: &Setup, options: &Options, plan: &Plan, report: &mut Report) {
    let mut problems = Vec::new();
    for (pattern, why) in &plan.bad_patterns {
        let whose = if plan.gmond_regex {
            ""
        } else {
            " (checked with Python's re: gmond uses PCRE, which may read it differently)"
        };
        problems.push(Problem::new(
            Severity::Warning,
            format!(
                "a collection_group's name_match \"{pattern}\" is not a valid regular expression ({why}); it matches no metric{whose}"
            ),
        ));
    }
    for (metric, count) in report.metrics.iter().zip(&plan.selected_by) {
        if *count == 0 {
            let name = metric.name.as_str();
            problems.push(Problem {
                severity: Severity::Warning,
                module: Some(metric.module.clone()),
                file: Some(metric.file.clone()),
                metric: Some(name.to_owned()),
                message: format!(
                    "metric '{name}' is in no collection_group, so gmond never collects or sends it (add metric {{ name = \"{name}\" }} to a collection_group)"
                ),
            });
        }
    }
    if setup.own_config && options.modules.is_empty() {
        for (entry, selected) in setup.collected.iter().zip(&plan.selected) {
            // With name_match, gmond ignores name.
            if entry.name_match.is_some() || !selected.is_empty() {
                continue;
            }
            let Some(listed) = &entry.name else { continue };
            problems.push(Problem::new(
                Severity::Warning,
                format!(
                    "a collection_group lists metric '{listed}', which no module registered; gmond will log \"Unable to find the metric information for '{listed}'\""
                ),
            ));
        }
    }
    report.problems.extend(problems);
}

/// Records the engine's calls into the report's rows.
struct Recorder<'a> {
    report: &'a mut Report,
    round: usize,
    settings: &'a [(CallMode, Duration)],
    module_of: &'a [usize],
    /// Per metric: the first failure (round, why) and the first skip.
    first_failure: Vec<Option<(usize, String)>>,
    first_skip: Vec<Option<(usize, Skip)>>,
    /// The metric whose call is stuck, per module (for the skip reason).
    stuck_metric: Vec<Option<usize>>,
}

impl Recorder<'_> {
    fn push(&mut self, index: usize, result: CallResult, seconds: f32) {
        let row = &mut self.report.metrics[index];
        // One entry per round: a metric called twice in a round (two
        // entries select it) shows its last call.
        if row.values.len() > self.round {
            row.values.truncate(self.round);
            row.times.truncate(self.round);
        }
        if !matches!(result, CallResult::Skipped(_)) {
            row.times.push(f64::from(seconds));
        }
        row.values.push(result);
    }
}

impl Observer for Recorder<'_> {
    fn called(&mut self, index: usize, outcome: &Outcome, seconds: f32) {
        let round = self.round + 1;
        let (result, why) = match outcome {
            Outcome::Value(v) => {
                let text = gmond_text(v, &self.report.metrics[index].format);
                (CallResult::Value(text), None)
            }
            Outcome::Failed(failed) => (
                CallResult::Failed,
                Some(match failed {
                    Failed::Raised { summary, .. } => format!("the callback raised {summary}"),
                    Failed::Value(e) => e.0.clone(),
                }),
            ),
            Outcome::TimedOut(_) => {
                let module = self.module_of[index];
                let (mode, deadline) = self.settings[module];
                if mode == CallMode::Protected {
                    self.stuck_metric[module] = Some(index);
                }
                (CallResult::TimedOut, Some(timed_out(mode, deadline)))
            }
        };
        if let Some(why) = why {
            self.first_failure[index].get_or_insert((round, why));
        }
        self.push(index, result, seconds);
    }

    fn skipped(&mut self, index: usize, why: Skip) {
        self.first_skip[index].get_or_insert((self.round + 1, why));
        self.push(index, CallResult::Skipped(why), 0.0);
    }
}

/// Calls the metrics `count` rounds, `interval` apart, through the engine
/// and in gmond's order: each collection_group entry's metrics in turn, so
/// the calls go in the batches, under the deadlines and with the back-off
/// gmond's would. Metrics no entry selects (gmond never calls them) are
/// called on their own after the rest, to show their values.
/// Returns each metric's summary of its failed and skipped calls.
fn call_metrics(engine: &mut Engine, options: &Options, report: &mut Report) -> Vec<Problem> {
    let count = engine.metric_count();
    let settings: Vec<(CallMode, Duration)> = engine.call_settings().collect();
    let module_of: Vec<usize> = (0..count).map(|i| engine.module_of(i)).collect();
    let plan = engine.plan();
    let mut order: Vec<usize> = plan.selected.iter().flatten().copied().collect();
    order.extend((0..count).filter(|&i| plan.selected_by[i] == 0));
    let mut recorder = Recorder {
        report,
        round: 0,
        settings: &settings,
        module_of: &module_of,
        first_failure: vec![None; count],
        first_skip: vec![None; count],
        stuck_metric: vec![None; settings.len()],
    };
    for round in 0..options.count as usize {
        if round > 0 {
            std::thread::sleep(options.interval);
        }
        recorder.round = round;
        for &i in &order {
            engine.collect(i, &mut recorder);
        }
    }
    let Recorder {
        report,
        first_failure,
        first_skip,
        stuck_metric,
        ..
    } = recorder;
    let mut summaries = Vec::new();
    for i in 0..count {
        let m = &report.metrics[i];
        let total = m.values.len();
        let mut problems = Vec::new();
        if let Some((round, why)) = &first_failure[i] {
            problems.push((
                Severity::Error,
                format!(
                    "metric '{}' failed in {} of {total} call(s); first at call {round}: {why}",
                    m.name,
                    m.failures(),
                ),
            ));
        }
        if let Some((round, why)) = first_skip[i] {
            let skipped = m
                .values
                .iter()
                .filter(|v| matches!(v, CallResult::Skipped(_)))
                .count();
            let reason = match why {
                Skip::BackedOff => "it had failed 3 times in a row, and gmond backs such a metric off (calls it at most every 10s, doubling up to retry_max_interval)".to_owned(),
                Skip::ModuleStuck => match stuck_metric[module_of[i]] {
                    Some(s) => format!(
                        "not called: the module's call of metric '{}' has not returned, and gmond calls none of the module's metrics until it does",
                        report.metrics[s].name
                    ),
                    None => "not called: a call of its module has not returned, and gmond calls none of the module's metrics until it does".to_owned(),
                },
                Skip::NoGil => "Python's GIL was held by another thread, so no call could start".to_owned(),
                Skip::AfterLateCall => "a call before it in its batch ran late, and gmond calls the rest of the batch in the next round".to_owned(),
                Skip::ModuleDown => "the module's process was down (it crashed or was killed, and is started again after a pause)".to_owned(),
            };
            problems.push((
                Severity::Warning,
                format!(
                    "metric '{}' was not called in {skipped} of {total} round(s), first in round {round}: {reason}",
                    m.name
                ),
            ));
        }
        for (severity, message) in problems {
            summaries.push(Problem {
                severity,
                module: Some(m.module.clone()),
                file: Some(m.file.clone()),
                metric: Some(m.name.clone()),
                message,
            });
        }
    }
    summaries
}

/// Why gmond would have no value from a call that overran its deadline.
fn timed_out(mode: CallMode, deadline: Duration) -> String {
    let seconds = deadline.as_secs_f64();
    match mode {
        CallMode::Protected => format!(
            "gmond would time this out after {seconds:.1}s (call_timeout): the call did not return in time, and gmond calls none of the module's metrics until it does"
        ),
        CallMode::Inline => format!(
            "gmond would time this out after {seconds:.1}s (call_timeout): the call ran past its deadline and was interrupted (call_mode inline)"
        ),
        CallMode::Isolated => format!(
            "gmond would time this out after {seconds:.1}s (call_timeout): the call did not return in time; gmond calls none of the module's metrics until it does, and kills the module's process after kill_after"
        ),
    }
}

/// The whole program: parse arguments, run, print. Returns the exit status.
pub fn main_with_args(args: &[String]) -> i32 {
    let options = match parse_args(args) {
        Ok(Command::Help) => {
            println!("{}", help());
            return 0;
        }
        Ok(Command::Check(o)) => o,
        Err(e) => {
            eprintln!("modpython-check: {e}\n\n{USAGE}");
            return 64;
        }
    };
    install_collector();
    let report = run(&options);
    if options.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text(options.verbose));
    }
    report.exit_code()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn arguments() {
        let Ok(Command::Check(o)) = parse_args(&args(&[])) else {
            panic!()
        };
        assert_eq!(o.source, Source::Conf(PathBuf::from(DEFAULT_CONF)));
        assert_eq!(o.count, 1);
        let Ok(Command::Check(o)) = parse_args(&args(&[
            "--pyconf",
            "a.pyconf",
            "--dir=/m",
            "--count",
            "3",
            "--interval",
            "0.5",
            "--json",
            "--module",
            "x",
        ])) else {
            panic!()
        };
        assert_eq!(
            o.source,
            Source::Pyconf {
                pyconf: "a.pyconf".into(),
                dir: "/m".into()
            }
        );
        assert_eq!(
            (o.count, o.interval, o.json),
            (3, Duration::from_millis(500), true)
        );
        assert_eq!(o.modules, vec!["x".to_owned()]);
        assert!(parse_args(&args(&["--pyconf", "a"])).is_err());
        assert!(parse_args(&args(&["--count", "0"])).is_err());
        assert!(parse_args(&args(&["--bogus"])).is_err());
        assert_eq!(parse_args(&args(&["-h"])), Ok(Command::Help));
    }

    #[test]
    fn help_lists_every_host_setting() {
        let text = help();
        assert!(text.starts_with("usage: modpython-check"));
        for setting in settings::HOST_SETTINGS {
            assert!(text.contains(setting.name) && text.contains(setting.help));
        }
    }
}
