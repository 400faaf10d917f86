//! Host settings: `param NAME { value = "…" }` inside the `python_module`
//! block (gmond hands them to us as `module_params_list`), and per-module
//! overrides inside a Python module's own block under the reserved prefix
//! `modpython.` — a quoted title such as `param "modpython.call_timeout"`,
//! which no ordinary module parameter uses. Reserved params are taken out
//! before the module's `metric_init` sees its params.
//!
//! Every setting is declared once in [`HOST_SETTINGS`]; unknown names and
//! bad values are reported, never silently ignored.

use std::path::PathBuf;
use std::time::Duration;

use crate::gmond_config::Param;

/// Prefix of the per-module settings in a Python module's block.
pub const MODULE_PREFIX: &str = "modpython.";

/// The host's configuration, with defaults for what is not set.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSettings {
    /// Refuse module files and directories writable by others (sshd's
    /// StrictModes rule), because `metric_init` runs as root.
    pub strict_permissions: bool,
    /// Extra directories put on `sys.path` before the module directory.
    pub python_path: Vec<PathBuf>,
    /// A virtualenv whose site-packages is added (after `python_path`).
    pub virtualenv: Option<PathBuf>,
    /// How long gmond waits for one handler call.
    pub call_timeout: Duration,
    /// Where calls run (see `engine`).
    pub call_mode: CallMode,
    /// Publish the host's own `modpython_*` metrics.
    pub self_metrics: bool,
    /// Longest pause between retries of a handler that keeps failing.
    pub retry_max_interval: Duration,
    /// How long one module's import and `metric_init` may take.
    pub init_timeout: Duration,
    /// What becomes of what modules write to stdout (`print`).
    pub module_stdout: ModuleStdout,
    /// How long an isolated module's call may run before its process is
    /// killed and started again (counted from the call's start).
    pub kill_after: Duration,
    /// Every module in this mode, whatever its configuration says
    /// (`modpython-check --mode`; not a gmond setting).
    pub forced_mode: Option<CallMode>,
}

/// What becomes of module stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleStdout {
    /// gmond's log, at info level (shown at every debug level).
    Log,
    /// Dropped: for sites whose modules print more than anyone reads.
    Discard,
}

impl ModuleStdout {
    fn parse(value: &str) -> Result<ModuleStdout, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "log" => Ok(ModuleStdout::Log),
            "discard" => Ok(ModuleStdout::Discard),
            other => Err(format!("'{other}' is not log or discard")),
        }
    }
}

/// Where handler calls run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallMode {
    /// On a worker thread, gmond waits at most the deadline.
    Protected,
    /// On gmond's thread, interrupted by signal when late.
    Inline,
    /// In a process of the module's own, restarted when it crashes.
    Isolated,
}

impl CallMode {
    fn parse(value: &str) -> Result<CallMode, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "protected" => Ok(CallMode::Protected),
            "inline" => Ok(CallMode::Inline),
            "isolated" => Ok(CallMode::Isolated),
            other => Err(format!("'{other}' is not protected, inline or isolated")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CallMode::Protected => "protected",
            CallMode::Inline => "inline",
            CallMode::Isolated => "isolated",
        }
    }
}

impl std::str::FromStr for CallMode {
    type Err = String;

    fn from_str(s: &str) -> Result<CallMode, String> {
        CallMode::parse(s)
    }
}

/// Per-module overrides (`param "modpython.NAME" { value = … }` in the module's block).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModuleOverrides {
    pub call_timeout: Option<Duration>,
    pub call_mode: Option<CallMode>,
    /// Isolated modules: how long a call may run before the process is killed.
    pub kill_after: Option<Duration>,
    /// Isolated modules: the user the module process runs as from the start.
    pub user: Option<String>,
    /// Isolated modules: the process's data size limit, in bytes.
    pub memory_limit: Option<u64>,
}

/// The per-module settings, for messages.
const MODULE_SETTINGS: &str = "call_timeout, call_mode, kill_after, user, memory_limit";

impl ModuleOverrides {
    /// Reads the reserved params of one module block; problems are returned for logging.
    pub fn parse(reserved: &[Param]) -> (ModuleOverrides, Vec<String>) {
        let mut overrides = ModuleOverrides::default();
        let mut problems = Vec::new();
        for param in reserved {
            let name = param.name.trim();
            let key = name[MODULE_PREFIX.len().min(name.len())..].to_ascii_lowercase();
            let Some(value) = &param.value else {
                problems.push(format!(
                    "setting '{name}' has no value; the host's setting applies"
                ));
                continue;
            };
            let applied = match key.as_str() {
                "call_timeout" => parse_seconds(value).map(|d| overrides.call_timeout = Some(d)),
                "call_mode" => CallMode::parse(value).map(|m| overrides.call_mode = Some(m)),
                "kill_after" => parse_seconds(value).map(|d| overrides.kill_after = Some(d)),
                "user" => {
                    let user = value.trim();
                    if user.is_empty() {
                        Err("the user name is empty".to_owned())
                    } else {
                        overrides.user = Some(user.to_owned());
                        Ok(())
                    }
                }
                "memory_limit" => parse_size(value).map(|b| overrides.memory_limit = Some(b)),
                _ => Err(format!(
                    "unknown per-module setting (known, each after '{MODULE_PREFIX}': {MODULE_SETTINGS})"
                )),
            };
            if let Err(why) = applied {
                problems.push(format!(
                    "setting '{name}': {why}; the host's setting applies"
                ));
            }
        }
        (overrides, problems)
    }
}

