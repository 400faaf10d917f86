//! Checking one metric descriptor — a dict returned by `metric_init` — and
//! turning it into a [`MetricDescriptor`] gmond can be trusted with.
//!
//! gmond trusts whatever it is handed: a `%s` format on a uint crashes it, a
//! `"` in the units makes the metric silently vanish, a slope in the wrong
//! case is quietly "unspecified". So every key is checked here, once, at
//! init: fatal problems skip the metric, the rest are corrected with a
//! warning that says what was wrong and what is used instead.

use crate::text::gmond_safe;

/// The keys modpython understands; every other key becomes extra metadata.
pub const KNOWN_KEYS: [&str; 9] = [
    "name",
    "call_back",
    "time_max",
    "value_type",
    "units",
    "slope",
    "format",
    "description",
    "groups",
];

/// Longest metric name accepted: gmetad stores each metric as `<name>.rrd`,
/// and file names are limited to 255 bytes.
pub const MAX_NAME_BYTES: usize = 251;

/// The `time_max` used when a descriptor gives none, or an unusable one.
pub const DEFAULT_TIME_MAX: i32 = 60;

/// A metric's declared type, as gmond understands it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    String,
    Uint,
    Int,
    Float,
    Double,
}

impl ValueType {
    /// Parses a `value_type`, ignoring case; `Ok(Some(note))` for an alias we
    /// map (e.g. `uint16` → `uint`).
    pub fn parse(text: &str) -> Result<(ValueType, Option<String>), String> {
        let lower = text.trim().to_ascii_lowercase();
        let exact = match lower.as_str() {
            "string" => Some(ValueType::String),
            "uint" => Some(ValueType::Uint),
            "int" => Some(ValueType::Int),
            "float" => Some(ValueType::Float),
            "double" => Some(ValueType::Double),
            _ => None,
        };
        if let Some(t) = exact {
            return Ok((t, None));
        }
        let alias = match lower.as_str() {
            "uint8" | "uint16" | "uint32" | "unsigned" => Some(ValueType::Uint),
            "int8" | "int16" | "int32" | "short" => Some(ValueType::Int),
            "str" | "text" => Some(ValueType::String),
            _ => None,
        };
        match alias {
            Some(t) => Ok((
                t,
                Some(format!(
                    "value_type '{text}' is not a gmond type; using '{}'",
                    t.as_str()
                )),
            )),
            None => Err(format!(
                "value_type '{text}' is not one of string, uint, int, float, double"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ValueType::String => "string",
            ValueType::Uint => "uint",
            ValueType::Int => "int",
            ValueType::Float => "float",
            ValueType::Double => "double",
        }
    }

    /// The format used when a descriptor's own does not suit the type.
    pub fn default_format(self) -> &'static str {
        match self {
            ValueType::String => "%s",
            ValueType::Uint => "%u",
            ValueType::Int => "%d",
            ValueType::Float | ValueType::Double => "%f",
        }
    }

    /// gmond's bandwidth estimate (`gmond -b`) per value message, as the original host set it.
    pub fn msg_size(self) -> i32 {
        match self {
            ValueType::String => 92,
            ValueType::Double => 44,
            _ => 36,
        }
    }
}

/// A descriptor value, already taken out of Python.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    None,
    Bool(bool),
    Int(Option<i128>),
    Float(f64),
    Str(String),
    Callable,
    List(Vec<Field>),
    Other(String),
}

impl Field {
    fn type_name(&self) -> &str {
        match self {
            Field::None => "None",
            Field::Bool(_) => "bool",
            Field::Int(_) => "int",
            Field::Float(_) => "float",
            Field::Str(_) => "str",
            Field::Callable => "callable",
            Field::List(_) => "list",
            Field::Other(t) => t,
        }
    }

    /// Whether two values are the same, as given (a NaN is the same as a NaN).
    pub fn same_as(&self, other: &Field) -> bool {
        match (self, other) {
            (Field::Float(a), Field::Float(b)) => a.to_bits() == b.to_bits() || a == b,
            (Field::List(a), Field::List(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same_as(y))
            }
            _ => self == other,
        }
    }

    /// The value as a message shows it, in Python's notation.
    pub fn shown(&self) -> String {
        match self {
            Field::None => "None".to_owned(),
            Field::Bool(b) => if *b { "True" } else { "False" }.to_owned(),
            Field::Int(Some(i)) => i.to_string(),
            Field::Int(None) => "a very large int".to_owned(),
            Field::Float(x) => format!("{x:?}"),
            Field::Str(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
            Field::Callable => "a callable".to_owned(),
            Field::List(items) => format!(
                "[{}]",
                items
                    .iter()
                    .map(Field::shown)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Field::Other(t) => format!("a {t}"),
        }
    }

    /// Scalars as text (`5` → "5"); `None` for values with no sensible text.
    fn as_text(&self) -> Option<String> {
        match self {
            Field::Str(s) => Some(s.clone()),
            Field::Int(Some(i)) => Some(i.to_string()),
            Field::Float(x) => Some(x.to_string()),
            Field::Bool(b) => Some(if *b { "True" } else { "False" }.to_owned()),
            _ => None,
        }
    }
}

/// A checked metric, in the terms gmond needs.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricDescriptor {
    pub name: String,
    pub value_type: ValueType,
    pub time_max: i32,
    pub units: String,
    pub slope: String,
    pub format: String,
    pub description: String,
    pub groups: Vec<String>,
    /// Extra keys, in the order given: gmond forwards them as EXTRA_DATA.
    pub extra: Vec<(String, String)>,
    /// The key under which the callback was found (any case of `call_back`).
    pub callback_key: String,
}

/// A correction made to one descriptor, in two forms: the metric's own
/// line, and what every metric with the same problem and the same
/// correction shares, so that a module's metrics that all have it are
/// reported on one line ([`group_warnings`]). `problem` and `outcome` are
/// the grouping key: metrics share a line only when both texts are the
/// same for each, so the line is exactly true of every metric it counts.
/// Neither may name the metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The metric's own line, after "metric 'm': ".
    pub message: String,
    /// What the metrics do, after "N metrics " (a plural verb phrase:
    /// "declare format '%d' for uint values").
    pub problem: String,
    /// What was done instead, and why, after the names ("printed with
    /// '%u' instead, since …").
    pub outcome: String,
}

impl Warning {
    pub fn new(
        message: impl Into<String>,
        problem: impl Into<String>,
        outcome: impl Into<String>,
    ) -> Warning {
        Warning {
            message: message.into(),
            problem: problem.into(),
            outcome: outcome.into(),
        }
    }
}

/// How many metrics a line about several of them names before "…".
pub const NAMES_SHOWN: usize = 3;

/// A module's descriptor warnings as they are reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reported {
    /// A problem only one metric has: that metric's own line.
    One { metric: String, message: String },
    /// A problem several metrics share: one line about all of them, and
    /// each metric's own line, for whoever wants the detail.
    Many {
        line: String,
        each: Vec<(String, String)>,
    },
}

