//! Where a metric's value is converted: whatever the Python callback
//! returned, turned into the `g_val_t` member gmond reads for the metric's
//! declared type.
//!
//! The rules, in one place for the host and the tools alike:
//! * numbers, numeric strings (`'123'`, `' 1.5e3'`) and bools convert to every
//!   numeric type; a float going into `uint`/`int` truncates toward zero, as
//!   Python's `int()` does;
//! * values that do not fit (negative or > 2^32-1 for `uint`, outside i32 for
//!   `int`, beyond f32 for `float`), NaN, infinities, `None` and other objects
//!   are errors — never a silent zero, never a wrapped number;
//! * anything but `None` converts to a `string` metric; the text is made
//!   safe for gmond (see `text::value_safe`: no `"`, ASCII only, because
//!   gmond 3.7.2 mangles other bytes in its XML) and cut to 63 bytes.

use std::fmt;

use crate::descriptor::ValueType;
use crate::ffi::g_val_t;
use crate::text::{truncate_utf8, value_safe};

/// Room for a string value in `g_val_t`, the terminating NUL excluded.
pub const MAX_STRING_BYTES: usize = crate::ffi::MAX_G_STRING_SIZE as usize - 1;

/// What a callback returned, already taken out of Python.
#[derive(Debug, Clone, PartialEq)]
pub enum Returned {
    None,
    Bool(bool),
    /// A Python int; `None` inside when it does not even fit in an i128.
    Int(Option<i128>),
    Float(f64),
    Str(String),
    /// Any other object: its type name, `str()` and `float()` where those exist.
    Other {
        type_name: String,
        text: Option<String>,
        as_float: Option<f64>,
    },
}

/// A converted value, ready to be written into a `g_val_t`.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Uint(u32),
    Int(i32),
    Float(f32),
    Double(f64),
}

/// Why a returned value cannot be published.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversionError(pub String);

impl fmt::Display for ConversionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn fail<T>(message: impl Into<String>) -> Result<T, ConversionError> {
    Err(ConversionError(message.into()))
}

/// A number on its way to a numeric metric.
enum Number {
    Integer(i128),
    Real(f64),
}

impl Returned {
    /// Short description for error messages: type and value.
    fn describe(&self) -> String {
        match self {
            Returned::None => "None".to_owned(),
            Returned::Bool(b) => format!("bool {}", if *b { "True" } else { "False" }),
            Returned::Int(Some(i)) => format!("int {i}"),
            Returned::Int(None) => "an int too large to represent".to_owned(),
            Returned::Float(x) => format!("float {}", short(*x)),
            Returned::Str(s) => format!("str {:?}", truncate_utf8(s, 40)),
            Returned::Other { type_name, .. } => format!("an object of type {type_name}"),
        }
    }

    fn to_number(&self) -> Result<Number, ConversionError> {
        match self {
            Returned::None => fail("the callback returned None instead of a value"),
            Returned::Bool(b) => Ok(Number::Integer(i128::from(*b))),
            Returned::Int(Some(i)) => Ok(Number::Integer(*i)),
            Returned::Int(None) => {
                fail("the callback returned an int too large for any gmond type")
            }
            Returned::Float(x) => Ok(Number::Real(*x)),
            Returned::Str(s) => parse_numeric_text(s),
            Returned::Other {
                as_float: Some(x), ..
            } => Ok(Number::Real(*x)),
            Returned::Other { .. } => fail(format!(
                "the callback returned {}, which is not a number",
                self.describe()
            )),
        }
    }
}

/// Parses text the way Python's `int()` then `float()` would: surrounding
/// whitespace allowed, underscores between digits allowed.
fn parse_numeric_text(text: &str) -> Result<Number, ConversionError> {
    let trimmed = text.trim();
    // Python allows one `_` between two digits ("1_000"), nowhere else.
    let plain: String = if trimmed.contains('_') && underscores_between_digits(trimmed) {
        trimmed.replace('_', "")
    } else {
        trimmed.to_owned()
    };
    if let Ok(i) = plain.parse::<i128>() {
        return Ok(Number::Integer(i));
    }
    match plain.parse::<f64>() {
        Ok(x) if !trimmed.is_empty() => Ok(Number::Real(x)),
        _ => fail(format!(
            "the callback returned the text {:?}, which is not a number",
            truncate_utf8(text, 40)
        )),
    }
}