/// A memory size: a number with K, M or G (powers of 1024), or a plain
/// number of megabytes (`"512M"`, `"1G"`, `"300"`).
pub fn parse_size(value: &str) -> Result<u64, String> {
    let text = value.trim();
    let (number, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_uppercase()),
        _ => (text, 'M'),
    };
    let factor: u64 = match unit {
        'K' => 1 << 10,
        'M' => 1 << 20,
        'G' => 1 << 30,
        _ => 0,
    };
    match number.trim().parse::<u64>() {
        // Below 32 MiB the interpreter itself does not start.
        Ok(n) if factor > 0 && n.saturating_mul(factor) >= 32 << 20 => Ok(n.saturating_mul(factor)),
        _ => Err(format!(
            "'{text}' is not a memory size of at least 32M (a number with K, M or G, e.g. 512M)"
        )),
    }
}

/// A positive number of seconds, fractions allowed (`"2"`, `"0.5"`).
pub fn parse_seconds(value: &str) -> Result<Duration, String> {
    match value.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "'{}' is not a number of seconds between 0 and 86400",
            value.trim()
        )),
    }
}

impl Default for HostSettings {
    fn default() -> Self {
        HostSettings {
            strict_permissions: true,
            python_path: Vec::new(),
            virtualenv: None,
            call_timeout: Duration::from_secs(3),
            call_mode: CallMode::Protected,
            self_metrics: true,
            retry_max_interval: Duration::from_secs(300),
            init_timeout: Duration::from_secs(30),
            kill_after: Duration::from_secs(30),
            forced_mode: None,
            module_stdout: ModuleStdout::Log,
        }
    }
}

/// One host setting: its name, what it does, and how a value applies.
pub struct Setting {
    pub name: &'static str,
    pub help: &'static str,
    apply: fn(&mut HostSettings, &str) -> Result<(), String>,
}

/// Every host setting modpython understands.
pub const HOST_SETTINGS: &[Setting] = &[
    Setting {
        name: "call_timeout",
        help: "seconds gmond waits for one handler call (default 3); past it the metric keeps its last good value",
        apply: |s, v| parse_seconds(v).map(|d| s.call_timeout = d),
    },
    Setting {
        name: "call_mode",
        help: "protected (default): calls run on a worker thread and can never stall gmond; inline: calls run on gmond's thread, faster, interrupted by signal when late; isolated: each module runs in a process of its own, which a crash, a hard exit or a hang ends without harm to gmond, and which is started again",
        apply: |s, v| CallMode::parse(v).map(|m| s.call_mode = m),
    },
    Setting {
        name: "kill_after",
        help: "isolated modules: seconds a call may run (default 30, at least call_timeout) before the module's process is killed and started again",
        apply: |s, v| parse_seconds(v).map(|d| s.kill_after = d),
    },
    Setting {
        name: "self_metrics",
        help: "yes (default): publish modpython_* metrics about the host itself (group modpython)",
        apply: |s, v| parse_bool(v).map(|b| s.self_metrics = b),
    },
    Setting {
        name: "retry_max_interval",
        help: "longest pause, in seconds, between retries of a handler that keeps failing (default 300)",
        apply: |s, v| parse_seconds(v).map(|d| s.retry_max_interval = d),
    },
    Setting {
        name: "init_timeout",
        help: "seconds one module's import and metric_init may take (default 30) before they are interrupted and the module is skipped",
        apply: |s, v| parse_seconds(v).map(|d| s.init_timeout = d),
    },
    Setting {
        name: "module_stdout",
        help: "log (default): what modules print goes to gmond's log at info level, shown at every debug level; discard: it is dropped (stderr, logging and ganglia.log_* still reach the log)",
        apply: |s, v| ModuleStdout::parse(v).map(|m| s.module_stdout = m),
    },
    Setting {
        name: "strict_permissions",
        help: "yes (default): refuse module files or directories that are not owned by root or gmond's user, or are writable by group or others; no: only warn",
        apply: |s, v| parse_bool(v).map(|b| s.strict_permissions = b),
    },
    Setting {
        name: "python_path",
        help: "directories (separated by ':') added to sys.path before the module directory, e.g. for packages installed outside the system Python",
        apply: |s, v| {
            s.python_path = v
                .split(':')
                .filter(|p| !p.trim().is_empty())
                .map(|p| PathBuf::from(p.trim()))
                .collect();
            Ok(())
        },
    },
    Setting {
        name: "virtualenv",
        help: "a virtualenv (made with the same Python as modpython) whose site-packages is added to sys.path, e.g. /opt/gmond-venv",
        apply: |s, v| {
            let v = v.trim();
            if v.is_empty() {
                return Err("the path is empty".to_owned());
            }
            s.virtualenv = Some(PathBuf::from(v));
            Ok(())
        },
    },
];