/// Groups one module's `(metric, warning)` pairs by problem and outcome,
/// in the order each problem was first seen: a problem of several metrics
/// becomes "N metrics {problem} (a, b, c, …); {outcome}".
pub fn group_warnings(found: Vec<(String, Warning)>) -> Vec<Reported> {
    /// (problem, outcome): what a line about several metrics says.
    type Key = (String, String);
    /// (metric, its own line).
    type Member = (String, String);
    let mut index: std::collections::HashMap<Key, usize> = std::collections::HashMap::new();
    let mut groups: Vec<(Key, Vec<Member>)> = Vec::new();
    for (metric, warning) in found {
        let key = (warning.problem, warning.outcome);
        let member = (metric, warning.message);
        match index.get(&key) {
            Some(&i) => {
                // The same correction twice in one metric (two groups of
                // the same wrong type) is still one metric.
                if !groups[i].1.contains(&member) {
                    groups[i].1.push(member);
                }
            }
            None => {
                index.insert(key.clone(), groups.len());
                groups.push((key, vec![member]));
            }
        }
    }
    let mut reported = Vec::new();
    for ((problem, outcome), members) in groups {
        let mut metrics: Vec<&str> = Vec::new();
        for (metric, _) in &members {
            if !metrics.contains(&metric.as_str()) {
                metrics.push(metric);
            }
        }
        if metrics.len() < 2 {
            reported.extend(
                members
                    .into_iter()
                    .map(|(metric, message)| Reported::One { metric, message }),
            );
            continue;
        }
        let mut names = metrics[..metrics.len().min(NAMES_SHOWN)].join(", ");
        if metrics.len() > NAMES_SHOWN {
            names.push_str(", …");
        }
        let line = format!("{} metrics {problem} ({names}); {outcome}", metrics.len());
        reported.push(Reported::Many {
            line,
            each: members,
        });
    }
    reported
}

/// The outcome of checking one descriptor.
#[derive(Debug, Default)]
pub struct Checked {
    /// The metric, or why it cannot be registered.
    pub result: Option<MetricDescriptor>,
    pub error: Option<String>,
    /// Corrections made; the metric is registered with them.
    pub warnings: Vec<Warning>,
    /// The metric's name, when one could be read, for messages.
    pub name: Option<String>,
}

/// Checks one descriptor given as (key, value) pairs in dict order.
pub fn check(entries: &[(String, Field)]) -> Checked {
    let mut out = Checked::default();
    let find = |key: &str| -> Option<(&String, &Field)> {
        entries
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(k, v)| (k, v))
    };
    let mut missing: Vec<&str> = Vec::new();
    // Before any check can refuse the descriptor: a misspelt `valu_type` is
    // most useful to hear about exactly when `value_type` is then missing.
    for (key, _) in entries {
        if KNOWN_KEYS.iter().any(|k| k.eq_ignore_ascii_case(key)) {
            continue;
        }
        if let Some(known) = likely_misspelling(key) {
            out.warnings.push(Warning::new(
                format!(
                    "key '{key}' looks like a misspelling of '{known}'; it is not used as '{known}' (other keys are sent as extra metadata)"
                ),
                format!("have a key '{key}', which looks like a misspelling of '{known}'"),
                format!("it is not used as '{known}' but sent as extra metadata"),
            ));
        }
    }

    // name
    let name = match find("name").map(|(_, v)| v) {
        None => Err("the descriptor has no 'name' key".to_owned()),
        Some(Field::Str(s)) => check_name(s),
        Some(f @ Field::Int(Some(_))) => check_name(&f.as_text().unwrap_or_default()),
        Some(f) => Err(format!("'name' must be a str, not {}", f.type_name())),
    };
    let name = match name {
        Ok(n) => {
            if n.contains(':') {
                out.warnings.push(Warning::new(
                    format!(
                        "gmond shows a ':' in a metric name as '_' on every other node: '{}'",
                        n.replace(':', "_")
                    ),
                    "have a ':' in their name",
                    "kept, but every other gmond shows a ':' in a metric name as '_'",
                ));
            }
            out.name = Some(n.clone());
            n
        }
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };

    // call_back
    let callback_key = match find("call_back") {
        Some((k, Field::Callable)) => k.clone(),
        Some((k, f)) => {
            out.error = Some(format!(
                "'{k}' must be a callable (a function), not {}",
                f.type_name()
            ));
            return out;
        }
        None => {
            out.error = Some(
                "the descriptor has no 'call_back' key: gmond would have nothing to call"
                    .to_owned(),
            );
            return out;
        }
    };

    // value_type
    let value_type = match find("value_type").map(|(_, v)| v) {
        None => Err(
            "the descriptor has no 'value_type' key (one of string, uint, int, float, double)"
                .to_owned(),
        ),
        Some(Field::Str(s)) => ValueType::parse(s).map(|(t, note)| {
            if let Some(note) = note {
                out.warnings.push(Warning::new(
                    note,
                    format!("declare value_type '{s}', which is not a gmond type"),
                    format!("'{}' is used", t.as_str()),
                ));
            }
            t
        }),
        Some(f) => Err(format!("'value_type' must be a str, not {}", f.type_name())),
    };
    let value_type = match value_type {
        Ok(t) => t,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };

    // time_max
    let time_max = match find("time_max").map(|(_, v)| v) {
        None => {
            missing.push("time_max");
            DEFAULT_TIME_MAX
        }
        Some(f) => match time_max_of(f) {
            Ok(t) => t,
            Err((what, why)) => {
                out.warnings.push(Warning::new(
                    format!("{what} is {why}; using {DEFAULT_TIME_MAX}"),
                    format!("declare {what}, which is {why}"),
                    format!("{DEFAULT_TIME_MAX} is used"),
                ));
                DEFAULT_TIME_MAX
            }
        },
    };

    let units = text_key(find("units"), "units", "", &mut missing, &mut out.warnings);
    let description = text_key(
        find("description"),
        "description",
        "",
        &mut missing,
        &mut out.warnings,
    );

    // slope
    let default_slope = if value_type == ValueType::String {
        "zero"
    } else {
        "both"
    };
    let slope = match find("slope").map(|(_, v)| v) {
        None => {
            missing.push("slope");
            default_slope.to_owned()
        }
        Some(Field::Str(s)) => {
            let lower = s.trim().to_ascii_lowercase();
            match lower.as_str() {
                "zero" | "positive" | "negative" | "both" | "derivative" | "unspecified" => lower,
                _ => {
                    const SLOPES: &str = "zero, positive, negative, both, derivative, unspecified";
                    out.warnings.push(Warning::new(
                        format!("slope '{s}' is not one of {SLOPES}; using '{default_slope}'"),
                        format!("declare slope '{s}', which is not one of {SLOPES}"),
                        format!("'{default_slope}' is used"),
                    ));
                    default_slope.to_owned()
                }
            }
        }
        Some(f) => {
            out.warnings
                .push(not_a_str("slope", f, &format!("'{default_slope}'")));
            default_slope.to_owned()
        }
    };

    // format
    let format = match find("format").map(|(_, v)| v) {
        None => {
            missing.push("format");
            value_type.default_format().to_owned()
        }
        Some(Field::Str(s)) => match check_format(s, value_type) {
            Ok(()) => s.clone(),
            Err(why) => {
                let (name, default) = (value_type.as_str(), value_type.default_format());
                out.warnings.push(Warning::new(
                    format!("format '{s}' does not suit a {name} metric: {why}; using '{default}'"),
                    format!("declare format '{s}' for {name} values"),
                    format!("printed with '{default}' instead, since {why}"),
                ));
                default.to_owned()
            }
        },
        Some(f) => {
            let default = value_type.default_format();
            out.warnings
                .push(not_a_str("format", f, &format!("'{default}'")));
            default.to_owned()
        }
    };

    // groups
    let groups = match find("groups").map(|(_, v)| v) {
        None => Vec::new(),
        Some(Field::Str(s)) => split_groups(s),
        Some(Field::List(items)) => {
            let mut groups = Vec::new();
            for item in items {
                match item {
                    Field::Str(s) => groups.extend(split_groups(s)),
                    other => out.warnings.push(Warning::new(
                        format!("ignoring a group of type {}", other.type_name()),
                        format!("list a group of type {}", other.type_name()),
                        "it is ignored: a group is a str",
                    )),
                }
            }
            groups
        }
        Some(f) => {
            out.warnings.push(Warning::new(
                format!(
                    "'groups' must be a comma-separated str, not {}; no groups set",
                    f.type_name()
                ),
                format!(
                    "have 'groups' of type {}, not a comma-separated str",
                    f.type_name()
                ),
                "no groups are set",
            ));
            Vec::new()
        }
    };

    // extra keys
    let mut extra = Vec::new();
    for (key, value) in entries {
        if KNOWN_KEYS.iter().any(|k| k.eq_ignore_ascii_case(key)) {
            continue;
        }
        if key.eq_ignore_ascii_case("title") || key.eq_ignore_ascii_case("desc") {
            let why = format!(
                "gmond sets {} itself (use the collection_group's title, or 'description')",
                key.to_ascii_uppercase()
            );
            out.warnings.push(Warning::new(
                format!("extra key '{key}' dropped: {why}"),
                format!("have an extra key '{key}'"),
                format!("dropped, since {why}"),
            ));
            continue;
        }
        match value.as_text() {
            Some(text) => {
                let safe_key = gmond_safe(key).into_owned();
                let safe_value = gmond_safe(&text).into_owned();
                if safe_key.is_empty() {
                    out.warnings.push(Warning::new(
                        "an extra key with an empty name was dropped",
                        "have an extra key with an empty name",
                        "dropped, since gmond cannot show it",
                    ));
                    continue;
                }
                if safe_value != text || safe_key != *key {
                    out.warnings.push(Warning::new(
                        format!("extra key '{key}': characters gmond cannot carry ({UNSAFE}) were replaced"),
                        format!(
                            "have an extra key '{key}' whose name or value contains {UNSAFE}, which gmond cannot carry"
                        ),
                        format!("those are replaced ({REPLACED})"),
                    ));
                }
                extra.push((safe_key, safe_value));
            }
            None => out.warnings.push(Warning::new(
                format!(
                    "extra key '{key}' dropped: its value is {}, not a str or number",
                    value.type_name()
                ),
                format!(
                    "have an extra key '{key}' whose value is {}",
                    value.type_name()
                ),
                "dropped, since extra metadata must be a str or number",
            )),
        }
    }

    if !missing.is_empty() {
        let keys = missing
            .iter()
            .map(|k| format!("'{k}'"))
            .collect::<Vec<_>>()
            .join(", ");
        // The defaults depend on the type: naming them keeps a line about
        // several metrics exact.
        let defaults = missing
            .iter()
            .map(|k| match *k {
                "time_max" => format!("time_max {time_max}"),
                "slope" => format!("slope '{slope}'"),
                "format" => format!("format '{format}'"),
                other => format!("{other} ''"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        out.warnings.push(Warning::new(
            format!("missing {keys}; using {defaults}"),
            format!("have no {keys}"),
            format!("the defaults are used: {defaults}"),
        ));
    }

    let mut descriptor = MetricDescriptor {
        name,
        value_type,
        time_max,
        units,
        slope,
        format,
        description,
        groups,
        extra,
        callback_key,
    };
    fit_in_xml_lines(&mut descriptor, &mut out.warnings);
    match fit_in_packet(&mut descriptor) {
        Ok(None) => {}
        Ok(Some(note)) => out.warnings.push(Warning::new(
            note,
            format!(
                "have metadata too large for one gmond packet ({} bytes)",
                crate::ffi::GANGLIA_MAX_MESSAGE_LEN
            ),
            "their descriptions are shortened to fit",
        )),
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    }
    out.result = Some(descriptor);
    out
}

fn check_name(name: &str) -> Result<String, String> {
    if name.trim().is_empty() {
        return Err("'name' is empty".to_owned());
    }
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '"' | '<' | '>' | '&' | '/') || c.is_control())
    {
        return Err(format!(
            "name {name:?} contains {c:?}, which gmond or gmetad cannot carry in a metric name"
        ));
    }
    if name.eq_ignore_ascii_case("heartbeat") || name.eq_ignore_ascii_case("location") {
        return Err(format!(
            "'{name}' is a name gmond keeps for itself and never shows as a metric; choose another"
        ));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "name '{}…' is {} bytes long; gmetad's limit is {MAX_NAME_BYTES}",
            crate::text::truncate_utf8(name, 40),
            name.len()
        ));
    }
    Ok(name.to_owned())
}