fn underscores_between_digits(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().all(|(i, b)| {
        *b != b'_'
            || (i > 0
                && bytes[i - 1].is_ascii_digit()
                && bytes.get(i + 1).is_some_and(u8::is_ascii_digit))
    })
}

/// Truncates toward zero and checks the range of an integer metric.
/// Inlined, with the messages out of line: for an int in range, as nearly
/// every call returns, this is one range check.
#[inline]
fn to_integer(
    number: Number,
    min: i128,
    max: i128,
    type_name: &str,
) -> Result<i128, ConversionError> {
    let value = match number {
        Number::Integer(i) => i,
        Number::Real(x) => real_to_integer(x, min, max, type_name)?,
    };
    if value < min || value > max {
        return out_of_range(&value, min, max, type_name);
    }
    Ok(value)
}

fn real_to_integer(x: f64, min: i128, max: i128, type_name: &str) -> Result<i128, ConversionError> {
    if !x.is_finite() {
        return fail(format!(
            "{} cannot be published as a {type_name} metric",
            short(x)
        ));
    }
    let t = x.trunc();
    if t < min as f64 || t > max as f64 {
        return out_of_range(&short(x), min, max, type_name);
    }
    Ok(t as i128)
}

#[cold]
fn out_of_range<T>(
    value: &dyn std::fmt::Display,
    min: i128,
    max: i128,
    type_name: &str,
) -> Result<T, ConversionError> {
    fail(format!(
        "{value} is outside the {type_name} range ({min} to {max})"
    ))
}

fn to_real(number: Number, type_name: &str) -> Result<f64, ConversionError> {
    let x = match number {
        Number::Integer(i) => i as f64,
        Number::Real(x) => x,
    };
    if !x.is_finite() {
        return fail(format!(
            "{} cannot be published as a {type_name} metric",
            short(x)
        ));
    }
    Ok(x)
}

/// Converts a returned value to the metric's declared type.
pub fn convert(returned: &Returned, value_type: ValueType) -> Result<Value, ConversionError> {
    match value_type {
        ValueType::String => to_text(returned).map(Value::Str),
        numeric => to_numeric(returned.to_number()?, numeric),
    }
}

/// [`convert`] for a plain int, without building a [`Returned`]: the
/// common case, on every call.
#[inline]
pub fn convert_int(i: i64, value_type: ValueType) -> Result<Value, ConversionError> {
    match value_type {
        ValueType::String => convert(&Returned::Int(Some(i128::from(i))), value_type),
        numeric => to_numeric(Number::Integer(i128::from(i)), numeric),
    }
}

/// [`convert`] for a plain float, without building a [`Returned`].
#[inline]
pub fn convert_float(x: f64, value_type: ValueType) -> Result<Value, ConversionError> {
    match value_type {
        ValueType::String => convert(&Returned::Float(x), value_type),
        numeric => to_numeric(Number::Real(x), numeric),
    }
}

/// A number for a numeric metric type.
#[inline]
fn to_numeric(number: Number, value_type: ValueType) -> Result<Value, ConversionError> {
    match value_type {
        ValueType::String => fail("internal error: a number was converted for a string metric"),
        ValueType::Uint => {
            let n = to_integer(number, 0, i128::from(u32::MAX), "uint")?;
            Ok(Value::Uint(n as u32))
        }
        ValueType::Int => {
            let n = to_integer(number, i128::from(i32::MIN), i128::from(i32::MAX), "int")?;
            Ok(Value::Int(n as i32))
        }
        ValueType::Float => {
            let x = to_real(number, "float")?;
            if x.abs() > f64::from(f32::MAX) {
                return fail(format!(
                    "{} is outside the range of a float metric; declare it double",
                    short(x)
                ));
            }
            Ok(Value::Float(x as f32))
        }
        ValueType::Double => to_real(number, "double").map(Value::Double),
    }
}

