//! Which metrics gmond collects, and which together: its
//! `collection_group { metric { name | name_match } }` entries matched
//! against the registered metric names exactly as gmond matches them
//! (gmond-module-abi.md §7). The one implementation of that rule: the
//! engine batches calls with it, and `modpython-check` warns with it.
//!
//! * `name`: the metric of exactly that name if one is registered; else
//!   every metric whose name starts with it, ignoring case.
//! * `name_match`: a regular expression searched in each name (`name` is
//!   then ignored), with gmond's own libpcre ([`pcre`]), or Python's `re`
//!   where libpcre cannot be loaded.
//! * A metric two entries select is collected twice a round.

pub mod pcre;

use std::collections::HashSet;
use std::sync::Arc;

use pyo3::prelude::*;

use crate::gmond_config::CollectedMetric;
use crate::python::errors;

/// Whether `entry` picks `metric`. `registered` tells whether the entry's
/// `name` is a registered metric name (then only that exact metric).
pub fn selects(
    entry: &CollectedMetric,
    metric: &str,
    registered: bool,
    search: &dyn Fn(&str, &str) -> bool,
) -> bool {
    if let Some(pattern) = &entry.name_match {
        return search(pattern, metric);
    }
    let Some(name) = entry.name.as_deref() else {
        return false;
    };
    if registered {
        return metric == name;
    }
    metric
        .as_bytes()
        .get(..name.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(name.as_bytes()))
}

/// Regular expressions as gmond searches them: its libpcre when it is in
/// the process or can be loaded, Python's `re` only otherwise (imported
/// then, not at every start).
pub struct Regex<'py> {
    pcre: pcre::Matcher,
    re: Option<Bound<'py, PyAny>>,
}

