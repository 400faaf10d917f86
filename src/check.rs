//! `modpython-check`: tries Python metric modules the way gmond's host would,
//! without gmond, as any user, and reports what it finds.
//!
//! Nothing here re-implements the host: the configuration is parsed by
//! libganglia's own parser ([`gmond_config::parse_config_file`]), modules are
//! loaded by [`loader::load_all`] (which runs [`crate::descriptor::check`])
//! under the host's deadlines ([`interrupt`]), and metrics are called
//! through [`dispatch`] in each module's call mode and under its deadline
//! ([`settings::effective`]), so a call gmond would time out is reported
//! as such. Values are formatted with the metric's format by C's
//! `snprintf`, as gmond does. What the loader would log is collected
//! ([`loader::collect_diagnostics`]) and what modules print or log is
//! captured by this module's logger.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use log::{Level, LevelFilter, Log, Metadata, Record};
use pyo3::prelude::*;

use crate::descriptor::{self, ValueType};
use crate::dispatch::{self, CallTarget, Failed, Outcome, Stuck, Targets, Worker};
use crate::gmond_config::{self, CollectedMetric, ModuleBlock, Param, Selection, select_block};
use crate::permissions;
use crate::python::{self, errors, interrupt, loader, stdio};
use crate::settings::{self, CallMode};
use crate::value::Value;

/// gmond's default configuration file.
pub const DEFAULT_CONF: &str = "/etc/ganglia/gmond.conf";

pub const USAGE: &str = "\
usage: modpython-check [--conf FILE | --pyconf FILE --dir MODULE_DIR]
                       [--module NAME]... [--count N] [--interval SECONDS]
                       [--json] [--verbose]

Loads gmond's Python metric modules the way gmond's modpython.so does, calls
every metric N times and prints a table of the values, then every problem.

  --conf FILE       gmond's configuration, with its includes (default /etc/ganglia/gmond.conf)
  --pyconf FILE     just this module configuration (a .pyconf)...
  --dir DIR         ...with the modules in this directory
  --module NAME     only this module (repeatable)
  --count N         calls per metric (default 1)
  --interval S      seconds between rounds of calls (default 1)
  --json            machine-readable output
  --verbose         also show the host's informational messages

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
        "{USAGE}\n\nHost settings, each a param NAME {{ value = \"...\" }} in the python_module block\n(per module: param \"{}NAME\" in the module's block, for call_timeout and call_mode):\n",
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
// The report
// ---------------------------------------------------------------------------

/// How serious a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One problem: what is wrong, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub severity: Severity,
    pub module: Option<String>,
    pub file: Option<PathBuf>,
    pub metric: Option<String>,
    /// What is wrong; may continue with a traceback on further lines.
    pub message: String,
}

impl Problem {
    fn new(severity: Severity, message: impl Into<String>) -> Problem {
        Problem {
            severity,
            module: None,
            file: None,
            metric: None,
            message: message.into(),
        }
    }

    /// "module 'x' (file): message", as the host logs it.
    pub fn line(&self) -> String {
        let mut text = String::new();
        if let Some(module) = &self.module {
            let _ = write!(text, "module '{module}'");
            if let Some(file) = &self.file {
                let _ = write!(text, " ({})", file.display());
            }
            text.push_str(": ");
        }
        if let Some(metric) = &self.metric {
            if !self.message.contains(&format!("metric '{metric}'")) {
                let _ = write!(text, "metric '{metric}': ");
            }
        }
        text.push_str(&self.message);
        text
    }
}

/// One line a module said (print, logging, ganglia.log_*).
#[derive(Debug, Clone, PartialEq)]
pub struct OutputLine {
    pub level: Level,
    pub text: String,
}

/// One metric and what its calls gave.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricReport {
    pub module: String,
    pub file: PathBuf,
    pub name: String,
    pub value_type: ValueType,
    pub units: String,
    pub format: String,
    /// Each call's value as gmond would print it, or `None` when it failed.
    pub values: Vec<Option<String>>,
    /// Seconds each call took.
    pub times: Vec<f64>,
}

impl MetricReport {
    pub fn failures(&self) -> usize {
        self.values.iter().filter(|v| v.is_none()).count()
    }

