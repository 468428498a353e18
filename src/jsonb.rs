//! Reading PostgreSQL `jsonb` values into `serde_json` values, directly from the binary jsonb
//! (no text round trip), without recursion, and without failing on what jsonb can hold but a
//! `serde_json::Value` cannot:
//!
//! - a number beyond the range of a double (`1e400`): jsonb keeps it exactly as a numeric;
//! - nesting deeper than [`MAX_DEPTH`]: jsonb accepts it up to the server's stack depth.
//!
//! Events are the app's data and stored whatever they hold, so [`Reading::Lenient`] reads such a
//! value as missing (an object key is left out, an array element reads as null): a predicate on
//! it is false, exactly as for an absent property. Trigger definitions are ours to refuse, so
//! [`Reading::Strict`] reports the first such value with its JSON path.

use pgrx::prelude::*;
use serde_json::{Map, Number, Value};

/// Containers nested deeper than this are not read: no property path of a trigger reaches that
/// deep, and a definition nested deeper is refused.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// Unreadable values read as missing.
    Lenient,
    /// The first unreadable value is an error.
    Strict,
}

/// A value [`Reading::Strict`] refused: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub path: String,
    pub problem: String,
}

/// One open container while walking.
enum Frame {
    Array(Vec<Value>),
    /// A jsonb scalar at the top level is stored as a one-element "raw scalar" array.
    Scalar(Option<Value>),
    Object(Map<String, Value>, Option<String>),
    /// A container below [`MAX_DEPTH`], skipped (Lenient) until its end.
    Skipped,
}

/// Reads a jsonb datum.
///
/// # Safety
/// `datum` must be a non-null jsonb datum (possibly toasted) valid for the current memory context.
pub unsafe fn read(datum: pg_sys::Datum, reading: Reading) -> Result<Value, Unreadable> {
    let jsonb = pg_sys::pg_detoast_datum(datum.cast_mut_ptr()) as *mut pg_sys::Jsonb;
    let mut iterator = pg_sys::JsonbIteratorInit(&mut (*jsonb).root);
    let mut stack: Vec<Frame> = Vec::new();
    // SAFETY: JsonbValue is plain data; the iterator fills it before each read.
    let mut value: pg_sys::JsonbValue = std::mem::zeroed();
    loop {
        let token = pg_sys::JsonbIteratorNext(&mut iterator, &mut value, false);
        let depth = stack.len();
        let skipping = matches!(stack.last(), Some(Frame::Skipped));
        match token {
            pg_sys::JsonbIteratorToken::WJB_BEGIN_ARRAY | pg_sys::JsonbIteratorToken::WJB_BEGIN_OBJECT => {
                if skipping || depth >= MAX_DEPTH {
                    if reading == Reading::Strict {
                        return Err(Unreadable {
                            path: path_of(&stack),
                            problem: format!("nested deeper than {MAX_DEPTH} levels"),
                        });
                    }
                    stack.push(Frame::Skipped);
                } else if token == pg_sys::JsonbIteratorToken::WJB_BEGIN_OBJECT {
                    stack.push(Frame::Object(Map::new(), None));
                } else if value.val.array.rawScalar {
                    stack.push(Frame::Scalar(None));
                } else {
                    stack.push(Frame::Array(Vec::new()));
                }
            }
            pg_sys::JsonbIteratorToken::WJB_KEY => {
                if let Some(Frame::Object(_, key)) = stack.last_mut() {
                    *key = Some(text_of(&value));
                }
            }
            pg_sys::JsonbIteratorToken::WJB_VALUE | pg_sys::JsonbIteratorToken::WJB_ELEM => {
                if skipping {
                    continue;
                }
                match scalar(&value) {
                    Ok(v) => add(&mut stack, Some(v)),
                    Err(problem) if reading == Reading::Strict => {
                        return Err(Unreadable { path: path_of(&stack), problem })
                    }
                    Err(_) => add(&mut stack, None),
                }
            }
            pg_sys::JsonbIteratorToken::WJB_END_ARRAY | pg_sys::JsonbIteratorToken::WJB_END_OBJECT => {
                let closed = match stack.pop() {
                    Some(Frame::Array(items)) => Some(Value::Array(items)),
                    Some(Frame::Object(map, _)) => Some(Value::Object(map)),
                    Some(Frame::Scalar(v)) => Some(v.unwrap_or(Value::Null)),
                    Some(Frame::Skipped) | None => None,
                };
                if stack.is_empty() {
                    return Ok(closed.unwrap_or(Value::Null));
                }
                if !matches!(stack.last(), Some(Frame::Skipped)) {
                    add(&mut stack, closed);
                }
            }
            _ => return Ok(Value::Null),
        }
    }
}