/// The time_max given, or what it was ("time_max \"x\"") and why it
/// cannot be used ("not a whole number of seconds").
fn time_max_of(field: &Field) -> Result<i32, (String, &'static str)> {
    let value: i128 = match field {
        Field::Int(Some(i)) => *i,
        Field::Float(x) if x.is_finite() => x.trunc() as i128,
        Field::Str(s) => s
            .trim()
            .parse::<i128>()
            .map_err(|_| (format!("time_max {s:?}"), "not a whole number of seconds"))?,
        f => {
            return Err((
                format!("a time_max of type {}", f.type_name()),
                "not a number",
            ));
        }
    };
    if value <= 0 || value > i128::from(i32::MAX) {
        return Err((
            format!("time_max {value}"),
            "not a positive number of seconds that fits gmond's int",
        ));
    }
    Ok(value as i32)
}

/// What gmond cannot carry in its metadata, and what [`gmond_safe`] makes of it.
const UNSAFE: &str = "\" < > & or control characters";
const REPLACED: &str = "\" by ', < by (, > by ), & by +, control characters by spaces";

/// A known key whose value is not text: the default is used.
fn not_a_str(key: &str, field: &Field, default: &str) -> Warning {
    Warning::new(
        format!(
            "'{key}' must be a str, not {}; using {default}",
            field.type_name()
        ),
        format!("have a '{key}' of type {}, not str", field.type_name()),
        format!("{default} is used"),
    )
}

/// A text key: made safe for gmond, with a warning when that changed it.
fn text_key<'a>(
    found: Option<(&'a String, &'a Field)>,
    key: &'static str,
    default: &str,
    missing: &mut Vec<&'static str>,
    warnings: &mut Vec<Warning>,
) -> String {
    match found {
        None => {
            missing.push(key);
            default.to_owned()
        }
        Some((_, field)) => match field.as_text() {
            Some(text) => {
                let safe = gmond_safe(&text);
                if safe != text {
                    warnings.push(Warning::new(
                        format!(
                            "{key} {text:?} contains characters gmond cannot carry ({UNSAFE}); using {safe:?}"
                        ),
                        format!(
                            "have {} containing {UNSAFE}, which gmond cannot carry",
                            if key == "units" { "units" } else { "a description" }
                        ),
                        format!("those are replaced ({REPLACED})"),
                    ));
                }
                safe.into_owned()
            }
            None => {
                warnings.push(not_a_str(key, field, &format!("{default:?}")));
                default.to_owned()
            }
        },
    }
}

/// `"a, b ,c,,"` → `["a", "b", "c"]`.
pub fn split_groups(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(|g| gmond_safe(g).into_owned())
        .collect()
}

/// The widest field a format may ask for (width or precision). gmond
/// writes each metric as one XML line of at most 1024 bytes, beside a name
/// of up to 251 bytes and units of up to 200; 99 keeps the value well
/// inside what is left.
pub const MAX_FORMAT_WIDTH: usize = 99;