impl<'py> Regex<'py> {
    pub fn new(py: Python<'py>) -> Regex<'py> {
        let pcre = pcre::Matcher::in_process();
        let re = if pcre.available() {
            None
        } else {
            py.import("re").ok().map(|m| m.into_any())
        };
        Regex { pcre, re }
    }

    pub fn search(&self, pattern: &str, name: &str) -> bool {
        if self.pcre.available() {
            return self.pcre.search(pattern, name);
        }
        self.re
            .as_ref()
            .and_then(|re| re.call_method1("search", (pattern, name)).ok())
            .is_some_and(|m| !m.is_none())
    }

    /// Why `pattern` does not compile, if it does not.
    pub fn check(&self, pattern: &str) -> Result<(), String> {
        if self.pcre.available() {
            return self.pcre.check(pattern);
        }
        match &self.re {
            Some(re) => re
                .call_method1("compile", (pattern,))
                .map(|_| ())
                .map_err(|e| errors::summary(re.py(), &e)),
            None => Err("neither libpcre nor Python's re is available".to_owned()),
        }
    }

    /// Whether gmond's libpcre does the matching (else Python's `re`).
    pub fn is_gmonds(&self) -> bool {
        self.pcre.available()
    }
}

/// How gmond will collect the metrics: which entries select which metric,
/// in gmond's order, and the batches of calls that follow from it.
#[derive(Debug, Default)]
pub struct Plan {
    /// Per entry (config order), the metrics it selects, by index.
    pub selected: Vec<Vec<usize>>,
    /// Per metric, how many entries select it (0: gmond never calls it).
    pub selected_by: Vec<u32>,
    /// The batch of each metric, if any (see [`Plan::batches`]).
    pub batch_of: Vec<Option<usize>>,
    /// Metrics of one module that exactly one entry of one collection
    /// group selects: gmond calls them one after the other every round of
    /// that group, so the first call of a round can make them all. A metric
    /// two entries select is called on its own (a second call in the round
    /// must not start a second round of its batch).
    pub batches: Vec<Arc<[usize]>>,
    /// `name_match` expressions that do not compile, and why.
    pub bad_patterns: Vec<(String, String)>,
    /// Whether the expressions were matched with gmond's libpcre.
    pub gmond_regex: bool,
}

/// Matches `collected` against `metrics` (each a module index and name).
/// `others` are further registered names (the host's own metrics): gmond
/// tells exact names from prefixes among all it registered.
pub fn plan(
    py: Python<'_>,
    metrics: &[(usize, &str)],
    others: &[&str],
    collected: &[CollectedMetric],
) -> Plan {
    let regex = Regex::new(py);
    let search = |pattern: &str, name: &str| regex.search(pattern, name);
    // Whether an entry's `name` is registered does not depend on the
    // metric: looked up once per entry (a scan per metric and entry was
    // O(N²), ~75 ms at N = 10,000).
    let registered: HashSet<&str> = metrics
        .iter()
        .map(|(_, n)| *n)
        .chain(others.iter().copied())
        .collect();
    let exact: Vec<bool> = collected
        .iter()
        .map(|e| e.name.as_deref().is_some_and(|n| registered.contains(n)))
        .collect();
    let mut plan = Plan {
        selected: vec![Vec::new(); collected.len()],
        selected_by: vec![0; metrics.len()],
        batch_of: vec![None; metrics.len()],
        gmond_regex: regex.is_gmonds(),
        ..Plan::default()
    };
    let mut seen_patterns = HashSet::new();
    for entry in collected {
        if let Some(pattern) = &entry.name_match {
            if seen_patterns.insert(pattern.as_str()) {
                if let Err(why) = regex.check(pattern) {
                    plan.bad_patterns.push((pattern.clone(), why));
                }
            }
        }
    }
    let mut keys: Vec<(usize, usize)> = Vec::new();
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for (i, &(module, name)) in metrics.iter().enumerate() {
        let mut only: Option<usize> = None;
        for (e, entry) in collected.iter().enumerate() {
            if selects(entry, name, exact[e], &search) {
                plan.selected[e].push(i);
                plan.selected_by[i] += 1;
                only = Some(e);
            }
        }
        let (Some(e), 1) = (only, plan.selected_by[i]) else {
            continue;
        };
        let key = (module, collected[e].group);
        let b = match keys.iter().position(|k| *k == key) {
            Some(b) => b,
            None => {
                keys.push(key);
                batches.push(Vec::new());
                batches.len() - 1
            }
        };
        batches[b].push(i);
        plan.batch_of[i] = Some(b);
    }
    plan.batches = batches.into_iter().map(Arc::from).collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_select_like_gmond() {
        let entry = |name: Option<&str>, name_match: Option<&str>| CollectedMetric {
            group: 0,
            name: name.map(str::to_owned),
            name_match: name_match.map(str::to_owned),
        };
        // A stand-in for PCRE: "^x" is a prefix, anything else a substring.
        let search = |pattern: &str, metric: &str| match pattern.strip_prefix('^') {
            Some(p) => metric.starts_with(p),
            None => metric.contains(pattern),
        };
        let all = ["probe", "probe_a", "Probe_B", "dyn_a", "DYN_b", "other"];
        let picked = |e: &CollectedMetric| -> Vec<&str> {
            let registered = e.name.as_deref().is_some_and(|n| all.contains(&n));
            all.iter()
                .copied()
                .filter(|m| selects(e, m, registered, &search))
                .collect()
        };
        // An exact match wins: no prefix matching then.
        assert_eq!(picked(&entry(Some("probe"), None)), ["probe"]);
        // Otherwise every metric starting with the name, ignoring case.
        assert_eq!(picked(&entry(Some("dyn"), None)), ["dyn_a", "DYN_b"]);
        assert_eq!(picked(&entry(Some("PROBE_"), None)), ["probe_a", "Probe_B"]);
        assert!(picked(&entry(Some("nothing"), None)).is_empty());
        // With name_match, only the expression counts; name is ignored.
        assert_eq!(picked(&entry(Some("other"), Some("^dyn"))), ["dyn_a"]);
        assert_eq!(
            picked(&entry(Some("other"), Some("^nothing"))),
            [] as [&str; 0]
        );
        assert!(picked(&entry(None, None)).is_empty());
    }
}