/// Adds a finished value (None: unreadable, so missing) to the innermost open container.
fn add(stack: &mut [Frame], value: Option<Value>) {
    match stack.last_mut() {
        Some(Frame::Array(items)) => items.push(value.unwrap_or(Value::Null)),
        Some(Frame::Object(map, key)) => {
            if let (Some(k), Some(v)) = (key.take(), value) {
                map.insert(k, v);
            }
        }
        Some(Frame::Scalar(slot)) => *slot = value,
        Some(Frame::Skipped) | None => {}
    }
}

/// The JSON path of the element being read, `$.a.b[2]`, for Strict's errors.
fn path_of(stack: &[Frame]) -> String {
    let mut path = String::from("$");
    for frame in stack {
        match frame {
            Frame::Array(items) => path.push_str(&format!("[{}]", items.len())),
            Frame::Object(_, Some(key)) => {
                path.push('.');
                path.push_str(key);
            }
            Frame::Object(_, None) | Frame::Scalar(_) | Frame::Skipped => {}
        }
    }
    path
}

unsafe fn text_of(value: &pg_sys::JsonbValue) -> String {
    let s = value.val.string;
    let bytes = std::slice::from_raw_parts(s.val as *const u8, s.len as usize);
    String::from_utf8_lossy(bytes).into_owned()
}

/// A scalar jsonb value as a serde value, or why it has none.
unsafe fn scalar(value: &pg_sys::JsonbValue) -> Result<Value, String> {
    match value.type_ {
        pg_sys::jbvType::jbvNull => Ok(Value::Null),
        pg_sys::jbvType::jbvBool => Ok(Value::Bool(value.val.boolean)),
        pg_sys::jbvType::jbvString => Ok(Value::String(text_of(value))),
        pg_sys::jbvType::jbvNumeric => {
            let palloced = pg_sys::numeric_normalize(value.val.numeric);
            let text = std::ffi::CStr::from_ptr(palloced).to_string_lossy().into_owned();
            pg_sys::pfree(palloced.cast());
            number(&text).ok_or_else(|| format!("number {} is out of range", crate::rule::error::excerpt(&text)))
        }
        other => Err(format!("unexpected jsonb value of type {other}")),
    }
}

/// A numeric's text as a JSON number: an integer when it is one that fits, else a finite double.
pub fn number(text: &str) -> Option<Value> {
    if let Ok(i) = text.parse::<i64>() {
        return Some(Value::Number(i.into()));
    }
    if let Ok(u) = text.parse::<u64>() {
        return Some(Value::Number(u.into()));
    }
    text.parse::<f64>().ok().and_then(Number::from_f64).map(Value::Number)
}