    fn mean_ms(&self) -> f64 {
        if self.times.is_empty() {
            0.0
        } else {
            self.times.iter().sum::<f64>() / self.times.len() as f64 * 1000.0
        }
    }

    fn max_ms(&self) -> f64 {
        self.times.iter().cloned().fold(0.0, f64::max) * 1000.0
    }
}

/// Everything one run found.
#[derive(Debug, Default)]
pub struct Report {
    /// What was read, for the header.
    pub source: String,
    pub module_dir: Option<PathBuf>,
    pub python_version: String,
    /// Modules imported with metric_init run, and modules that failed.
    pub loaded_modules: Vec<(String, PathBuf)>,
    pub failed_modules: Vec<(String, PathBuf)>,
    pub metrics: Vec<MetricReport>,
    pub output: Vec<OutputLine>,
    pub problems: Vec<Problem>,
    /// Informational host messages (shown with --verbose).
    pub info: Vec<String>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .count()
    }

    pub fn warnings(&self) -> usize {
        self.problems.len() - self.errors()
    }

    /// 0 no problem, 1 errors, 2 warnings only.
    pub fn exit_code(&self) -> i32 {
        if self.errors() > 0 {
            1
        } else if self.warnings() > 0 {
            2
        } else {
            0
        }
    }

    fn error(&mut self, message: impl Into<String>) {
        self.problems.push(Problem::new(Severity::Error, message));
    }

    /// The human-readable report.
    pub fn to_text(&self, verbose: bool) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "modpython-check: {}", self.source);
        if let Some(dir) = &self.module_dir {
            let _ = writeln!(
                out,
                "module directory {} (Python {})",
                dir.display(),
                self.python_version
            );
        }
        let _ = writeln!(
            out,
            "{} module(s) loaded, {} failed, {} metric(s)",
            self.loaded_modules.len(),
            self.failed_modules.len(),
            self.metrics.len()
        );
        if !self.metrics.is_empty() {
            out.push('\n');
            out.push_str(&self.table());
        }
        if verbose && !self.info.is_empty() {
            out.push_str("\nHost messages:\n");
            for line in &self.info {
                let _ = writeln!(out, "  {}", line.replace('\n', "\n  "));
            }
        }
        if !self.output.is_empty() {
            out.push_str(
                "\nWhat modules said (in gmond's log; info and debug at debug level > 1):\n",
            );
            for line in &self.output {
                let _ = writeln!(out, "  {:<7} {}", level_name(line.level), line.text);
            }
        }
        if !self.problems.is_empty() {
            let _ = writeln!(
                out,
                "\nProblems ({} error(s), {} warning(s)):",
                self.errors(),
                self.warnings()
            );
            let mut sorted: Vec<&Problem> = self.problems.iter().collect();
            sorted.sort_by_key(|p| p.severity);
            for p in sorted {
                let line = p.line();
                let mut lines = line.lines();
                let _ = writeln!(
                    out,
                    "{}: {}",
                    p.severity.as_str(),
                    lines.next().unwrap_or("")
                );
                for more in lines {
                    let _ = writeln!(out, "    {more}");
                }
            }
        }
        let _ = writeln!(
            out,
            "\n{}",
            match self.exit_code() {
                0 => "OK: no problems found".to_owned(),
                1 => format!(
                    "FAILED: {} error(s), {} warning(s)",
                    self.errors(),
                    self.warnings()
                ),
                _ => format!("WARNINGS: {} warning(s)", self.warnings()),
            }
        );
        out
    }

    fn table(&self) -> String {
        let header = ["MODULE", "METRIC", "TYPE", "UNITS", "VALUE(S)", "TIME/CALL"];
        let rows: Vec<[String; 6]> = self
            .metrics
            .iter()
            .map(|m| {
                let values = m
                    .values
                    .iter()
                    .map(|v| match v {
                        // Long strings would make the table unreadable; --json has them whole.
                        Some(v) if v.chars().count() > 32 => {
                            format!("{}…", v.chars().take(31).collect::<String>())
                        }
                        Some(v) => v.clone(),
                        None => "FAILED".to_owned(),
                    })
                    .collect::<Vec<_>>()
                    .join(" | ");
                let time = if m.times.len() > 1 {
                    format!("{:.2} ms (max {:.2})", m.mean_ms(), m.max_ms())
                } else {
                    format!("{:.2} ms", m.mean_ms())
                };
                [
                    m.module.clone(),
                    m.name.clone(),
                    m.value_type.as_str().to_owned(),
                    m.units.clone(),
                    values,
                    time,
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |cells: &[String]| {
            let mut text = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    text.push_str(cell);
                } else {
                    let _ = write!(text, "{cell:<width$}  ", width = widths[i]);
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(&header.map(str::to_owned));
        for row in &rows {
            line(row);
        }
        out
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        let mut out = String::from("{");
        let _ = write!(
            out,
            "\"source\":{},\"module_dir\":{},\"python_version\":{},",
            json_str(&self.source),
            self.module_dir
                .as_ref()
                .map_or("null".to_owned(), |d| json_str(&d.display().to_string())),
            json_str(&self.python_version)
        );
        let modules = |list: &[(String, PathBuf)]| {
            list.iter()
                .map(|(n, p)| {
                    format!(
                        "{{\"name\":{},\"file\":{}}}",
                        json_str(n),
                        json_str(&p.display().to_string())
                    )
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        let _ = write!(
            out,
            "\"modules\":[{}],\"failed_modules\":[{}],",
            modules(&self.loaded_modules),
            modules(&self.failed_modules)
        );
        let metrics = self
            .metrics
            .iter()
            .map(|m| {
                format!(
                    "{{\"module\":{},\"file\":{},\"metric\":{},\"type\":{},\"units\":{},\"format\":{},\"values\":[{}],\"failures\":{},\"seconds_per_call\":{},\"max_seconds_per_call\":{}}}",
                    json_str(&m.module),
                    json_str(&m.file.display().to_string()),
                    json_str(&m.name),
                    json_str(m.value_type.as_str()),
                    json_str(&m.units),
                    json_str(&m.format),
                    m.values
                        .iter()
                        .map(|v| v.as_deref().map_or("null".to_owned(), json_str))
                        .collect::<Vec<_>>()
                        .join(","),
                    m.failures(),
                    json_num(m.mean_ms() / 1000.0),
                    json_num(m.max_ms() / 1000.0)
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let _ = write!(out, "\"metrics\":[{metrics}],");
        let output = self
            .output
            .iter()
            .map(|l| {
                format!(
                    "{{\"level\":{},\"text\":{}}}",
                    json_str(level_name(l.level)),
                    json_str(&l.text)
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let _ = write!(out, "\"output\":[{output}],");
        let opt = |s: Option<&str>| s.map_or("null".to_owned(), json_str);
        let problems = self
            .problems
            .iter()
            .map(|p| {
                format!(
                    "{{\"severity\":{},\"module\":{},\"file\":{},\"metric\":{},\"message\":{}}}",
                    json_str(p.severity.as_str()),
                    opt(p.module.as_deref()),
                    opt(p.file.as_ref().map(|f| f.to_string_lossy()).as_deref()),
                    opt(p.metric.as_deref()),
                    json_str(&p.message)
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let _ = write!(
            out,
            "\"problems\":[{problems}],\"errors\":{},\"warnings\":{},\"exit_code\":{}}}",
            self.errors(),
            self.warnings(),
            self.exit_code()
        );
        out
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warn => "warning",
        Level::Info => "info",
        Level::Debug | Level::Trace => "debug",
    }
}

/// A JSON string literal.
pub fn json_str(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.6}")
    } else {
        "null".to_owned()
    }
}

// ---------------------------------------------------------------------------
// Capturing log output
// ---------------------------------------------------------------------------

/// Collects log records instead of printing them.
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
                    report.error(e);
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
                blocks: parsed.module_blocks(),
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
                    report.error(e);
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
            Some(Setup {
                dir,
                blocks: parsed.module_blocks(),
                host_params: Vec::new(),
                gmond_user: None,
                collected: parsed.collected_metrics(),
                own_config: true,
            })
        }
    }
}

/// Runs the whole check. Installs nothing: call [`install_collector`] first
/// to capture log output (the binary does). Must run on the process's main
/// thread, as gmond's `init` does: the call deadlines
/// ([`interrupt::install`]) need it.
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
        setup
            .blocks
            .retain(|b| options.modules.iter().any(|wanted| b.names(wanted)));
    }

    let (host_settings, setting_problems) = settings::parse_host(&setup.host_params);
    for p in setting_problems {
        report.problems.push(Problem::new(Severity::Warning, p));
    }
    let trusted_uids = match options.source {
        // gmond starts as root: it does not trust whoever runs the checker.
        Source::Conf(_) => permissions::trusted_uids(setup.gmond_user.as_deref(), false),
        // A module under development belongs to whoever writes it.
        Source::Pyconf { .. } => permissions::trusted_uids(None, true),
    };

    if let Err(e) = python::start() {
        report.error(e);
        drain_log(&mut report);
        return report;
    }
    report.python_version = python::python_version();
    // The deadlines of import, metric_init (init_timeout) and inline calls,
    // as in gmond's init.
    if let Err(e) = Python::attach(interrupt::install) {
        report.error(format!("cannot set up call deadlines: {e}"));
        drain_log(&mut report);
        return report;
    }
    let load_options = loader::LoadOptions {
        settings: &host_settings,
        trusted_uids,
    };
    let (loaded, diagnostics) = loader::collect_diagnostics(|| {
        Python::attach(|py| {
            // Module logging at every level: the report shows levels.
            if let Err(e) = python::ganglia::install(py, true) {
                log::warn!("module output is not captured: {e}");
            }
            loader::load_all(py, &setup.dir, &setup.blocks, &load_options)
        })
    });
    report
        .problems
        .extend(diagnostics.into_iter().map(problem_of));
    let loader::Loaded {
        modules,
        metrics,
        failed,
    } = match loaded {
        Ok(l) => l,
        Err(e) => {
            report.error(e);
            drain_log(&mut report);
            return report;
        }
    };
    report.loaded_modules = modules
        .iter()
        .map(|m| (m.id.name.clone(), m.id.path.clone()))
        .collect();
    report.failed_modules = failed
        .iter()
        .map(|m| (m.name.clone(), m.path.clone()))
        .collect();

    report.metrics = metrics
        .iter()
        .map(|m| {
            let module = &modules[m.module].id;
            MetricReport {
                module: module.name.clone(),
                file: module.path.clone(),
                name: m.descriptor.name.clone(),
                value_type: m.descriptor.value_type,
                units: m.descriptor.units.clone(),
                format: m.descriptor.format.clone(),
                values: Vec::new(),
                times: Vec::new(),
            }
        })
        .collect();
    check_collection(&setup, options, &mut report);

    interrupt::set_metric_labels(interrupt::Labels {
        modules: modules.iter().map(|m| m.id.to_string()).collect(),
        metrics: metrics
            .iter()
            .map(|m| (m.module as u32, Arc::from(m.descriptor.name.as_str())))
            .collect(),
    });
    let module_names: Vec<Arc<str>> = modules
        .iter()
        .map(|m| Arc::from(m.id.name.as_str()))
        .collect();
    let calls = Calls {
        module_of: metrics.iter().map(|m| m.module).collect(),
        settings: modules
            .iter()
            .map(|m| settings::effective(&host_settings, &m.overrides))
            .collect(),
        targets: Arc::new(
            metrics
                .into_iter()
                .map(|m| CallTarget {
                    module_name: Arc::clone(&module_names[m.module]),
                    callback: m.callback,
                    py_name: m.py_name,
                    value_type: m.descriptor.value_type,
                })
                .collect(),
        ),
    };
    call_metrics(&calls, options, &mut report);

    cleanup(
        modules.into_iter().map(|m| (m.id, m.module)).collect(),
        &mut report,
    );
    drain_log(&mut report);
    report
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
/// module's own .pyconf) whether each metric they name exists.
fn check_collection(setup: &Setup, options: &Options, report: &mut Report) {
    let names: Vec<&str> = report.metrics.iter().map(|m| m.name.as_str()).collect();
    let found = name_match_results(&setup.collected, &names);
    let mut problems = Vec::new();
    let search = |pattern: &str, metric: &str| match found.get(pattern) {
        Some(Ok(matched)) => matched.contains(metric),
        _ => false,
    };
    for (pattern, result) in &found {
        if let Err(e) = result {
            problems.push(Problem::new(
                Severity::Warning,
                format!(
                    "a collection_group's name_match \"{pattern}\" is not a valid regular expression ({e}); it matches no metric here (gmond uses PCRE, which may read it differently)"
                ),
            ));
        }
    }
    for metric in &report.metrics {
        let name = metric.name.as_str();
        if !setup
            .collected
            .iter()
            .any(|e| e.selects(name, &names, &search))
        {
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
        // With name_match, gmond ignores name.
        for entry in setup.collected.iter().filter(|e| e.name_match.is_none()) {
            let Some(listed) = &entry.name else { continue };
            if !names.iter().any(|n| entry.selects(n, &names, &search)) {
                problems.push(Problem::new(
                    Severity::Warning,
                    format!(
                        "a collection_group lists metric '{listed}', which no module registered; gmond will log \"Unable to find the metric information for '{listed}'\""
                    ),
                ));
            }
        }
    }
    report.problems.extend(problems);
}

/// Every distinct `name_match` expression, with the metric names it finds
/// or why it does not compile: with gmond's libpcre, as gmond and the host
/// match them, or Python's `re.search` (the GIL taken once for all) where
/// libpcre cannot be loaded.
fn name_match_results<'a>(
    entries: &'a [CollectedMetric],
    names: &[&'a str],
) -> HashMap<&'a str, Result<HashSet<&'a str>, String>> {
    let mut results = HashMap::new();
    let patterns: Vec<&str> = entries
        .iter()
        .filter_map(|e| e.name_match.as_deref())
        .collect();
    if patterns.is_empty() {
        return results;
    }
    let pcre = crate::pcre::Matcher::in_process();
    if pcre.available() {
        for pattern in patterns {
            if results.contains_key(pattern) {
                continue;
            }
            let matched = pcre.check(pattern).map(|()| {
                names
                    .iter()
                    .copied()
                    .filter(|name| pcre.search(pattern, name))
                    .collect()
            });
            results.insert(pattern, matched);
        }
        return results;
    }
    Python::attach(|py| {
        for pattern in patterns {
            if results.contains_key(pattern) {
                continue;
            }
            let compiled = py
                .import("re")
                .and_then(|re| re.call_method1("compile", (pattern,)))
                .map_err(|e| errors::summary(py, &e));
            let matched = compiled.map(|regex| {
                names
                    .iter()
                    .copied()
                    .filter(|name| {
                        regex
                            .call_method1("search", (*name,))
                            .is_ok_and(|m| !m.is_none())
                    })
                    .collect()
            });
            results.insert(pattern, matched);
        }
    });
    results
}

/// The loaded metrics, called as the host calls them.
struct Calls {
    targets: Targets,
    /// Each metric's module.
    module_of: Vec<usize>,
    /// Each module's call mode and deadline, host settings and the module's
    /// own overrides combined.
    settings: Vec<(CallMode, Duration)>,
}

/// Calls every metric `count` times, `interval` apart, as gmond would: in
/// the module's call mode, under its deadline, and not while one of the
/// module's calls is stuck.
fn call_metrics(calls: &Calls, options: &Options, report: &mut Report) {
    let count = calls.targets.len();
    let mut worker: Option<Worker> = None;
    let mut stuck: Vec<Option<Stuck>> = calls.settings.iter().map(|_| None).collect();
    // The first failure of each metric, with its traceback.
    let mut first_failure: Vec<Option<(usize, String)>> = vec![None; count];
    for round in 0..options.count {
        if round > 0 {
            std::thread::sleep(options.interval);
        }
        for (i, target) in calls.targets.iter().enumerate() {
            let module = calls.module_of[i];
            let (mode, deadline) = calls.settings[module];
            if let Some(pending) = &stuck[module] {
                if !pending.finished() {
                    report.metrics[i].values.push(None);
                    if first_failure[i].is_none() {
                        first_failure[i] = Some((
                            round as usize + 1,
                            format!(
                                "not called: the module's call of metric '{}' has not returned, and gmond calls none of the module's metrics until it does",
                                report.metrics[pending.index].name
                            ),
                        ));
                    }
                    continue;
                }
                stuck[module] = None;
            }
            let start = Instant::now();
            let outcome = match mode {
                CallMode::Inline => dispatch::call_inline(target, i, deadline),
                CallMode::Protected => protected_call(&mut worker, &calls.targets, i, deadline)
                    .unwrap_or_else(|s| {
                        let elapsed = s.since.elapsed();
                        stuck[module] = Some(s);
                        Outcome::TimedOut(elapsed)
                    }),
            };
            let result = &mut report.metrics[i];
            result.times.push(start.elapsed().as_secs_f64());
            let why = match outcome {
                Outcome::Value(v) => {
                    result.values.push(Some(gmond_text(&v, &result.format)));
                    continue;
                }
                Outcome::Failed(failed) => match failed {
                    Failed::Raised { .. } => {
                        format!("the callback raised an exception\n{}", failed.detail())
                    }
                    _ => failed.detail().to_owned(),
                },
                Outcome::TimedOut(_) => timed_out(mode, deadline),
            };
            result.values.push(None);
            if first_failure[i].is_none() {
                first_failure[i] = Some((round as usize + 1, why));
            }
        }
    }
    for (i, failure) in first_failure.into_iter().enumerate() {
        let Some((call, why)) = failure else { continue };
        let m = &report.metrics[i];
        let problem = Problem {
            severity: Severity::Error,
            module: Some(m.module.clone()),
            file: Some(m.file.clone()),
            metric: Some(m.name.clone()),
            message: format!(
                "metric '{}' failed in {} of {} call(s) (gmond would keep its last good value); first at call {call}: {why}",
                m.name,
                m.failures(),
                m.values.len()
            ),
        };
        report.problems.push(problem);
    }
}

/// A call on the worker, as the host makes it; when the worker gets stuck
/// it is left with its call and the next call gets a fresh one.
fn protected_call(
    worker: &mut Option<Worker>,
    targets: &Targets,
    index: usize,
    deadline: Duration,
) -> Result<Outcome, Stuck> {
    if worker.is_none() {
        match Worker::spawn(Arc::clone(targets)) {
            Ok(w) => *worker = Some(w),
            Err(e) => {
                log::error!(
                    "cannot start a thread for handler calls: {e}; the call is made on this thread instead"
                );
                return Ok(dispatch::call_inline(&targets[index], index, deadline));
            }
        }
    }
    let Some(w) = worker.as_ref() else {
        unreachable!("the worker was just started")
    };
    let result = w.call(index, deadline);
    if result.is_err() {
        *worker = None;
    }
    result
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
    }
}

/// Every module's `metric_cleanup()`, on a thread of its own as in gmond,
/// so a cleanup that never returns (or a stuck call holding the GIL) is
/// reported rather than hanging the checker.
fn cleanup(modules: Vec<(loader::ModuleRef, Py<PyModule>)>, report: &mut Report) {
    enum Progress {
        /// The module (none for the atexit handlers) and a description of the step.
        Started(Option<loader::ModuleRef>, String),
        Done(Vec<loader::Diagnostic>),
    }
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("modpython-cleanup".to_owned())
        .spawn(move || {
            let started = tx.clone();
            let ((), diagnostics) = loader::collect_diagnostics(|| {
                Python::attach(|py| {
                    loader::cleanup_modules(py, &modules, &|step| {
                        let module = match step {
                            loader::CleanupStep::Module(id) => Some(id.clone()),
                            loader::CleanupStep::AtExit => None,
                        };
                        let _ = started.send(Progress::Started(module, step.to_string()));
                    })
                })
            });
            let _ = tx.send(Progress::Done(diagnostics));
        });
    if let Err(e) = spawned {
        report.error(format!(
            "cannot start the cleanup thread ({e}); metric_cleanup is not called"
        ));
        return;
    }
    let deadline = Instant::now() + loader::CLEANUP_DEADLINE;
    let mut current: (Option<loader::ModuleRef>, String) = (None, "metric_cleanup".to_owned());
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Progress::Started(id, step)) => current = (id, step),
            Ok(Progress::Done(diagnostics)) => {
                report
                    .problems
                    .extend(diagnostics.into_iter().map(problem_of));
                return;
            }
            Err(_) => {
                let (module, step) = &current;
                report.problems.push(Problem {
                    severity: Severity::Error,
                    module: module.as_ref().map(|m: &loader::ModuleRef| m.name.clone()),
                    file: module.as_ref().map(|m| m.path.clone()),
                    metric: None,
                    message: format!(
                        "{step} did not return within {}s; gmond goes on without waiting for it",
                        loader::CLEANUP_DEADLINE.as_secs()
                    ),
                });
                return;
            }
        }
    }
}

/// A value as gmond prints it: the metric's format applied by C's snprintf.
/// The format is checked here, whatever the caller passed: only a single
/// conversion for the value's type reaches snprintf, or the type's default.
/// [`descriptor::check_format`] allows only conversions APR's apr_snprintf
/// (gmond's) and libc's print alike, so the text is gmond's.
fn gmond_text(value: &Value, format: &str) -> String {
    let value_type = match value {
        Value::Str(s) => return s.clone(),
        Value::Uint(_) => ValueType::Uint,
        Value::Int(_) => ValueType::Int,
        Value::Float(_) => ValueType::Float,
        Value::Double(_) => ValueType::Double,
    };
    let format = match descriptor::check_format(format, value_type) {
        Ok(()) => format,
        Err(_) => value_type.default_format(),
    };
    let mut buf = [0u8; 256];
    let fmt = gmond_config::c_string(format);
    let ptr = buf.as_mut_ptr() as *mut libc::c_char;
    let written = match value {
        Value::Str(_) => unreachable!("strings returned above"),
        // SAFETY: `format` passed check_format for a uint (or is the uint
        // default): exactly one %u conversion and no other directive, so the
        // single c_uint vararg is what it reads; snprintf never writes past
        // `buf.len()`.
        Value::Uint(u) => unsafe {
            libc::snprintf(ptr, buf.len(), fmt.as_ptr(), *u as libc::c_uint)
        },
        // SAFETY: as above, one %d or %i conversion for the c_int.
        Value::Int(i) => unsafe { libc::snprintf(ptr, buf.len(), fmt.as_ptr(), *i as libc::c_int) },
        // SAFETY: as above, one real conversion; a float is promoted to
        // double in varargs, as in gmond.
        Value::Float(x) => unsafe { libc::snprintf(ptr, buf.len(), fmt.as_ptr(), f64::from(*x)) },
        // SAFETY: as above, one real conversion for the double.
        Value::Double(x) => unsafe { libc::snprintf(ptr, buf.len(), fmt.as_ptr(), *x) },
    };
    if written < 0 {
        return format!("{value:?}");
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
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
    fn values_are_formatted_like_gmond() {
        assert_eq!(gmond_text(&Value::Uint(4_000_000_000), "%u"), "4000000000");
        assert_eq!(gmond_text(&Value::Int(-42), "%d"), "-42");
        assert_eq!(gmond_text(&Value::Float(2.5), "%.2f"), "2.50");
        assert_eq!(gmond_text(&Value::Double(3.25), "%f"), "3.250000");
        assert_eq!(gmond_text(&Value::Str("a b".into()), "%s"), "a b");
        // A format that does not fit the type never reaches snprintf.
        assert_eq!(gmond_text(&Value::Uint(7), "%s"), "7");
        assert_eq!(gmond_text(&Value::Int(-1), "%d %n"), "-1");
        assert_eq!(gmond_text(&Value::Double(0.5), "%s%s"), "0.500000");
    }

    #[test]
    fn help_lists_every_host_setting() {
        let text = help();
        assert!(text.starts_with("usage: modpython-check"));
        for setting in settings::HOST_SETTINGS {
            assert!(text.contains(setting.name) && text.contains(setting.help));
        }
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }
}
