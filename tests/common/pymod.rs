//! Python modules and pyconfs written inline by the resilience and
//! adversarial suites: a `desc()` helper for descriptors, a pyconf with one
//! collection group, and per-module `modpython.*` settings.
//!
//! Each test binary compiles this module separately and uses only part of it.
#![allow(dead_code)]

/// `body` with a `desc(name, cb, vt="uint", **kw)` helper above it that
/// builds a complete descriptor in group `group`.
pub fn module(group: &str, body: &str) -> String {
    format!(
        r#"
import os, sys, time

_FORMATS = {{"uint": "%u", "int": "%d", "float": "%f", "double": "%f", "string": "%s"}}

def desc(name, cb, vt="uint", **kw):
    d = {{"name": name, "call_back": cb, "time_max": 60, "value_type": vt,
         "units": "", "slope": "both", "format": _FORMATS[vt],
         "description": name, "groups": "{group}"}}
    d.update(kw)
    return d

{body}"#
    )
}

/// A pyconf: one `module` block per `(name, extra lines)`, and one
/// collection group (every second) listing every metric matching one of
/// `patterns`.
pub fn pyconf(blocks: &[(&str, &str)], patterns: &[&str]) -> String {
    let mut s = String::from("modules {\n");
    for (name, extra) in blocks {
        s.push_str(&format!(
            "  module {{\n    name = \"{name}\"\n    language = \"python\"\n    {extra}\n  }}\n"
        ));
    }
    s.push_str("}\ncollection_group {\n  collect_every = 1\n  time_threshold = 1\n");
    for p in patterns {
        s.push_str(&format!("  metric {{ name_match = \"{p}\" }}\n"));
    }
    s.push_str("}\n");
    s
}

/// A per-module host setting for a module block.
pub fn setting(name: &str, value: &str) -> String {
    format!("param \"modpython.{name}\" {{ value = \"{value}\" }}")
}

/// A module body (for [`module`]) with one metric, `metric`, counting its
/// own calls: the healthy neighbour that shows a module is called.
pub fn counter(metric: &str) -> String {
    format!(
        r#"
_n = 0

def count(name):
    global _n
    _n += 1
    return _n

def metric_init(params):
    return [desc("{metric}", count, slope="positive")]
"#
    )
}