/// The format rule (docs/writing-modules.md, "How a format is checked").
///
/// gmond prints a numeric value with APR's `apr_snprintf(buf, len,
/// format, value)`, passing a uint as a 32-bit unsigned int, an int as a
/// 32-bit int and a float or double as a double, and refuses to publish a
/// metric whose text `strtod` does not read to the end (the metric then
/// never appears; a `%s` crashes gmond first). A format is kept when, for
/// every value of the type, it prints the number the type's own conversion
/// prints (`%u`; `%d` or `%i`; `f e E g G` to the precision the format asks
/// for), in a form strtod reads whole: leading spaces, a width (not
/// left-justified) and the `0 + space #` flags pad or sign it, and APR
/// ignores a size modifier on a real conversion. Anything else is refused;
/// the `Err` says what gmond would have printed with it, as a clause that
/// starts with the format ("'%d' shows values …"), for "…, since {why}".
pub fn check_format(format: &str, value_type: ValueType) -> Result<(), String> {
    let f = format;
    let type_name = value_type.as_str();
    if value_type == ValueType::String {
        return if f == "%s" {
            Ok(())
        } else {
            Err(
                "gmond sends string values as they are, never through a format, and '%s' is the format that says so"
                    .to_owned(),
            )
        };
    }
    if f.is_empty() {
        return Err("an empty format makes gmond show an empty value".to_owned());
    }
    let Some(start) = f.find('%') else {
        return Err(format!(
            "'{f}' has no % conversion, so gmond would show the text '{f}' in place of every value"
        ));
    };
    let spec = Spec::parse(&f[start + 1..]);
    let is_real = matches!(value_type, ValueType::Float | ValueType::Double);
    if spec.star {
        return Err(format!(
            "'{f}' takes a width or precision ('*') from an argument gmond does not pass, so it would print an unrelated number"
        ));
    }
    let Some(conversion) = spec.conversion else {
        return Err(format!(
            "'{f}' ends before its conversion character, so gmond would print no number"
        ));
    };
    match conversion {
        '%' => {
            return Err(format!(
                "'{f}' prints a '%' sign, not the number, and gmond refuses that, so the metric would never appear"
            ));
        }
        // Observed: a '%s' on a uint crashed gmond (SIGSEGV).
        's' if is_real => {
            return Err(format!(
                "'{f}' makes gmond read the {type_name} as the address of a text: gmond would crash or print garbage"
            ));
        }
        's' => {
            return Err(format!(
                "'{f}' makes gmond read the {type_name} as the address of a text: gmond would crash"
            ));
        }
        'n' => {
            return Err(format!(
                "'{f}' makes gmond write through the {type_name} as if it were an address: gmond would crash"
            ));
        }
        'p' => {
            return Err(format!(
                "'{f}' is APR's conversion for addresses: gmond would print no decimal number"
            ));
        }
        'c' => {
            return Err(format!(
                "'{f}' prints the value as a character, not as a number"
            ));
        }
        // x86-64 passes integers and doubles in different registers: the
        // conversion reads whatever its kind of register held.
        'd' | 'i' | 'u' | 'o' | 'x' | 'X' if is_real => {
            return Err(format!(
                "'{f}' expects an integer, but gmond passes the {type_name} as a floating-point number: it would print an unrelated integer"
            ));
        }
        'f' | 'e' | 'E' | 'g' | 'G' if !is_real => {
            return Err(format!(
                "'{f}' expects a floating-point number, but gmond passes the {type_name} as an integer: it would print an unrelated number"
            ));
        }
        'd' | 'i' | 'u' | 'o' | 'x' | 'X' | 'f' | 'e' | 'E' | 'g' | 'G' => {}
        // APR prints an unknown conversion as its own text: "%" and the
        // character, then the rest of the format.
        other => {
            let printed = format!("%{other}{}", spec.rest);
            let what = match (spec.modifier, other) {
                (Some(m), 'h' | 'l' | 'q' | 'L' | 'j' | 'z' | 't') => {
                    format!("uses a size modifier ('{m}{other}') that")
                }
                (None, 'L' | 'j' | 'z' | 't') => format!("uses a size modifier ('{other}') that"),
                _ => format!("uses a conversion ('%{other}') that"),
            };
            return Err(format!(
                "'{f}' {what} gmond's formatter (APR's apr_snprintf) does not have: gmond would print the text '{printed}', which it refuses as not a number, so the metric would never appear"
            ));
        }
    }
    if !is_real {
        if matches!(conversion, 'o' | 'x' | 'X') {
            let (base, n) = if conversion == 'o' {
                ("octal", 8u32)
            } else {
                ("hexadecimal", 255)
            };
            let shown = match (conversion, spec.alternate) {
                ('o', false) => format!("{n:o}"),
                ('o', true) => format!("0{n:o}"),
                ('x', false) => format!("{n:x}"),
                ('x', true) => format!("0x{n:x}"),
                (_, false) => format!("{n:X}"),
                (_, true) => format!("0X{n:X}"),
            };
            return Err(format!(
                "'{f}' prints the value in {base} ({n} as '{shown}'), not as the decimal number gmond and gmetad read"
            ));
        }
        match spec.modifier {
            Some('h') => {
                let example = match (value_type, conversion) {
                    (ValueType::Uint, 'u') => "65536 as 0",
                    (ValueType::Uint, _) => "65535 as -1",
                    (_, 'u') => "-1 as 65535",
                    _ => "32768 as -32768",
                };
                return Err(format!("'{f}' cuts values to 16 bits ({example})"));
            }
            // On x86-64 APR reads `l` and `q` as 64 bits.
            Some(_) => {
                return Err(format!(
                    "'{f}' reads a 64-bit number where gmond passes a 32-bit {type_name}: the other 32 bits are whatever was left over, so it can print a wrong number"
                ));
            }
            None => {}
        }
        match (value_type, conversion) {
            (ValueType::Uint, 'd' | 'i') => {
                return Err(format!(
                    "'{f}' shows values from 2147483648 up as negative numbers (4294967295 as -1)"
                ));
            }
            (ValueType::Int, 'u') => {
                return Err(format!(
                    "'{f}' shows negative values as large positive numbers (-1 as 4294967295)"
                ));
            }
            _ => {}
        }
    }
    // Verified with gmond 3.7.2: "%-8u" gives "Error 4 setting the modular
    // data" at every send, and the metric never appears.
    if spec.left && spec.width.unwrap_or(0) > 1 {
        return Err(format!(
            "'{f}' pads the number with spaces on its right, and gmond refuses a value with anything after the number, so the metric would never appear"
        ));
    }
    if let Some(n) = spec
        .width
        .into_iter()
        .chain(spec.precision)
        .find(|&n| n > MAX_FORMAT_WIDTH)
    {
        return Err(format!(
            "'{f}' asks for {n} characters, and modpython allows widths and precisions up to {MAX_FORMAT_WIDTH}, so that a metric's line in gmond's XML stays under 1024 bytes"
        ));
    }
    let before = &f[..start];
    if !before.bytes().all(|b| b == b' ') {
        return Err(format!(
            "'{f}' prints '{before}' before the number, {}",
            read_as(before)
        ));
    }
    if !spec.rest.is_empty() {
        if spec.rest.replace("%%", "").contains('%') {
            return Err(format!(
                "'{f}' has a second conversion, for which gmond passes no value: gmond would print garbage or crash"
            ));
        }
        let printed = spec.rest.replace("%%", "%");
        if printed.bytes().all(|b| b == b' ') {
            return Err(format!(
                "'{f}' prints spaces after the number, and gmond refuses a value with anything after the number, so the metric would never appear"
            ));
        }
        return Err(format!(
            "'{f}' prints '{printed}' after the number, {}",
            read_as(&printed)
        ));
    }
    Ok(())
}

/// A width or precision: its digits, or `*` (noted in `star`).
fn field_number(
    chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
    star: &mut bool,
) -> Option<usize> {
    if chars.next_if(|&(_, c)| c == '*').is_some() {
        *star = true;
        return None;
    }
    let mut n: Option<usize> = None;
    while let Some((_, c)) = chars.next_if(|&(_, c)| c.is_ascii_digit()) {
        let digit = c as usize - '0' as usize;
        n = Some(n.unwrap_or(0).saturating_mul(10).saturating_add(digit));
    }
    n
}

