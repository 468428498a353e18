//! Message templates in Liquid (the `liquid` crate), rendered with the customer's profile, the
//! triggering event and the trigger's payload.
//!
//! Two rules on top of Liquid:
//! - a missing variable renders as empty (and `default` applies to it), at any depth: the render
//!   context is wrapped so that an unknown key is an empty, nil-like value instead of an error;
//! - rendering is bounded: templates are at most 64 KiB, a `for` range must have literal bounds
//!   at most 1,000 apart, and output stops with an error past 256 KiB.

use liquid::model::{ArrayView, DisplayCow, KStringCow, ObjectView, State, Value, ValueView};
use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;

const MAX_TEMPLATE_BYTES: usize = 64 * 1024;
const MAX_OUTPUT_BYTES: usize = 256 * 1024;
const MAX_RANGE: i64 = 1_000;

thread_local! {
    static PARSER: OnceCell<liquid::Parser> = const { OnceCell::new() };
}

/// Checks that a template parses and stays within the bounds; the error says what is wrong.
pub fn validate(text: &str) -> Result<(), String> {
    parse(text).map(|_| ())
}

/// Renders a template with a context built by [`context`].
pub fn render(text: &str, context: &Context) -> Result<String, String> {
    let template = parse(text)?;
    let mut out = Bounded(Vec::new(), false);
    template.render_to(&mut out, context).map_err(|e| {
        if out.1 {
            format!("rendered output exceeds {MAX_OUTPUT_BYTES} bytes")
        } else {
            e.to_string()
        }
    })?;
    String::from_utf8(out.0).map_err(|e| e.to_string())
}

fn parse(text: &str) -> Result<liquid::Template, String> {
    if text.len() > MAX_TEMPLATE_BYTES {
        return Err(format!("template is {} bytes; the limit is {MAX_TEMPLATE_BYTES}", text.len()));
    }
    check_ranges(text)?;
    PARSER.with(|cell| {
        let parser = match cell.get() {
            Some(parser) => parser,
            None => {
                let built = liquid::ParserBuilder::with_stdlib().build().map_err(|e| format!("Liquid parser: {e}"))?;
                cell.get_or_init(|| built)
            }
        };
        parser.parse(text).map_err(|e| e.to_string())
    })
}

/// Rejects `(a..b)` ranges that are not two integer literals at most MAX_RANGE apart.
fn check_ranges(text: &str) -> Result<(), String> {
    let mut rest = text;
    while let Some(start) = rest.find("{%") {
        let after = &rest[start + 2..];
        let end = after.find("%}").unwrap_or(after.len());
        let mut tag = &after[..end];
        while let Some(open) = tag.find('(') {
            let close = tag[open..].find(')').map_or(tag.len(), |c| open + c);
            if let Some((low, high)) = tag[open + 1..close].split_once("..") {
                let range = &tag[open + 1..close];
                match (low.trim().parse::<i64>(), high.trim().parse::<i64>()) {
                    (Ok(l), Ok(h)) if h.saturating_sub(l) <= MAX_RANGE => {}
                    (Ok(_), Ok(_)) => return Err(format!("range ({range}) is longer than {MAX_RANGE}")),
                    _ => return Err(format!("range ({range}) must have integer literal bounds")),
                }
            }
            tag = &tag[close.min(tag.len())..];
            tag = tag.strip_prefix(')').unwrap_or(tag);
        }
        rest = &after[end..];
    }
    Ok(())
}

