//! Taking values out of Python objects into plain Rust data, so the rules
//! that judge them (src/descriptor.rs, src/value.rs) need no interpreter.

use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple,
};

use crate::descriptor::{Field, ValueType, Warning};
use crate::value::{self, ConversionError, Returned, Value};

/// What a metric callback returned, converted to the metric's type. A
/// plain int or float (the common case) goes straight to its rule;
/// anything else is taken out as a [`Returned`] first.
#[inline]
pub fn converted(obj: &Bound<'_, PyAny>, value_type: ValueType) -> Result<Value, ConversionError> {
    // Exact types only: a bool or an int subclass may print differently.
    if obj.is_exact_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i64>() {
            return value::convert_int(i, value_type);
        }
    } else if let Ok(f) = obj.cast_exact::<PyFloat>() {
        return value::convert_float(f.value(), value_type);
    }
    value::convert(&returned(obj), value_type)
}

/// What a metric callback returned. Must be cheap: it runs on every call.
pub fn returned(obj: &Bound<'_, PyAny>) -> Returned {
    if obj.is_none() {
        return Returned::None;
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Returned::Str(text_of(s));
    }
    // bool before int: bool is a subclass of int.
    if let Ok(b) = obj.cast::<PyBool>() {
        return Returned::Bool(b.is_true());
    }
    if obj.is_instance_of::<PyInt>() {
        return Returned::Int(int_of(obj));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Returned::Float(f.value());
    }
    if let Some(bytes) = bytes_of(obj) {
        return Returned::Str(String::from_utf8_lossy(&bytes).into_owned());
    }
    other(obj)
}

/// A Python int, if it fits an i128; the common small ones take the fast path.
fn int_of(obj: &Bound<'_, PyAny>) -> Option<i128> {
    obj.extract::<i64>()
        .map(i128::from)
        .ok()
        .or_else(|| obj.extract::<i128>().ok())
}

/// A Python str as Rust text. A str with lone surrogates is not valid
/// UTF-8; each of them becomes one `?` (Python's own "replace" rule), not
/// the three replacement characters a byte-wise lossy decode would give.
fn text_of(s: &Bound<'_, PyString>) -> String {
    if let Ok(text) = s.to_str() {
        return text.to_owned();
    }
    s.call_method1("encode", ("utf-8", "replace"))
        .and_then(|b| b.extract::<Vec<u8>>())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|_| s.to_string_lossy().into_owned())
}

fn bytes_of(obj: &Bound<'_, PyAny>) -> Option<Vec<u8>> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Some(b.as_bytes().to_vec());
    }
    obj.cast::<PyByteArray>().ok().map(|b| b.to_vec())
}

fn other(obj: &Bound<'_, PyAny>) -> Returned {
    let type_name = obj
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "object".to_owned());
    // Containers have a str() but are never a sensible metric value.
    let is_container = obj.is_instance_of::<PyDict>()
        || obj.is_instance_of::<PyList>()
        || obj.is_instance_of::<PyTuple>();
    let text = if is_container {
        None
    } else {
        obj.str().ok().map(|s| text_of(&s))
    };
    // float() covers Decimal, Fraction, numpy scalars and anything with __float__/__index__.
    let as_float = if is_container {
        None
    } else {
        obj.extract::<f64>().ok()
    };
    Returned::Other {
        type_name,
        text,
        as_float,
    }
}

/// One descriptor value.
pub fn field(obj: &Bound<'_, PyAny>) -> Field {
    field_at(obj, 0)
}

/// Lists in descriptors are one level deep (`groups`); deeper nesting, or a
/// list that contains itself, is not followed (it would only overflow the
/// stack), and is reported as what it is.
const MAX_LIST_DEPTH: usize = 2;

fn field_at(obj: &Bound<'_, PyAny>, depth: usize) -> Field {
    if obj.is_none() {
        return Field::None;
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Field::Str(text_of(s));
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Field::Bool(b.is_true());
    }
    if obj.is_instance_of::<PyInt>() {
        return Field::Int(int_of(obj));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Field::Float(f.value());
    }
    if obj.is_callable() {
        return Field::Callable;
    }
    if (obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>()) && depth < MAX_LIST_DEPTH
    {
        let items = obj
            .try_iter()
            .map(|it| {
                it.filter_map(Result::ok)
                    .map(|item| field_at(&item, depth + 1))
                    .collect()
            })
            .unwrap_or_default();
        return Field::List(items);
    }
    Field::Other(
        obj.get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "object".to_owned()),
    )
}

/// A descriptor's (key, value) pairs in dict order, plus warnings about
/// keys that are not text and were read as their `str()`.
pub fn descriptor_entries(dict: &Bound<'_, PyDict>) -> (Vec<(String, Field)>, Vec<Warning>) {
    let mut entries = Vec::with_capacity(dict.len());
    let mut notes = Vec::new();
    for (key, value) in dict.iter() {
        let key_text = match key.cast::<PyString>() {
            Ok(s) => text_of(s),
            Err(_) => {
                let text = key.str().map(|s| text_of(&s)).unwrap_or_default();
                notes.push(Warning::new(
                    format!("key {text:?} is not a str; using its text"),
                    format!("have a key {text:?} that is not a str"),
                    "its text is used as the key",
                ));
                text
            }
        };
        entries.push((key_text, field(&value)));
    }
    (entries, notes)
}