/// Whether `doc` contains `want` as jsonb's `@>` decides it for a document and an object of
/// wanted values: every key of an object with a value contained in `doc`'s, every element of an
/// array contained in some element of `doc`'s, scalars equal (numbers by value, as numerics).
pub fn contains(doc: &Value, want: &Value) -> bool {
    match (doc, want) {
        (Value::Object(have), Value::Object(want)) => {
            want.iter().all(|(key, w)| have.get(key).is_some_and(|h| contains(h, w)))
        }
        (Value::Array(have), Value::Array(want)) => want.iter().all(|w| have.iter().any(|h| contains(h, w))),
        (Value::Number(h), Value::Number(w)) => h == w || h.as_f64().is_some_and(|h| w.as_f64() == Some(h)),
        (h, w) => h == w,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containment_is_that_of_jsonb() {
        let doc = serde_json::json!({"k": 1, "cart": {"id": 7, "skus": [1, 2, 3]}, "n": null});
        for (want, expected) in [
            (serde_json::json!({}), true),
            (serde_json::json!({"k": 1.0}), true),
            (serde_json::json!({"cart": {"id": 7}}), true),
            (serde_json::json!({"cart": {"skus": [3, 1]}}), true),
            (serde_json::json!({"n": null}), true),
            (serde_json::json!({"k": 2}), false),
            (serde_json::json!({"k": "1"}), false),
            (serde_json::json!({"missing": null}), false),
            (serde_json::json!({"cart": {"skus": [4]}}), false),
        ] {
            assert_eq!(contains(&doc, &want), expected, "{want}");
        }
    }

    #[test]
    fn numbers_are_integers_when_they_fit_and_finite_doubles_otherwise() {
        assert_eq!(number("42"), Some(Value::from(42)));
        assert_eq!(number("-9223372036854775808"), Some(Value::from(i64::MIN)));
        assert_eq!(number("18446744073709551615"), Some(Value::from(u64::MAX)));
        assert_eq!(number("1.5"), Some(Value::from(1.5)));
        assert_eq!(number("100000000000000000000"), Some(Value::from(1e20)));
        let huge = format!("1{}", "0".repeat(400));
        assert_eq!(number(&huge), None);
        assert_eq!(number(&format!("-{huge}")), None);
    }
}

/// A `jsonb` value read leniently: the type of event properties and profile attributes wherever
/// the insert path or the scheduler reads them (SPI columns and arguments).
pub struct Lenient(pub Value);

impl FromDatum for Lenient {
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _: pg_sys::Oid) -> Option<Lenient> {
        // Lenient reading has no error.
        (!is_null).then(|| Lenient(read(datum, Reading::Lenient).unwrap_or(Value::Null)))
    }
}

impl IntoDatum for Lenient {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        pgrx::JsonB(self.0).into_datum()
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

/// A `jsonb` argument of a SQL function that refuses what it cannot read (trigger definitions):
/// the value, or the first unreadable part; and the datum as given, to store it unchanged.
pub struct Strict<'fcx> {
    pub value: Result<Value, Unreadable>,
    datum: pg_sys::Datum,
    _call: std::marker::PhantomData<&'fcx ()>,
}

impl Strict<'_> {
    /// The argument as given, to pass on to SPI as a jsonb parameter.
    pub fn datum(&self) -> pgrx::datum::DatumWithOid<'_> {
        // SAFETY: a jsonb datum of the current call, alive while `self` is.
        unsafe { pgrx::datum::DatumWithOid::new(GivenDatum(self.datum), pg_sys::JSONBOID) }
    }
}

/// A jsonb datum passed on as it was given.
struct GivenDatum(pg_sys::Datum);

impl IntoDatum for GivenDatum {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(self.0)
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

impl FromDatum for Strict<'_> {
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _: pg_sys::Oid) -> Option<Self> {
        (!is_null).then(|| Strict { value: read(datum, Reading::Strict), datum, _call: std::marker::PhantomData })
    }
}

// SAFETY: the argument is a jsonb datum, unboxed with FromDatum as pgrx's own JsonB is.
unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for Strict<'fcx> {
    unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        arg.unbox_arg_using_from_datum()
            .unwrap_or_else(|| crate::sql_error::null_argument(&format!("argument {}", index + 1)))
    }

    unsafe fn unbox_nullable_arg(arg: pgrx::callconv::Arg<'_, 'fcx>) -> pgrx::nullable::Nullable<Self> {
        arg.unbox_arg_using_from_datum().into()
    }
}

pgrx::impl_sql_translatable!(Strict<'_>, arg_only = "jsonb");