/// The output buffer, and whether a write went past the limit.
struct Bounded(Vec<u8>, bool);

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_OUTPUT_BYTES {
            self.1 = true;
            return Err(std::io::Error::other(format!("rendered output exceeds {MAX_OUTPUT_BYTES} bytes")));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A render context: JSON turned into Liquid values, where any unknown key is [`Missing`].
#[derive(Debug)]
pub enum Context {
    Scalar(Value),
    Array(Vec<Context>),
    Object(BTreeMap<String, Context>),
}

/// What an unknown variable evaluates to: renders empty, is falsy, and takes `default`.
#[derive(Debug)]
pub struct Missing;

static MISSING: Missing = Missing;

impl Context {
    pub fn from_json(value: &serde_json::Value) -> Context {
        match value {
            serde_json::Value::Null => Context::Scalar(Value::Nil),
            serde_json::Value::Bool(b) => Context::Scalar(Value::scalar(*b)),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Context::Scalar(Value::scalar(i)),
                None => Context::Scalar(Value::scalar(n.as_f64().unwrap_or(0.0))),
            },
            serde_json::Value::String(s) => Context::Scalar(Value::scalar(s.clone())),
            serde_json::Value::Array(items) => Context::Array(items.iter().map(Context::from_json).collect()),
            serde_json::Value::Object(map) => {
                Context::Object(map.iter().map(|(k, v)| (k.clone(), Context::from_json(v))).collect())
            }
        }
    }

    /// The top-level context `{profile, event, payload, message}` as an object.
    pub fn object(entries: Vec<(&str, Context)>) -> Context {
        Context::Object(entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }
}

impl ValueView for Context {
    fn as_debug(&self) -> &dyn fmt::Debug {
        self
    }
    fn render(&self) -> DisplayCow<'_> {
        match self {
            Context::Scalar(v) => v.render(),
            _ => DisplayCow::Owned(Box::new(self.to_value().render().to_string())),
        }
    }
    fn source(&self) -> DisplayCow<'_> {
        match self {
            Context::Scalar(v) => v.source(),
            _ => DisplayCow::Owned(Box::new(self.to_value().source().to_string())),
        }
    }
    fn type_name(&self) -> &'static str {
        match self {
            Context::Scalar(v) => v.type_name(),
            Context::Array(_) => "array",
            Context::Object(_) => "object",
        }
    }
    fn query_state(&self, state: State) -> bool {
        match self {
            Context::Scalar(v) => v.query_state(state),
            Context::Array(items) => matches!(state, State::Truthy) != items.is_empty(),
            Context::Object(map) => matches!(state, State::Truthy) != map.is_empty(),
        }
    }
    fn to_kstr(&self) -> KStringCow<'_> {
        match self {
            Context::Scalar(v) => v.to_kstr(),
            _ => KStringCow::from_string(self.render().to_string()),
        }
    }
    fn to_value(&self) -> Value {
        match self {
            Context::Scalar(v) => v.clone(),
            Context::Array(items) => Value::Array(items.iter().map(ValueView::to_value).collect()),
            Context::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone().into(), v.to_value())).collect()),
        }
    }
    fn as_scalar(&self) -> Option<liquid::model::ScalarCow<'_>> {
        match self {
            Context::Scalar(v) => v.as_scalar(),
            _ => None,
        }
    }
    fn as_array(&self) -> Option<&dyn ArrayView> {
        matches!(self, Context::Array(_)).then_some(self as &dyn ArrayView)
    }
    fn as_object(&self) -> Option<&dyn ObjectView> {
        matches!(self, Context::Object(_)).then_some(self as &dyn ObjectView)
    }
    fn is_nil(&self) -> bool {
        matches!(self, Context::Scalar(Value::Nil))
    }
}

impl ArrayView for Context {
    fn as_value(&self) -> &dyn ValueView {
        self
    }
    fn size(&self) -> i64 {
        match self {
            Context::Array(items) => items.len() as i64,
            _ => 0,
        }
    }
    fn values<'k>(&'k self) -> Box<dyn Iterator<Item = &'k dyn ValueView> + 'k> {
        match self {
            Context::Array(items) => Box::new(items.iter().map(|v| v as &dyn ValueView)),
            _ => Box::new(std::iter::empty()),
        }
    }
    fn contains_key(&self, index: i64) -> bool {
        ArrayView::get(self, index).is_some()
    }
    fn get(&self, index: i64) -> Option<&dyn ValueView> {
        let Context::Array(items) = self else { return None };
        let i = if index < 0 { items.len() as i64 + index } else { index };
        usize::try_from(i).ok().and_then(|i| <[Context]>::get(items, i)).map(|v| v as &dyn ValueView)
    }
}

impl ObjectView for Context {
    fn as_value(&self) -> &dyn ValueView {
        self
    }
    fn size(&self) -> i64 {
        match self {
            Context::Object(map) => map.len() as i64,
            _ => 0,
        }
    }
    fn keys<'k>(&'k self) -> Box<dyn Iterator<Item = KStringCow<'k>> + 'k> {
        match self {
            Context::Object(map) => Box::new(map.keys().map(|k| KStringCow::from_ref(k.as_str()))),
            _ => Box::new(std::iter::empty()),
        }
    }
    fn values<'k>(&'k self) -> Box<dyn Iterator<Item = &'k dyn ValueView> + 'k> {
        match self {
            Context::Object(map) => Box::new(map.values().map(|v| v as &dyn ValueView)),
            _ => Box::new(std::iter::empty()),
        }
    }
    fn iter<'k>(&'k self) -> Box<dyn Iterator<Item = (KStringCow<'k>, &'k dyn ValueView)> + 'k> {
        match self {
            Context::Object(map) => {
                Box::new(map.iter().map(|(k, v)| (KStringCow::from_ref(k.as_str()), v as &dyn ValueView)))
            }
            _ => Box::new(std::iter::empty()),
        }
    }
    /// Lenient: every key "exists" (unknown ones are Missing), so lookups never fail.
    fn contains_key(&self, _index: &str) -> bool {
        true
    }
    fn get<'s>(&'s self, index: &str) -> Option<&'s dyn ValueView> {
        match self {
            Context::Object(map) => Some(map.get(index).map_or(&MISSING as &dyn ValueView, |v| v as &dyn ValueView)),
            _ => Some(&MISSING),
        }
    }
}