/// What gmond makes of `text` printed next to the number.
fn read_as(text: &str) -> &'static str {
    if text
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '.' | 'e' | 'E' | ' '))
    {
        "which gmond would take as part of the number (or refuse)"
    } else {
        "which gmond refuses as not a number, so the metric would never appear"
    }
}

/// One conversion as APR's formatter reads it, after the `%`.
struct Spec<'a> {
    /// The `-` flag: padding goes on the right.
    left: bool,
    /// The `#` flag.
    alternate: bool,
    /// A `*` width or precision (taken from an argument).
    star: bool,
    width: Option<usize>,
    precision: Option<usize>,
    /// One of APR's size modifiers: `h`, `l` or `q`.
    modifier: Option<char>,
    conversion: Option<char>,
    /// What follows the conversion.
    rest: &'a str,
}

impl<'a> Spec<'a> {
    fn parse(text: &'a str) -> Spec<'a> {
        let mut spec = Spec {
            left: false,
            alternate: false,
            star: false,
            width: None,
            precision: None,
            modifier: None,
            conversion: None,
            rest: "",
        };
        let mut chars = text.char_indices().peekable();
        while let Some(&(_, c)) = chars.peek() {
            match c {
                '-' => spec.left = true,
                '#' => spec.alternate = true,
                '+' | ' ' | '0' => {}
                _ => break,
            }
            chars.next();
        }
        spec.width = field_number(&mut chars, &mut spec.star);
        if chars.next_if(|&(_, c)| c == '.').is_some() {
            spec.precision = Some(field_number(&mut chars, &mut spec.star).unwrap_or(0));
        }
        spec.modifier = chars
            .next_if(|&(_, c)| matches!(c, 'h' | 'l' | 'q'))
            .map(|(_, c)| c);
        if let Some((i, c)) = chars.next() {
            spec.conversion = Some(c);
            spec.rest = &text[i + c.len_utf8()..];
        }
        spec
    }
}

/// gmond writes its XML through a 1024-byte line buffer: a longer
/// `<METRIC …>` or `<EXTRA_ELEMENT …/>` line is cut off and the whole
/// host's XML stops parsing, for gmetad too. These limits keep every line
/// short of it (the rest of a line is at most ~130 bytes of markup, a
/// 251-byte name and an escaped 63-byte value).
pub const MAX_UNITS_BYTES: usize = 200;
/// Key and value of one metadata entry together (DESC, GROUP, extra keys).
pub const MAX_METADATA_BYTES: usize = 900;

/// Cuts `text` to `max` bytes; `what` names it for one metric ("the
/// description"), `many` for several ("descriptions").
fn shorten(text: &mut String, max: usize, what: &str, many: &str, warnings: &mut Vec<Warning>) {
    if text.len() > max {
        let why = "as gmond's XML lines must stay under 1024 bytes";
        warnings.push(Warning::new(
            format!("{what} is {} bytes long; cut to {max}, {why}", text.len()),
            format!("have {many} longer than {max} bytes"),
            format!("cut to {max} bytes, {why}"),
        ));
        let cut = crate::text::truncate_utf8(text, max).len();
        text.truncate(cut);
    }
}

fn fit_in_xml_lines(d: &mut MetricDescriptor, warnings: &mut Vec<Warning>) {
    shorten(&mut d.units, MAX_UNITS_BYTES, "units", "units", warnings);
    shorten(
        &mut d.description,
        MAX_METADATA_BYTES - "DESC".len(),
        "the description",
        "a description",
        warnings,
    );
    for group in &mut d.groups {
        shorten(
            group,
            MAX_METADATA_BYTES - "GROUP".len(),
            "a group name",
            "a group name",
            warnings,
        );
    }
    d.extra.retain(|(key, _)| {
        let keep = key.len() <= MAX_METADATA_BYTES / 2;
        if !keep {
            warnings.push(Warning::new(
                format!("an extra key {} bytes long was dropped", key.len()),
                format!(
                    "have an extra key longer than {} bytes",
                    MAX_METADATA_BYTES / 2
                ),
                "dropped, as gmond's XML lines must stay under 1024 bytes",
            ));
        }
        keep
    });
    for (key, value) in &mut d.extra {
        let room = MAX_METADATA_BYTES - key.len();
        shorten(
            value,
            room,
            &format!("extra key '{key}'"),
            &format!("a value for extra key '{key}'"),
            warnings,
        );
    }
}

/// Bytes of one XDR string: length word plus data padded to 4 bytes.
fn xdr_string(len: usize) -> usize {
    4 + len.div_ceil(4) * 4
}

/// Room reserved for the host name (and a spoofed "ip:host") in the packet.
const HOST_RESERVE: usize = xdr_string_const(256);

const fn xdr_string_const(len: usize) -> usize {
    4 + len.div_ceil(4) * 4
}

/// Estimated XDR size of the metadata packet gmond will send for the metric.
pub fn metadata_packet_size(d: &MetricDescriptor) -> usize {
    let mut size = 4 // message id
        + HOST_RESERVE
        + xdr_string(d.name.len())
        + 4 // spoof flag
        + xdr_string(d.value_type.as_str().len())
        + xdr_string(d.name.len())
        + xdr_string(d.units.len())
        + 4 * 3 // slope, tmax, dmax
        + 4; // number of extra entries
    // gmond adds TITLE (the name unless the config sets a title) and DESC.
    size += xdr_string(5) + xdr_string(d.name.len());
    size += xdr_string(4) + xdr_string(d.description.len());
    for g in &d.groups {
        size += xdr_string(5) + xdr_string(g.len());
    }
    for (k, v) in &d.extra {
        size += xdr_string(k.len()) + xdr_string(v.len());
    }
    size
}

/// gmond drops metadata that does not fit one packet, and the metric then
/// never appears. Shorten the description to fit, or refuse the metric.
fn fit_in_packet(d: &mut MetricDescriptor) -> Result<Option<String>, String> {
    let limit = crate::ffi::GANGLIA_MAX_MESSAGE_LEN as usize;
    let size = metadata_packet_size(d);
    if size <= limit {
        return Ok(None);
    }
    let excess = size - limit;
    if d.description.len() > excess + 8 {
        let keep = d.description.len() - excess - 4;
        d.description = format!(
            "{}…",
            crate::text::truncate_utf8(&d.description, keep.saturating_sub(3))
        );
        if metadata_packet_size(d) <= limit {
            return Ok(Some(format!(
                "the metadata would not fit in one gmond packet ({size} > {limit} bytes); description shortened"
            )));
        }
    }
    Err(format!(
        "its metadata (name, units, groups, extra keys) takes {size} bytes, more than one gmond packet ({limit}); gmond would never publish it"
    ))
}

/// The known key `key` is probably a typo of, if any (edit distance ≤ 2).
fn likely_misspelling(key: &str) -> Option<&'static str> {
    let lower = key.to_ascii_lowercase();
    if lower.len() < 4 {
        return None;
    }
    // Short words are close to each other by chance ("note" is two edits
    // from "name"): they get one edit, longer ones two.
    let allowed = if lower.len() < 6 { 1 } else { 2 };
    KNOWN_KEYS.iter().copied().find(|known| {
        edit_distance(&lower, known) <= allowed || lower.replace(['-', ' '], "_") == *known
    })
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(k: &str, v: Field) -> (String, Field) {
        (k.to_owned(), v)
    }

    fn s(v: &str) -> Field {
        Field::Str(v.to_owned())
    }