/// The call settings in force for one module.
pub fn effective(host: &HostSettings, module: &ModuleOverrides) -> (CallMode, Duration) {
    (
        host.forced_mode
            .unwrap_or(module.call_mode.unwrap_or(host.call_mode)),
        module.call_timeout.unwrap_or(host.call_timeout),
    )
}

/// gmond's accepted spellings of a boolean, in any case.
pub fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Ok(true),
        "no" | "false" | "off" | "0" => Ok(false),
        other => Err(format!("'{other}' is not yes or no")),
    }
}

/// Reads the `python_module` block's params. Problems are returned for the
/// caller to log; the setting concerned keeps its default.
pub fn parse_host(params: &[Param]) -> (HostSettings, Vec<String>) {
    let mut settings = HostSettings::default();
    let mut problems = Vec::new();
    for param in params {
        let name = param.name.trim();
        let Some(setting) = HOST_SETTINGS
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(name))
        else {
            problems.push(format!(
                "unknown host setting '{name}' in the python_module block (known: {}); it is ignored",
                HOST_SETTINGS.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
            ));
            continue;
        };
        let Some(value) = &param.value else {
            problems.push(format!(
                "host setting '{name}' has no value; the default is kept"
            ));
            continue;
        };
        if let Err(why) = (setting.apply)(&mut settings, value) {
            problems.push(format!("host setting '{name}': {why}; the default is kept"));
        }
    }
    (settings, problems)
}

/// Splits a module block's params into the ones for `metric_init` and the
/// reserved `modpython.*` ones (returned by name, prefix removed).
pub fn split_module_params(params: &[Param]) -> (Vec<Param>, Vec<Param>) {
    params.iter().cloned().partition(|p| {
        !p.name
            .trim()
            .to_ascii_lowercase()
            .starts_with(MODULE_PREFIX)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(name: &str, value: Option<&str>) -> Param {
        Param {
            name: name.to_owned(),
            value: value.map(str::to_owned),
        }
    }

    #[test]
    fn defaults_without_params() {
        let (settings, problems) = parse_host(&[]);
        assert_eq!(settings, HostSettings::default());
        assert!(settings.strict_permissions);
        assert!(problems.is_empty());
    }

    #[test]
    fn known_settings_apply_in_any_case() {
        let (settings, problems) = parse_host(&[
            param("Strict_Permissions", Some("no")),
            param("python_path", Some("/opt/a: /opt/b ::")),
        ]);
        assert!(problems.is_empty(), "{problems:?}");
        assert!(!settings.strict_permissions);
        assert_eq!(
            settings.python_path,
            vec![PathBuf::from("/opt/a"), PathBuf::from("/opt/b")]
        );
    }

    #[test]
    fn unknown_and_bad_settings_are_reported() {
        let (settings, problems) = parse_host(&[
            param("strict_permisions", Some("no")),
            param("strict_permissions", Some("maybe")),
            param("python_path", None),
        ]);
        assert_eq!(settings, HostSettings::default());
        assert_eq!(problems.len(), 3);
        assert!(problems[0].contains("unknown host setting 'strict_permisions'"));
        assert!(problems[1].contains("'maybe' is not yes or no"));
        assert!(problems[2].contains("has no value"));
    }

    #[test]
    fn call_settings_and_overrides() {
        let (settings, problems) = parse_host(&[
            param("call_timeout", Some("0.5")),
            param("call_mode", Some("INLINE")),
            param("self_metrics", Some("off")),
        ]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(settings.call_timeout, Duration::from_millis(500));
        assert_eq!(settings.call_mode, CallMode::Inline);
        assert!(!settings.self_metrics);
        assert_eq!(settings.module_stdout, ModuleStdout::Log);
        let (settings_discard, problems) = parse_host(&[param("module_stdout", Some(" Discard "))]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(settings_discard.module_stdout, ModuleStdout::Discard);
        let (_, problems) = parse_host(&[param("module_stdout", Some("syslog"))]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("'syslog' is not log or discard"));
        let (overrides, problems) = ModuleOverrides::parse(&[
            param("modpython.call_timeout", Some("10")),
            param("modpython.call_mode", Some("protected")),
            param("modpython.bogus", Some("1")),
            param("modpython.call_timeout", Some("-1")),
        ]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(
            effective(&settings, &overrides),
            (CallMode::Protected, Duration::from_secs(10))
        );
        assert_eq!(
            effective(&settings, &ModuleOverrides::default()),
            (CallMode::Inline, Duration::from_millis(500))
        );
    }

    #[test]
    fn reserved_module_params_are_separated() {
        let (ordinary, reserved) = split_module_params(&[
            param("interval", Some("5")),
            param("modpython.call_timeout", Some("2")),
        ]);
        assert_eq!(ordinary, vec![param("interval", Some("5"))]);
        assert_eq!(reserved, vec![param("modpython.call_timeout", Some("2"))]);
    }
}