impl ValueView for Missing {
    fn as_debug(&self) -> &dyn fmt::Debug {
        self
    }
    fn render(&self) -> DisplayCow<'_> {
        DisplayCow::Borrowed(&"")
    }
    fn source(&self) -> DisplayCow<'_> {
        DisplayCow::Borrowed(&"nil")
    }
    fn type_name(&self) -> &'static str {
        "nil"
    }
    fn query_state(&self, state: State) -> bool {
        !matches!(state, State::Truthy)
    }
    fn to_kstr(&self) -> KStringCow<'_> {
        KStringCow::from_static("")
    }
    fn to_value(&self) -> Value {
        Value::Nil
    }
    fn as_object(&self) -> Option<&dyn ObjectView> {
        Some(self)
    }
    fn is_nil(&self) -> bool {
        true
    }
}

impl ObjectView for Missing {
    fn as_value(&self) -> &dyn ValueView {
        self
    }
    fn size(&self) -> i64 {
        0
    }
    fn keys<'k>(&'k self) -> Box<dyn Iterator<Item = KStringCow<'k>> + 'k> {
        Box::new(std::iter::empty())
    }
    fn values<'k>(&'k self) -> Box<dyn Iterator<Item = &'k dyn ValueView> + 'k> {
        Box::new(std::iter::empty())
    }
    fn iter<'k>(&'k self) -> Box<dyn Iterator<Item = (KStringCow<'k>, &'k dyn ValueView)> + 'k> {
        Box::new(std::iter::empty())
    }
    fn contains_key(&self, _index: &str) -> bool {
        true
    }
    fn get<'s>(&'s self, _index: &str) -> Option<&'s dyn ValueView> {
        Some(&MISSING)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> Context {
        Context::object(vec![
            ("profile", Context::from_json(&json!({"first_name": "Ada", "tags": ["a", "b"]}))),
            ("event", Context::from_json(&json!({"name": "cart_updated", "properties": {"cart": {"value": 180}}}))),
            ("payload", Context::from_json(&json!({"coupon": "SAVE10"}))),
        ])
    }

    #[test]
    fn renders_profile_event_and_payload() {
        let out = render(
            "Hi {{ profile.first_name }}, your cart of {{ event.properties.cart.value }} - use {{ payload.coupon }}",
            &ctx(),
        );
        assert_eq!(out.unwrap(), "Hi Ada, your cart of 180 - use SAVE10");
        assert_eq!(render("{% for t in profile.tags %}[{{ t }}]{% endfor %}", &ctx()).unwrap(), "[a][b]");
    }

    #[test]
    fn missing_variables_are_empty_or_default() {
        assert_eq!(render("Hi {{ profile.last_name }}!", &ctx()).unwrap(), "Hi !");
        assert_eq!(render("{{ profile.address.city | default: \"there\" }}", &ctx()).unwrap(), "there");
        assert_eq!(render("{{ nothing.at.all }}", &ctx()).unwrap(), "");
        assert_eq!(render("{% if profile.vip %}vip{% else %}std{% endif %}", &ctx()).unwrap(), "std");
    }

    #[test]
    fn bad_or_unbounded_templates_are_rejected() {
        assert!(validate("{% if %}").is_err());
        assert!(validate("{{ x ").is_err());
        assert!(validate("{% for i in (1..100000000) %}x{% endfor %}").unwrap_err().contains("longer"));
        assert!(validate("{% for i in (1..event.n) %}x{% endfor %}").unwrap_err().contains("literal"));
        assert!(validate("{% for i in (1..10) %}{{ i }}{% endfor %}").is_ok());
        let huge = "{% for i in (1..1000) %}{% for j in (1..1000) %}xxxxxxxxxx{% endfor %}{% endfor %}";
        let err = render(huge, &ctx()).unwrap_err();
        assert!(err.contains("exceeds"), "{err}");
    }
}