    fn seed_descriptor() -> Vec<(String, Field)> {
        vec![
            entry("name", s("load_one")),
            entry("call_back", Field::Callable),
            entry("time_max", Field::Int(Some(90))),
            entry("value_type", s("float")),
            entry("units", s("load")),
            entry("slope", s("both")),
            entry("format", s("%.2f")),
            entry("description", s("One-minute load")),
            entry("groups", s(" load, system ,,")),
            entry("source", s("proc")),
            entry("weight", Field::Int(Some(3))),
        ]
    }

    #[test]
    fn a_complete_descriptor_passes_unchanged() {
        let c = check(&seed_descriptor());
        assert_eq!(c.error, None);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let d = c.result.expect("descriptor");
        assert_eq!(d.name, "load_one");
        assert_eq!(d.value_type, ValueType::Float);
        assert_eq!(d.time_max, 90);
        assert_eq!(d.format, "%.2f");
        assert_eq!(d.groups, vec!["load", "system"]);
        assert_eq!(
            d.extra,
            vec![
                ("source".into(), "proc".into()),
                ("weight".into(), "3".into())
            ]
        );
        assert_eq!(d.callback_key, "call_back");
    }

    #[test]
    fn fatal_problems_skip_the_metric_with_a_reason() {
        let without = |key: &str| -> Vec<(String, Field)> {
            seed_descriptor()
                .into_iter()
                .filter(|(k, _)| k != key)
                .collect()
        };
        assert!(check(&without("name")).error.unwrap().contains("no 'name'"));
        assert!(
            check(&without("call_back"))
                .error
                .unwrap()
                .contains("no 'call_back'")
        );
        assert!(
            check(&without("value_type"))
                .error
                .unwrap()
                .contains("no 'value_type'")
        );
        let mut d = without("call_back");
        d.push(entry("call_back", s("handler")));
        assert!(check(&d).error.unwrap().contains("must be a callable"));
        let mut d = without("value_type");
        d.push(entry("value_type", s("bogus")));
        assert!(check(&d).error.unwrap().contains("'bogus' is not one of"));
        let mut d = without("name");
        d.push(entry("name", s("a\"b")));
        assert!(check(&d).error.unwrap().contains("cannot carry"));
    }

