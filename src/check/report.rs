//! What `modpython-check` found, and how it shows it: a table of values,
//! every problem with module, file and metric, as text or JSON.

use std::fmt::Write as _;
use std::path::PathBuf;

use log::Level;

use crate::descriptor::{self, ValueType};
use crate::engine::Skip;
use crate::value::Value;
use crate::{ffi, gmond_config};

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
    pub(super) fn new(severity: Severity, message: impl Into<String>) -> Problem {
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
    /// Each round's call: the value as gmond would print it, or why there
    /// is none.
    pub values: Vec<CallResult>,
    /// Seconds each call took.
    pub times: Vec<f64>,
}

impl MetricReport {
    /// Calls that failed or ran late.
    pub fn failures(&self) -> usize {
        self.values
            .iter()
            .filter(|v| matches!(v, CallResult::Failed | CallResult::TimedOut))
            .count()
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
    /// Module lines at debug level, which gmond shows only at debug level
    /// 2 or more, left out for the debug level checked.
    pub hidden_output: usize,
    /// Lines modules printed to stdout, dropped by `module_stdout = discard`.
    pub discarded_output: usize,
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

    pub(super) fn error(&mut self, message: impl Into<String>) {
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
        if !self.output.is_empty() || self.hidden_output > 0 || self.discarded_output > 0 {
            out.push_str("\nWhat modules said (as in gmond's log):\n");
            for line in &self.output {
                let _ = writeln!(out, "  {:<7} {}", level_name(line.level), line.text);
            }
            if self.hidden_output > 0 {
                let _ = writeln!(
                    out,
                    "  ({} line(s) at debug level not shown: gmond logs them only at debug level 2 or more; see them with --debug 2)",
                    self.hidden_output
                );
            }
            if self.discarded_output > 0 {
                let _ = writeln!(
                    out,
                    "  ({} line(s) printed to stdout discarded: module_stdout = discard)",
                    self.discarded_output
                );
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
                    .map(|v| match v.cell() {
                        // Long strings would make the table unreadable; --json has them whole.
                        v if v.chars().count() > 32 => {
                            format!("{}…", v.chars().take(31).collect::<String>())
                        }
                        v => v.to_owned(),
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
                    "{{\"module\":{},\"file\":{},\"metric\":{},\"type\":{},\"units\":{},\"format\":{},\"values\":[{}],\"calls\":[{}],\"failures\":{},\"seconds_per_call\":{},\"max_seconds_per_call\":{}}}",
                    json_str(&m.module),
                    json_str(&m.file.display().to_string()),
                    json_str(&m.name),
                    json_str(m.value_type.as_str()),
                    json_str(&m.units),
                    json_str(&m.format),
                    m.values
                        .iter()
                        .map(|v| match v {
                            CallResult::Value(v) => json_str(v),
                            _ => "null".to_owned(),
                        })
                        .collect::<Vec<_>>()
                        .join(","),
                    m.values
                        .iter()
                        .map(|v| json_str(match v {
                            CallResult::Value(_) => "value",
                            CallResult::Failed => "failed",
                            CallResult::TimedOut => "timeout",
                            CallResult::Skipped(_) => "skipped",
                        }))
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

/// What became of each call, as the report shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum CallResult {
    /// The value as gmond would print it.
    Value(String),
    Failed,
    TimedOut,
    /// Not called this round (why).
    Skipped(Skip),
}

impl CallResult {
    pub(super) fn cell(&self) -> &str {
        match self {
            CallResult::Value(v) => v,
            CallResult::Failed => "FAILED",
            CallResult::TimedOut => "TIMEOUT",
            CallResult::Skipped(_) => "skipped",
        }
    }
}

/// A value as gmond prints it: the metric's format applied by APR's
/// apr_snprintf, gmond's formatter (its `%g`, or a `%.0u` of 0, differ from
/// libc's). The format is checked here, whatever the caller passed: only
/// one that [`descriptor::check_format`] keeps for the value's type reaches
/// the formatter, or else the type's default.
pub(super) fn gmond_text(value: &Value, format: &str) -> String {
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
    let Some(apr_snprintf) = ffi::apr_snprintf() else {
        return format!("{value:?}");
    };
    let written = match value {
        Value::Str(_) => unreachable!("strings returned above"),
        // SAFETY: `format` passed check_format for a uint (or is the uint
        // default): one %u conversion (no size modifier, no '*') and no
        // other directive, so the single c_uint vararg is all it reads;
        // apr_snprintf never writes past `buf.len()` and ends with a NUL.
        Value::Uint(u) => unsafe { apr_snprintf(ptr, buf.len(), fmt.as_ptr(), *u as libc::c_uint) },
        // SAFETY: as above, one %d or %i conversion for the c_int.
        Value::Int(i) => unsafe { apr_snprintf(ptr, buf.len(), fmt.as_ptr(), *i as libc::c_int) },
        // SAFETY: as above, one real conversion (APR reads a double for any
        // size modifier); a float is promoted to double in varargs, as in gmond.
        Value::Float(x) => unsafe { apr_snprintf(ptr, buf.len(), fmt.as_ptr(), f64::from(*x)) },
        // SAFETY: as above, one real conversion for the double.
        Value::Double(x) => unsafe { apr_snprintf(ptr, buf.len(), fmt.as_ptr(), *x) },
    };
    if written < 0 {
        return format!("{value:?}");
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }
}
