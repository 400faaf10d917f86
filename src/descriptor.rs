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

/// The outcome of checking one descriptor.
#[derive(Debug, Default)]
pub struct Checked {
    /// The metric, or why it cannot be registered.
    pub result: Option<MetricDescriptor>,
    pub error: Option<String>,
    /// Corrections made; the metric is registered with them.
    pub warnings: Vec<String>,
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
            out.warnings.push(format!(
                "key '{key}' looks like a misspelling of '{known}'; it is not used as '{known}' (other keys are sent as extra metadata)"
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
                out.warnings.push(format!(
                    "gmond shows a ':' in a metric name as '_' on every other node: '{}'",
                    n.replace(':', "_")
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
            out.warnings.extend(note);
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
            Err(e) => {
                out.warnings.push(format!("{e}; using {DEFAULT_TIME_MAX}"));
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
                    out.warnings.push(format!(
                        "slope '{s}' is not one of zero, positive, negative, both, derivative, unspecified; using '{default_slope}'"
                    ));
                    default_slope.to_owned()
                }
            }
        }
        Some(f) => {
            out.warnings.push(format!(
                "'slope' must be a str, not {}; using '{default_slope}'",
                f.type_name()
            ));
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
                out.warnings.push(format!(
                    "format '{s}' does not suit a {} metric ({why}); using '{}'",
                    value_type.as_str(),
                    value_type.default_format()
                ));
                value_type.default_format().to_owned()
            }
        },
        Some(f) => {
            out.warnings.push(format!(
                "'format' must be a str, not {}; using '{}'",
                f.type_name(),
                value_type.default_format()
            ));
            value_type.default_format().to_owned()
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
                    other => out
                        .warnings
                        .push(format!("ignoring a group of type {}", other.type_name())),
                }
            }
            groups
        }
        Some(f) => {
            out.warnings.push(format!(
                "'groups' must be a comma-separated str, not {}; no groups set",
                f.type_name()
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
            out.warnings.push(format!(
                "extra key '{key}' dropped: gmond sets {} itself (use the collection_group's title, or 'description')",
                key.to_ascii_uppercase()
            ));
            continue;
        }
        match value.as_text() {
            Some(text) => {
                let safe_key = gmond_safe(key).into_owned();
                let safe_value = gmond_safe(&text).into_owned();
                if safe_key.is_empty() {
                    out.warnings
                        .push("an extra key with an empty name was dropped".to_owned());
                    continue;
                }
                if safe_value != text || safe_key != *key {
                    out.warnings.push(format!(
                        "extra key '{key}': characters gmond cannot carry (\" < > & or control characters) were replaced"
                    ));
                }
                extra.push((safe_key, safe_value));
            }
            None => out.warnings.push(format!(
                "extra key '{key}' dropped: its value is {}, not a str or number",
                value.type_name()
            )),
        }
    }

    if !missing.is_empty() {
        out.warnings.push(format!(
            "missing {}; using defaults",
            missing
                .iter()
                .map(|k| format!("'{k}'"))
                .collect::<Vec<_>>()
                .join(", ")
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
        Ok(Some(note)) => out.warnings.push(note),
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

fn time_max_of(field: &Field) -> Result<i32, String> {
    let value: i128 = match field {
        Field::Int(Some(i)) => *i,
        Field::Float(x) if x.is_finite() => x.trunc() as i128,
        Field::Str(s) => s
            .trim()
            .parse::<i128>()
            .map_err(|_| format!("time_max {s:?} is not a whole number of seconds"))?,
        f => return Err(format!("time_max must be an int, not {}", f.type_name())),
    };
    if value <= 0 || value > i128::from(i32::MAX) {
        return Err(format!(
            "time_max {value} is not a positive number of seconds"
        ));
    }
    Ok(value as i32)
}

/// A text key: made safe for gmond, with a warning when that changed it.
fn text_key<'a>(
    found: Option<(&'a String, &'a Field)>,
    key: &'static str,
    default: &str,
    missing: &mut Vec<&'static str>,
    warnings: &mut Vec<String>,
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
                    warnings.push(format!(
                        "{key} {text:?} contains characters gmond cannot carry (\" < > & or control characters); using {safe:?}"
                    ));
                }
                safe.into_owned()
            }
            None => {
                warnings.push(format!(
                    "'{key}' must be a str, not {}; using {default:?}",
                    field.type_name()
                ));
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

/// Checks that `format` is one printf conversion gmond can apply to the type,
/// and nothing else: gmond hands it to apr_snprintf unchecked (a `%s` on a
/// number crashes gmond), then requires the whole result to parse as a number.
pub fn check_format(format: &str, value_type: ValueType) -> Result<(), String> {
    if value_type == ValueType::String {
        // gmond uses string values as they are; only a plain %s makes sense.
        return if format == "%s" {
            Ok(())
        } else {
            Err("string metrics are sent as they are; the format must be %s".to_owned())
        };
    }
    let bytes = format.as_bytes();
    if bytes.first() != Some(&b'%') {
        return Err("it must start with a % conversion and contain nothing else".to_owned());
    }
    let mut i = 1;
    while i < bytes.len() && matches!(bytes[i], b'-' | b'+' | b' ' | b'#' | b'0') {
        i += 1;
    }
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        i += 1;
    }
    if i < bytes.len() && bytes[i] == b'.' {
        i += 1;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
    }
    let is_real = matches!(value_type, ValueType::Float | ValueType::Double);
    // gmond formats with APR's apr_snprintf, not libc's: it has no %F and no
    // hh, and h would cut the value to 16 bits. Only l is harmless, on reals
    // (%lf is %f); a wider integer modifier would read past gmond's value.
    if is_real && bytes.get(i) == Some(&b'l') {
        i += 1;
    }
    let Some(&conversion) = bytes.get(i) else {
        return Err("it has no conversion character".to_owned());
    };
    // A %d would show a uint above 2^31 as negative, a %u a negative int
    // as huge: each integer type has its own conversion.
    let allowed: &[u8] = match value_type {
        ValueType::Uint => b"u",
        ValueType::Int => b"di",
        _ => b"feEgG",
    };
    if !allowed.contains(&conversion) {
        return Err(format!(
            "'%{}' cannot print a {}; use one of {}",
            conversion as char,
            value_type.as_str(),
            allowed
                .iter()
                .map(|c| format!("%{}", *c as char))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    if i + 1 != bytes.len() {
        return Err("gmond requires the formatted value to be a bare number, so no text may follow the conversion".to_owned());
    }
    Ok(())
}

/// gmond writes its XML through a 1024-byte line buffer: a longer
/// `<METRIC …>` or `<EXTRA_ELEMENT …/>` line is cut off and the whole
/// host's XML stops parsing, for gmetad too. These limits keep every line
/// short of it (the rest of a line is at most ~130 bytes of markup, a
/// 251-byte name and an escaped 63-byte value).
pub const MAX_UNITS_BYTES: usize = 200;
/// Key and value of one metadata entry together (DESC, GROUP, extra keys).
pub const MAX_METADATA_BYTES: usize = 900;

fn shorten(text: &mut String, max: usize, what: &str, warnings: &mut Vec<String>) {
    if text.len() > max {
        warnings.push(format!(
            "{what} is {} bytes long; cut to {max}, as gmond's XML lines must stay under 1024",
            text.len()
        ));
        let cut = crate::text::truncate_utf8(text, max).len();
        text.truncate(cut);
    }
}

fn fit_in_xml_lines(d: &mut MetricDescriptor, warnings: &mut Vec<String>) {
    shorten(&mut d.units, MAX_UNITS_BYTES, "units", warnings);
    shorten(
        &mut d.description,
        MAX_METADATA_BYTES - "DESC".len(),
        "the description",
        warnings,
    );
    for group in &mut d.groups {
        shorten(
            group,
            MAX_METADATA_BYTES - "GROUP".len(),
            "a group name",
            warnings,
        );
    }
    d.extra.retain(|(key, _)| {
        let keep = key.len() <= MAX_METADATA_BYTES / 2;
        if !keep {
            warnings.push(format!("an extra key {} bytes long was dropped", key.len()));
        }
        keep
    });
    for (key, value) in &mut d.extra {
        let room = MAX_METADATA_BYTES - key.len();
        shorten(value, room, &format!("extra key '{key}'"), warnings);
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
        assert!(c.warnings[0].contains("'time_max', 'units', 'description', 'slope', 'format'"));
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
        assert!(c.warnings[0].contains("format '%s' does not suit a float metric"));
    }

    #[test]
    fn quotes_in_units_are_replaced_with_a_warning() {
        let mut d = seed_descriptor();
        d.retain(|(k, _)| k != "units");
        d.push(entry("units", s("\"req\"/s")));
        let c = check(&d);
        assert_eq!(c.result.expect("descriptor").units, "'req'/s");
        assert!(c.warnings[0].contains("units"));
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
                .any(|w| w.contains("misspelling of 'value_type'")),
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
            c.warnings
                .iter()
                .any(|w| w.contains("'valu_type' looks like a misspelling of 'value_type'")),
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
                .any(|w| w.contains("cut to") || w.contains("shortened"))
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
                .filter(|w| w.contains("XML lines"))
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
        assert!(c.warnings[0].contains("cut to"), "{:?}", c.warnings);
    }

    #[test]
    fn groups_split_and_trim() {
        assert_eq!(split_groups(" a, b ,c,,  "), vec!["a", "b", "c"]);
        assert!(split_groups("").is_empty());
    }
}