    #[test]
    fn keys_and_values_are_case_insensitive() {
        let d = vec![
            entry("NAME", s("m")),
            entry("Call_Back", Field::Callable),
            entry("VALUE_TYPE", s("UINT")),
            entry("Slope", s("BOTH")),
            entry("time_max", s("30")),
            entry("units", s("u")),
            entry("format", s("%u")),
            entry("description", s("d")),
        ];
        let c = check(&d);
        let m = c.result.expect("descriptor");
        assert_eq!(m.value_type, ValueType::Uint);
        assert_eq!(m.slope, "both");
        assert_eq!(m.time_max, 30);
        assert_eq!(m.callback_key, "Call_Back");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn missing_optional_keys_get_defaults_and_one_warning() {
        let d = vec![
            entry("name", s("m")),
            entry("call_back", Field::Callable),
            entry("value_type", s("uint")),
        ];
        let c = check(&d);
        let m = c.result.expect("descriptor");
        assert_eq!(
            (m.time_max, m.slope.as_str(), m.format.as_str()),
            (60, "both", "%u")
        );
        assert_eq!(c.warnings.len(), 1);
        assert!(
            c.warnings[0]
                .message
                .contains("'time_max', 'units', 'description', 'slope', 'format'")
        );
    }

    #[test]
    fn dangerous_formats_are_replaced() {
        for (fmt, t) in [
            ("%s", ValueType::Uint),
            ("%u KB", ValueType::Uint),
            ("%lu", ValueType::Uint),
            ("%d%%", ValueType::Int),
            ("%x", ValueType::Uint),
            ("%d", ValueType::Float),
            ("%u", ValueType::String),
            ("", ValueType::Double),
            ("%F", ValueType::Double),
            ("%hu", ValueType::Uint),
            ("%hhd", ValueType::Int),
            ("%d", ValueType::Uint),
            ("%u", ValueType::Int),
        ] {
            assert!(
                check_format(fmt, t).is_err(),
                "{fmt} for {t:?} should be refused"
            );
        }
        for (fmt, t) in [
            ("%u", ValueType::Uint),
            ("%08u", ValueType::Uint),
            ("%5d", ValueType::Int),
            ("%i", ValueType::Int),
            ("%.2f", ValueType::Float),
            ("%lf", ValueType::Double),
            ("%g", ValueType::Double),
            ("%s", ValueType::String),
        ] {
            assert!(check_format(fmt, t).is_ok(), "{fmt} for {t:?} should pass");
        }
        let mut d = seed_descriptor();
        d.retain(|(k, _)| k != "format");
        d.push(entry("format", s("%s")));
        let c = check(&d);
        assert_eq!(c.result.expect("descriptor").format, "%f");
        assert!(
            c.warnings[0]
                .message
                .contains("format '%s' does not suit a float metric")
        );
    }

    #[test]
    fn quotes_in_units_are_replaced_with_a_warning() {
        let mut d = seed_descriptor();
        d.retain(|(k, _)| k != "units");
        d.push(entry("units", s("\"req\"/s")));
        let c = check(&d);
        assert_eq!(c.result.expect("descriptor").units, "'req'/s");
        assert!(c.warnings[0].message.contains("units"));
    }

    #[test]
    fn aliases_and_bad_slopes_are_corrected() {
        let mut d = seed_descriptor();
        d.retain(|(k, _)| k != "value_type" && k != "slope" && k != "format");
        d.push(entry("value_type", s("uint16")));
        d.push(entry("slope", s("sideways")));
        d.push(entry("format", s("%u")));
        let c = check(&d);
        let m = c.result.expect("descriptor");
        assert_eq!((m.value_type, m.slope.as_str()), (ValueType::Uint, "both"));
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    }

    #[test]
    fn misspelt_keys_are_reported() {
        let mut d = seed_descriptor();
        d.push(entry("valu_type", s("uint")));
        let c = check(&d);
        assert!(
            c.warnings
                .iter()
                .any(|w| w.message.contains("misspelling of 'value_type'")),
            "{:?}",
            c.warnings
        );
        assert!(
            c.result
                .expect("descriptor")
                .extra
                .iter()
                .any(|(k, _)| k == "valu_type")
        );
    }

    #[test]
    fn a_misspelling_is_reported_even_when_it_makes_the_metric_fail() {
        let mut d = seed_descriptor();
        d.retain(|(k, _)| k != "value_type");
        d.push(entry("valu_type", s("uint")));
        let c = check(&d);
        assert!(c.error.unwrap().contains("no 'value_type'"));
        assert!(
            c.warnings.iter().any(|w| w
                .message
                .contains("'valu_type' looks like a misspelling of 'value_type'")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn oversized_metadata_is_shortened_or_refused() {
        let mut d = seed_descriptor();
        d.retain(|(k, _)| k != "description");
        d.push(entry("description", s(&"d".repeat(2000))));
        let c = check(&d);
        let m = c.result.expect("description should be shortened");
        assert!(metadata_packet_size(&m) <= 1464);
        assert!(
            c.warnings
                .iter()
                .any(|w| w.message.contains("cut to") || w.message.contains("shortened"))
        );

        let mut d = seed_descriptor();
        for i in 0..40 {
            d.push(entry(
                &format!("extra_key_{i}"),
                s("a fairly long value for an extra key"),
            ));
        }
        assert!(
            check(&d)
                .error
                .unwrap()
                .contains("more than one gmond packet")
        );
    }

    #[test]
    fn long_texts_are_cut_to_fit_gmonds_xml_lines() {
        let mut d = seed_descriptor();
        d.retain(|(k, _)| k != "description" && k != "units");
        d.push(entry("description", s(&"d".repeat(995))));
        d.push(entry("units", s(&"u".repeat(300))));
        let c = check(&d);
        let m = c.result.expect("descriptor");
        assert!(m.description.len() <= MAX_METADATA_BYTES);
        assert_eq!(m.units.len(), MAX_UNITS_BYTES);
        assert!(
            c.warnings
                .iter()
                .filter(|w| w.message.contains("XML lines"))
                .count()
                == 2,
            "{:?}",
            c.warnings
        );

        let mut d = seed_descriptor();
        d.push(entry("note", s(&"é".repeat(600))));
        let c = check(&d);
        let m = c.result.expect("descriptor");
        let note = &m.extra.iter().find(|(k, _)| k == "note").expect("note").1;
        assert!("note".len() + note.len() <= MAX_METADATA_BYTES && note.chars().all(|c| c == 'é'));
        assert_eq!(
            c.warnings.len(),
            1,
            "'note' is not a misspelling: {:?}",
            c.warnings
        );
        assert!(c.warnings[0].message.contains("cut to"), "{:?}", c.warnings);
    }

    /// What APR's formatter, gmond's, prints for `format` and one argument.
    enum Arg {
        U(u32),
        I(i32),
        D(f64),
    }

    fn apr(format: &str, arg: Arg) -> String {
        let fmt = std::ffi::CString::new(format).expect("no NUL in test formats");
        let mut buf = [0u8; 512];
        let out = buf.as_mut_ptr() as *mut libc::c_char;
        let apr_snprintf = crate::ffi::apr_snprintf().expect("libapr is loaded with libganglia");
        // SAFETY: the tests pass only formats whose directives read at most
        // one 32-bit integer (U, I) or one double (D), the argument given,
        // never %s, %n, %p, '*' or a 64-bit modifier on an integer; and
        // apr_snprintf writes at most `buf.len()` bytes, NUL included.
        unsafe {
            match arg {
                Arg::U(u) => apr_snprintf(out, buf.len(), fmt.as_ptr(), u as libc::c_uint),
                Arg::I(i) => apr_snprintf(out, buf.len(), fmt.as_ptr(), i as libc::c_int),
                Arg::D(x) => apr_snprintf(out, buf.len(), fmt.as_ptr(), x),
            };
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    }

    /// The number gmond's check reads from `text`: strtod, which must
    /// consume all of it.
    fn strtod_whole(text: &str) -> Option<f64> {
        let c = std::ffi::CString::new(text).ok()?;
        let mut end: *mut libc::c_char = std::ptr::null_mut();
        // SAFETY: `c` is NUL-terminated and outlives the call; strtod only
        // reads it and sets `end` to a position inside it.
        let value = unsafe { libc::strtod(c.as_ptr(), &mut end) };
        // SAFETY: `end` points into `c`, at or after its start.
        let used = unsafe { end.offset_from(c.as_ptr()) } as usize;
        (used == text.len() && !text.trim().is_empty()).then_some(value)
    }

    #[test]
    fn kept_integer_formats_print_every_value_as_the_types_own_conversion() {
        let uints = [
            0u32,
            1,
            42,
            65535,
            65536,
            2_147_483_647,
            2_147_483_648,
            u32::MAX,
        ];
        for fmt in [
            "%u", "%8u", "%08u", "%.3u", "%+u", "% u", "%#u", "%-u", " %u", "%5.0u", "%99u",
        ] {
            assert_eq!(check_format(fmt, ValueType::Uint), Ok(()), "{fmt}");
            for v in uints {
                let printed = apr(fmt, Arg::U(v));
                assert_eq!(
                    strtod_whole(&printed),
                    Some(f64::from(v)),
                    "{fmt} of {v}: {printed:?}"
                );
            }
        }
        let ints = [i32::MIN, -65536, -1, 0, 1, 32768, i32::MAX];
        for fmt in [
            "%d", "%i", "%5d", "%05d", "%+d", "% d", "%.4i", "%-d", "  %d",
        ] {
            assert_eq!(check_format(fmt, ValueType::Int), Ok(()), "{fmt}");
            for v in ints {
                let printed = apr(fmt, Arg::I(v));
                assert_eq!(
                    strtod_whole(&printed),
                    Some(f64::from(v)),
                    "{fmt} of {v}: {printed:?}"
                );
            }
        }
    }

    #[test]
    fn kept_real_formats_print_the_number_to_their_precision() {
        // (format, value, what APR prints): strtod reads each whole.
        for (fmt, v, printed) in [
            ("%f", 1.5, "1.500000"),
            ("%lf", -2.25, "-2.250000"),
            ("%.2f", 123456789.125, "123456789.13"),
            // APR rounds halves away from zero; libc would print "2".
            ("%.0f", 2.5, "3"),
            ("%#.0f", 2.0, "2."),
            ("%e", 1.5, "1.500000e+00"),
            ("%E", 1e-10, "1.000000E-10"),
            ("%g", 0.0, "0"),
            ("%G", 3.4e38, "3.4E+38"),
            ("%+.1f", 1.75, "+1.8"),
            ("%010.3f", -2.25, "-00002.250"),
            ("%hf", 1.5, "1.500000"),
            ("%qg", 1.5, "1.5"),
            (" %f", 1.5, " 1.500000"),
        ] {
            for t in [ValueType::Float, ValueType::Double] {
                assert_eq!(check_format(fmt, t), Ok(()), "{fmt} for {t:?}");
            }
            assert_eq!(apr(fmt, Arg::D(v)), printed, "{fmt} of {v}");
            assert!(strtod_whole(printed).is_some(), "{printed:?}");
        }
    }

    #[test]
    fn each_replaced_format_says_what_gmond_would_have_printed() {
        use ValueType::{Double, Float, Int, Uint};
        // (format, type, an argument, what APR prints for it, what the
        // reason says): the examples the reasons give are APR's own output.
        #[rustfmt::skip]
        let cases: &[(&str, ValueType, Arg, &str, &str)] = &[
            ("%d", Uint, Arg::U(u32::MAX), "-1", "'%d' shows values from 2147483648 up as negative numbers (4294967295 as -1)"),
            ("%i", Uint, Arg::U(2_147_483_648), "-2147483648", "'%i' shows values from 2147483648 up as negative"),
            ("%u", Int, Arg::I(-1), "4294967295", "'%u' shows negative values as large positive numbers (-1 as 4294967295)"),
            ("%hu", Uint, Arg::U(65536), "0", "'%hu' cuts values to 16 bits (65536 as 0)"),
            ("%hd", Uint, Arg::U(65535), "-1", "'%hd' cuts values to 16 bits (65535 as -1)"),
            ("%hu", Int, Arg::I(-1), "65535", "'%hu' cuts values to 16 bits (-1 as 65535)"),
            ("%hd", Int, Arg::I(32768), "-32768", "'%hd' cuts values to 16 bits (32768 as -32768)"),
            ("%x", Uint, Arg::U(255), "ff", "'%x' prints the value in hexadecimal (255 as 'ff')"),
            ("%#x", Uint, Arg::U(255), "0xff", "(255 as '0xff')"),
            ("%X", Int, Arg::I(255), "FF", "(255 as 'FF')"),
            ("%#X", Int, Arg::I(255), "0XFF", "(255 as '0XFF')"),
            ("%o", Uint, Arg::U(8), "10", "'%o' prints the value in octal (8 as '10')"),
            ("%#o", Uint, Arg::U(8), "010", "(8 as '010')"),
            ("%hhd", Int, Arg::I(1), "%hd", "'%hhd' uses a size modifier ('hh') that gmond's formatter (APR's apr_snprintf) does not have: gmond would print the text '%hd', which it refuses as not a number, so the metric would never appear"),
            ("%llu", Uint, Arg::U(1), "%lu", "size modifier ('ll') that gmond's formatter (APR's apr_snprintf) does not have: gmond would print the text '%lu'"),
            ("%zu", Uint, Arg::U(1), "%zu", "size modifier ('z')"),
            ("%F", Double, Arg::D(1.5), "%F", "'%F' uses a conversion ('%F') that gmond's formatter (APR's apr_snprintf) does not have: gmond would print the text '%F'"),
            ("%Lf", Float, Arg::D(1.5), "%Lf", "size modifier ('L')"),
            ("%a", Double, Arg::D(1.5), "%a", "conversion ('%a')"),
            ("%%", Uint, Arg::U(1), "%", "'%%' prints a '%' sign, not the number"),
            ("%-8u", Uint, Arg::U(42), "42      ", "'%-8u' pads the number with spaces on its right, and gmond refuses a value with anything after the number, so the metric would never appear"),
            ("%u ", Uint, Arg::U(42), "42 ", "'%u ' prints spaces after the number"),
            ("%u KB", Uint, Arg::U(42), "42 KB", "'%u KB' prints ' KB' after the number, which gmond refuses as not a number, so the metric would never appear"),
            ("KB %u", Uint, Arg::U(42), "KB 42", "'KB %u' prints 'KB ' before the number, which gmond refuses"),
            ("%d%%", Int, Arg::I(42), "42%", "'%d%%' prints '%' after the number, which gmond refuses"),
            ("%u0", Uint, Arg::U(42), "420", "which gmond would take as part of the number"),
            ("", Double, Arg::D(1.5), "", "an empty format makes gmond show an empty value"),
            ("%", Uint, Arg::U(1), "", "'%' ends before its conversion character"),
            ("%5", Uint, Arg::U(1), "", "'%5' ends before its conversion character"),
            ("%c", Uint, Arg::U(65), "A", "'%c' prints the value as a character"),
            ("%100u", Uint, Arg::U(1), &format!("{:>100}", 1), "'%100u' asks for 100 characters, and modpython allows widths and precisions up to 99"),
        ];
        for (fmt, t, arg, printed, why) in cases {
            let arg = match arg {
                Arg::U(u) => Arg::U(*u),
                Arg::I(i) => Arg::I(*i),
                Arg::D(x) => Arg::D(*x),
            };
            assert_eq!(apr(fmt, arg), *printed, "APR's output for {fmt:?}");
            let got = check_format(fmt, *t).expect_err(fmt);
            assert!(got.contains(why), "{fmt} for {t:?}: {got}");
        }
        // Those that cannot be shown by running them: they crash, or read
        // what gmond did not pass.
        #[rustfmt::skip]
        let unshown = [
            ("%s", Uint, "'%s' makes gmond read the uint as the address of a text: gmond would crash"),
            ("%s", Double, "gmond would crash or print garbage"),
            ("%n", Int, "'%n' makes gmond write through the int as if it were an address: gmond would crash"),
            ("%p", Uint, "'%p' is APR's conversion for addresses"),
            ("%f", Uint, "'%f' expects a floating-point number, but gmond passes the uint as an integer: it would print an unrelated number"),
            ("%d", Float, "'%d' expects an integer, but gmond passes the float as a floating-point number: it would print an unrelated integer"),
            ("%lu", Uint, "'%lu' reads a 64-bit number where gmond passes a 32-bit uint"),
            ("%qd", Int, "reads a 64-bit number where gmond passes a 32-bit int"),
            ("%*u", Uint, "'%*u' takes a width or precision ('*') from an argument gmond does not pass"),
            ("%u%u", Uint, "'%u%u' has a second conversion, for which gmond passes no value"),
            ("KB", Uint, "'KB' has no % conversion, so gmond would show the text 'KB' in place of every value"),
            ("%u", ValueType::String, "gmond sends string values as they are"),
        ];
        for (fmt, t, why) in unshown {
            let got = check_format(fmt, t).expect_err(fmt);
            assert!(got.contains(why), "{fmt} for {t:?}: {got}");
        }
    }

    #[test]
    fn a_replaced_format_is_described_for_one_metric_and_for_many() {
        let mut d = seed_descriptor();
        d.retain(|(k, _)| k != "format" && k != "value_type");
        d.push(entry("value_type", s("uint")));
        d.push(entry("format", s("%d")));
        let c = check(&d);
        assert_eq!(c.result.expect("descriptor").format, "%u");
        let why = "'%d' shows values from 2147483648 up as negative numbers (4294967295 as -1)";
        assert_eq!(
            c.warnings,
            vec![Warning::new(
                format!("format '%d' does not suit a uint metric: {why}; using '%u'"),
                "declare format '%d' for uint values",
                format!("printed with '%u' instead, since {why}"),
            )]
        );
    }

    #[test]
    fn warnings_many_metrics_share_become_one_line() {
        let format = Warning::new(
            "format …",
            "declare format '%d' for uint values",
            "printed with '%u' instead, since '%d' shows …",
        );
        let slope = Warning::new("slope …", "declare slope 'up', which …", "'both' is used");
        let mut found: Vec<(String, Warning)> = (0..40)
            .map(|i| (format!("disk_{i}"), format.clone()))
            .collect();
        found.insert(1, ("disk_0".to_owned(), slope.clone()));
        // The same correction twice in one metric is still one metric.
        found.push(("other".to_owned(), slope.clone()));
        found.push(("other".to_owned(), slope.clone()));
        let reported = group_warnings(found);
        assert_eq!(reported.len(), 2, "{reported:?}");
        match &reported[0] {
            Reported::Many { line, each } => {
                assert_eq!(
                    line,
                    "40 metrics declare format '%d' for uint values (disk_0, disk_1, disk_2, …); printed with '%u' instead, since '%d' shows …"
                );
                assert_eq!(each.len(), 40);
                assert_eq!(each[39], ("disk_39".to_owned(), "format …".to_owned()));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            reported[1],
            Reported::Many {
                line: "2 metrics declare slope 'up', which … (disk_0, other); 'both' is used"
                    .to_owned(),
                each: vec![
                    ("disk_0".to_owned(), "slope …".to_owned()),
                    ("other".to_owned(), "slope …".to_owned())
                ],
            }
        );
        let reported = group_warnings(vec![
            ("a".to_owned(), slope.clone()),
            ("b".to_owned(), format),
            ("b".to_owned(), slope.clone()),
            ("c".to_owned(), Warning::new("other …", "x", "y")),
        ]);
        assert_eq!(reported.len(), 3, "{reported:?}");
        assert!(
            matches!(&reported[1], Reported::One { metric, message } if metric == "b" && message == "format …")
        );
        assert!(matches!(&reported[2], Reported::One { metric, .. } if metric == "c"));
    }

    #[test]
    fn missing_keys_name_the_defaults_used() {
        let d = vec![
            entry("name", s("m")),
            entry("call_back", Field::Callable),
            entry("value_type", s("string")),
            entry("units", s("")),
            entry("description", s("")),
        ];
        let c = check(&d);
        assert_eq!(
            c.warnings,
            vec![Warning::new(
                "missing 'time_max', 'slope', 'format'; using time_max 60, slope 'zero', format '%s'",
                "have no 'time_max', 'slope', 'format'",
                "the defaults are used: time_max 60, slope 'zero', format '%s'",
            )]
        );
    }

    #[test]
    fn groups_split_and_trim() {
        assert_eq!(split_groups(" a, b ,c,,  "), vec!["a", "b", "c"]);
        assert!(split_groups("").is_empty());
    }
}