fn to_text(returned: &Returned) -> Result<String, ConversionError> {
    let text = match returned {
        Returned::None => return fail("the callback returned None instead of a value"),
        Returned::Bool(b) => (if *b { "True" } else { "False" }).to_owned(),
        Returned::Int(Some(i)) => i.to_string(),
        Returned::Int(None) => return fail("the callback returned an int too large to print"),
        Returned::Float(x) => python_float_repr(*x),
        Returned::Str(s) => s.clone(),
        Returned::Other { type_name, .. } if UNFINISHED.contains(&type_name.as_str()) => {
            return fail(format!(
                "the callback returned a {type_name}: it is a generator or async function, but gmond needs a plain function that returns the value"
            ));
        }
        Returned::Other { text: Some(t), .. } => t.clone(),
        Returned::Other { type_name, .. } => {
            return fail(format!(
                "the callback returned an object of type {type_name}, which is not a value for a string metric"
            ));
        }
    };
    Ok(truncate_utf8(&value_safe(&text), MAX_STRING_BYTES).to_owned())
}

/// A float for a message: `1e300`, not three hundred digits.
fn short(x: f64) -> String {
    if x.is_finite() && x != 0.0 && !(1e-4..1e16).contains(&x.abs()) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

/// What a generator or `async def` callback returns instead of a value;
/// their `str()` is a memory address, never a metric value.
const UNFINISHED: [&str; 3] = ["coroutine", "generator", "async_generator"];

/// `str(float)` as Python writes it for the common cases (`2.5`, `3.0`).
fn python_float_repr(x: f64) -> String {
    if x.is_finite() && x == x.trunc() && x.abs() < 1e16 {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

impl Value {
    /// The zero of a type: what gmond gets when a metric never had a good value.
    pub fn zero(value_type: ValueType) -> Value {
        match value_type {
            ValueType::String => Value::Str(String::new()),
            ValueType::Uint => Value::Uint(0),
            ValueType::Int => Value::Int(0),
            ValueType::Float => Value::Float(0.0),
            ValueType::Double => Value::Double(0.0),
        }
    }

    /// The union gmond reads, fully zeroed first: gmond uses every byte as is.
    pub fn to_g_val(&self) -> g_val_t {
        let mut out = g_val_t {
            str_: [0; crate::ffi::MAX_G_STRING_SIZE as usize],
        };
        match self {
            Value::Str(s) => {
                let bytes = truncate_utf8(s, MAX_STRING_BYTES).as_bytes();
                let mut buf = [0 as libc::c_char; crate::ffi::MAX_G_STRING_SIZE as usize];
                for (dst, src) in buf.iter_mut().zip(bytes) {
                    // A NUL would end the text early; value_safe turns control characters into spaces.
                    *dst = *src as libc::c_char;
                }
                out.str_ = buf;
            }
            Value::Uint(v) => out.uint32 = *v,
            Value::Int(v) => out.int32 = *v,
            Value::Float(v) => out.f = *v,
            Value::Double(v) => out.d = *v,
        }
        out
    }
}

/// A value as the host keeps it between gmond's calls: numbers in place,
/// text boxed. gmond's string member alone is 64 bytes, and a metric's
/// state is read on every call, so it is kept small for the common case.
#[derive(Clone)]
pub enum Kept {
    Uint(u32),
    Int(i32),
    Float(f32),
    Double(f64),
    Str(Box<g_val_t>),
}

impl Kept {
    /// The zero of a type: what gmond gets when a metric never had a good value.
    pub fn zero(value_type: ValueType) -> Kept {
        let mut kept = Kept::Uint(0);
        kept.set(Value::zero(value_type));
        kept
    }

    /// Keeps `value` (reusing the text's box).
    pub fn set(&mut self, value: Value) {
        *self = match (&mut *self, value) {
            (Kept::Str(held), value @ Value::Str(_)) => {
                **held = value.to_g_val();
                return;
            }
            (_, value @ Value::Str(_)) => Kept::Str(Box::new(value.to_g_val())),
            (_, Value::Uint(v)) => Kept::Uint(v),
            (_, Value::Int(v)) => Kept::Int(v),
            (_, Value::Float(v)) => Kept::Float(v),
            (_, Value::Double(v)) => Kept::Double(v),
        };
    }

    /// The union gmond reads, as [`Value::to_g_val`] makes it.
    #[inline]
    pub fn to_g_val(&self) -> g_val_t {
        let number = match self {
            Kept::Str(held) => return **held,
            Kept::Uint(v) => Value::Uint(*v),
            Kept::Int(v) => Value::Int(*v),
            Kept::Float(v) => Value::Float(*v),
            Kept::Double(v) => Value::Double(*v),
        };
        number.to_g_val()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Returned {
        Returned::Str(text.to_owned())
    }

    #[test]
    fn plain_int_and_float_paths_follow_the_general_rules() {
        let types = [
            ValueType::String,
            ValueType::Uint,
            ValueType::Int,
            ValueType::Float,
            ValueType::Double,
        ];
        let ints = [
            0,
            1,
            -1,
            42,
            i64::from(i32::MAX),
            i64::from(i32::MIN),
            i64::from(i32::MIN) - 1,
            i64::from(u32::MAX),
            i64::from(u32::MAX) + 1,
            i64::MAX,
            i64::MIN,
        ];
        let floats = [
            0.0,
            -0.0,
            0.5,
            -2.7,
            1e300,
            4294967295.9,
            4294967296.0,
            f64::NAN,
            f64::INFINITY,
            f64::from(f32::MAX) * 2.0,
        ];
        for t in types {
            for i in ints {
                assert_eq!(
                    convert_int(i, t),
                    convert(&Returned::Int(Some(i128::from(i))), t),
                    "{i} as {t:?}"
                );
            }
            for x in floats {
                let general = convert(&Returned::Float(x), t);
                let plain = convert_float(x, t);
                // NaN != NaN: compare what they say, not the bits.
                assert_eq!(format!("{plain:?}"), format!("{general:?}"), "{x} as {t:?}");
            }
        }
    }

    fn ok(r: Returned, t: ValueType) -> Value {
        convert(&r, t).unwrap_or_else(|e| panic!("{r:?} as {t:?}: {e}"))
    }

    fn err(r: Returned, t: ValueType) -> String {
        match convert(&r, t) {
            Ok(v) => panic!("{r:?} as {t:?} should fail, got {v:?}"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn uint_accepts_what_real_modules_return() {
        assert_eq!(ok(Returned::Int(Some(5)), ValueType::Uint), Value::Uint(5));
        assert_eq!(ok(Returned::Bool(true), ValueType::Uint), Value::Uint(1));
        assert_eq!(ok(Returned::Float(3.7), ValueType::Uint), Value::Uint(3));
        assert_eq!(ok(s("123"), ValueType::Uint), Value::Uint(123));
        assert_eq!(ok(s(" 42 "), ValueType::Uint), Value::Uint(42));
        assert_eq!(ok(s("3.5"), ValueType::Uint), Value::Uint(3));
        assert_eq!(ok(s("1_000"), ValueType::Uint), Value::Uint(1000));
        assert!(err(s("1__0"), ValueType::Uint).contains("not a number"));
        assert!(err(s("_5"), ValueType::Uint).contains("not a number"));
        assert_eq!(
            ok(Returned::Int(Some(4_294_967_295)), ValueType::Uint),
            Value::Uint(u32::MAX)
        );
    }

    #[test]
    fn uint_refuses_instead_of_wrapping() {
        assert!(err(Returned::Int(Some(-1)), ValueType::Uint).contains("outside the"));
        assert!(err(Returned::Int(Some(1 << 40)), ValueType::Uint).contains("outside the"));
        assert!(err(Returned::Int(None), ValueType::Uint).contains("too large"));
        assert!(err(Returned::Float(-0.5 - 1.0), ValueType::Uint).contains("outside the"));
        assert!(err(s("12abc"), ValueType::Uint).contains("not a number"));
        assert!(err(s(""), ValueType::Uint).contains("not a number"));
        assert!(err(Returned::None, ValueType::Uint).contains("None"));
        assert!(err(Returned::Float(f64::NAN), ValueType::Uint).contains("cannot be published"));
    }

    #[test]
    fn int_truncates_toward_zero_and_checks_range() {
        assert_eq!(ok(Returned::Float(-2.9), ValueType::Int), Value::Int(-2));
        assert_eq!(ok(s("-12"), ValueType::Int), Value::Int(-12));
        assert_eq!(ok(Returned::Bool(false), ValueType::Int), Value::Int(0));
        assert!(err(Returned::Int(Some(1 << 31)), ValueType::Int).contains("outside the"));
        assert!(err(s("4294967297"), ValueType::Int).contains("outside the"));
    }

    #[test]
    fn floats_and_doubles() {
        assert_eq!(ok(s(" 1.5e3"), ValueType::Float), Value::Float(1500.0));
        assert_eq!(
            ok(Returned::Int(Some(7)), ValueType::Float),
            Value::Float(7.0)
        );
        assert_eq!(
            ok(Returned::Float(1.1), ValueType::Double),
            Value::Double(1.1)
        );
        assert_eq!(ok(s("2.5"), ValueType::Double), Value::Double(2.5));
        assert!(err(Returned::Float(1e300), ValueType::Float).contains("declare it double"));
        assert!(
            err(Returned::Float(f64::INFINITY), ValueType::Double).contains("cannot be published")
        );
        assert!(err(s("nan"), ValueType::Double).contains("cannot be published"));
        assert!(err(s("1.5x"), ValueType::Double).contains("not a number"));
    }

    #[test]
    fn objects_with_float_convert_to_numbers() {
        let decimal = Returned::Other {
            type_name: "Decimal".into(),
            text: Some("2.50".into()),
            as_float: Some(2.5),
        };
        assert_eq!(ok(decimal.clone(), ValueType::Double), Value::Double(2.5));
        assert_eq!(ok(decimal, ValueType::String), Value::Str("2.50".into()));
        let dict = Returned::Other {
            type_name: "dict".into(),
            text: Some("{}".into()),
            as_float: None,
        };
        assert!(err(dict, ValueType::Uint).contains("type dict"));
        let coroutine = Returned::Other {
            type_name: "coroutine".into(),
            text: Some("<coroutine object f at 0x7f00>".into()),
            as_float: None,
        };
        assert!(err(coroutine, ValueType::String).contains("async function"));
    }

    #[test]
    fn anything_but_none_is_a_string() {
        assert_eq!(
            ok(Returned::Int(Some(42)), ValueType::String),
            Value::Str("42".into())
        );
        assert_eq!(
            ok(Returned::Float(3.0), ValueType::String),
            Value::Str("3.0".into())
        );
        assert_eq!(
            ok(Returned::Float(2.5), ValueType::String),
            Value::Str("2.5".into())
        );
        assert_eq!(
            ok(Returned::Bool(false), ValueType::String),
            Value::Str("False".into())
        );
        assert_eq!(
            ok(s("say \"hi\" <ok>"), ValueType::String),
            Value::Str("say 'hi' <ok>".into())
        );
        assert!(err(Returned::None, ValueType::String).contains("None"));
    }

    #[test]
    fn long_strings_are_cut_at_a_character_boundary() {
        let long = "é".repeat(100);
        let Value::Str(cut) = ok(s(&long), ValueType::String) else {
            panic!("not a string")
        };
        assert_eq!(cut, "?".repeat(63));
        let Value::Str(ascii) = ok(s(&"x".repeat(100)), ValueType::String) else {
            panic!()
        };
        assert_eq!(ascii.len(), 63);
    }

    #[test]
    fn g_val_is_zeroed_and_nul_terminated() {
        let g = Value::Str("x".repeat(63)).to_g_val();
        // SAFETY: reading the member we just wrote.
        let bytes = unsafe { g.str_ };
        assert_eq!(bytes[62], b'x' as libc::c_char);
        assert_eq!(bytes[63], 0);
        let g = Value::Uint(7).to_g_val();
        // SAFETY: the whole union was zeroed, so every byte is initialised.
        let bytes = unsafe { g.str_ };
        assert_eq!(bytes[0], 7);
        assert!(bytes[4..].iter().all(|b| *b == 0));
    }
}
