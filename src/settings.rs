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
}

impl Default for HostSettings {
    fn default() -> Self {
        HostSettings {
            strict_permissions: true,
            python_path: Vec::new(),
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
];

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
    fn reserved_module_params_are_separated() {
        let (ordinary, reserved) = split_module_params(&[
            param("interval", Some("5")),
            param("modpython.call_timeout", Some("2")),
        ]);
        assert_eq!(ordinary, vec![param("interval", Some("5"))]);
        assert_eq!(reserved, vec![param("modpython.call_timeout", Some("2"))]);
    }
}
