//! Predicates over an event's properties and the customer's profile attributes.
//!
//! `parse` turns the JSON form into a typed tree, with an error naming the JSON path of any
//! mistake; `Predicate::holds` evaluates the tree against one event. No SPI here.

use super::duration;
use super::error::{show, type_name, DefinitionError};
use crate::instant::UnixMicros;
use serde_json::Value;
use std::cmp::Ordering;

const OPERATORS: &[&str] = &["eq", "ne", "in", "lt", "lte", "gt", "gte", "exists", "contains"];
const OPERATOR_HINT: &str = "operators are eq, ne, in, lt, lte, gt, gte, exists, contains";
const FORM_HINT: &str = r#"a predicate is {"all": [...]}, {"any": [...]}, {"not": {...}}, or {"property" or "profile": "<path>", "<operator>": <operand>}"#;

#[derive(Debug, Clone, PartialEq)]
pub enum Predicate {
    All(Vec<Predicate>),
    Any(Vec<Predicate>),
    Not(Box<Predicate>),
    Condition(Condition),
}

/// Which document a condition looks into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Property,
    Profile,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub source: Source,
    pub path: Vec<String>,
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Eq(Value),
    Ne(Value),
    In(Vec<Value>),
    Compare(Comparison, Operand),
    Exists(bool),
    Contains(Value),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Lt,
    Lte,
    Gt,
    Gte,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Operand {
    Number(f64),
    /// An absolute instant, on the Unix clock.
    Timestamp(UnixMicros),
    /// The event's `occurred_at` minus this many microseconds.
    Ago(i64),
}

/// What a predicate is evaluated against.
pub struct Facts<'a> {
    pub properties: &'a Value,
    pub profile: &'a Value,
    /// The event's `occurred_at`.
    pub occurred_at: UnixMicros,
}

impl Predicate {
    pub fn holds(&self, facts: &Facts) -> bool {
        match self {
            Predicate::All(items) => items.iter().all(|p| p.holds(facts)),
            Predicate::Any(items) => items.iter().any(|p| p.holds(facts)),
            Predicate::Not(inner) => !inner.holds(facts),
            Predicate::Condition(c) => c.holds(facts),
        }
    }

    /// Whether evaluating this predicate needs the customer's profile (so it can be fetched once).
    pub fn uses(&self, source: Source) -> bool {
        match self {
            Predicate::All(items) | Predicate::Any(items) => items.iter().any(|p| p.uses(source)),
            Predicate::Not(inner) => inner.uses(source),
            Predicate::Condition(c) => c.source == source,
        }
    }
}

impl Condition {
    fn holds(&self, facts: &Facts) -> bool {
        let root = match self.source {
            Source::Property => facts.properties,
            Source::Profile => facts.profile,
        };
        let value = lookup(root, &self.path);
        match &self.op {
            Op::Eq(expected) => value.is_some_and(|v| json_eq(v, expected)),
            Op::Ne(expected) => !value.is_some_and(|v| json_eq(v, expected)),
            Op::In(options) => value.is_some_and(|v| options.iter().any(|o| json_eq(v, o))),
            Op::Exists(wanted) => value.is_some_and(|v| !v.is_null()) == *wanted,
            Op::Contains(needle) => match (value, needle) {
                (Some(Value::String(hay)), Value::String(n)) => hay.contains(n.as_str()),
                (Some(Value::Array(items)), n) => items.iter().any(|item| json_eq(item, n)),
                _ => false,
            },
            Op::Compare(cmp, operand) => {
                let ordering = match (operand, value) {
                    (Operand::Number(n), Some(Value::Number(v))) => v.as_f64().and_then(|v| v.partial_cmp(n)),
                    (Operand::Timestamp(t), Some(Value::String(s))) => parse_timestamp(s).map(|v| v.cmp(t)),
                    (Operand::Ago(d), Some(Value::String(s))) => {
                        parse_timestamp(s).map(|v| v.cmp(&facts.occurred_at.saturating_sub(*d)))
                    }
                    _ => None,
                };
                ordering.is_some_and(|o| match cmp {
                    Comparison::Lt => o == Ordering::Less,
                    Comparison::Lte => o != Ordering::Greater,
                    Comparison::Gt => o == Ordering::Greater,
                    Comparison::Gte => o != Ordering::Less,
                })
            }
        }
    }
}

/// Follows a dotted path; a numeric segment indexes an array.
pub fn lookup<'v>(root: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(root, |current, segment| match current {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// JSON equality where numbers compare by value (`1` equals `1.0`).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// An RFC 3339 timestamp.
pub fn parse_timestamp(text: &str) -> Option<UnixMicros> {
    UnixMicros::parse_rfc3339(text)
}

/// Parses a predicate at `path` (for example `$.where`).
pub fn parse(value: &Value, path: &str) -> Result<Predicate, DefinitionError> {
    let Value::Object(map) = value else {
        return Err(DefinitionError::new(path, format!("expected a predicate object, got {}", type_name(value)))
            .with_hint(FORM_HINT));
    };
    for combinator in ["all", "any", "not"] {
        if let Some(inner) = map.get(combinator) {
            if let Some(other) = map.keys().find(|k| k.as_str() != combinator) {
                return Err(DefinitionError::new(
                    path,
                    format!("\"{combinator}\" cannot be combined with \"{other}\" in one object"),
                )
                .with_hint(r#"nest them: {"all": [{...}, {...}]}"#));
            }
            let inner_path = format!("{path}.{combinator}");
            return match combinator {
                "not" => Ok(Predicate::Not(Box::new(parse(inner, &inner_path)?))),
                _ => {
                    let Value::Array(items) = inner else {
                        return Err(DefinitionError::new(
                            &inner_path,
                            format!("expected an array of predicates, got {}", type_name(inner)),
                        ));
                    };
                    if items.is_empty() {
                        return Err(DefinitionError::new(
                            &inner_path,
                            "expected at least one predicate, got an empty array",
                        ));
                    }
                    let parsed = items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| parse(item, &format!("{inner_path}[{i}]")))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(if combinator == "all" { Predicate::All(parsed) } else { Predicate::Any(parsed) })
                }
            };
        }
    }
    parse_condition(map, path).map(Predicate::Condition)
}

fn parse_condition(map: &serde_json::Map<String, Value>, path: &str) -> Result<Condition, DefinitionError> {
    let mut source = None;
    let mut op = None;
    for (key, operand) in map {
        match key.as_str() {
            "property" | "profile" => {
                if let Some((other, _)) = &source {
                    return Err(DefinitionError::new(
                        path,
                        format!(
                            "a condition names one of \"property\" or \"profile\", found \"{other}\" and \"{key}\""
                        ),
                    ));
                }
                source = Some((key.as_str(), operand));
            }
            name if OPERATORS.contains(&name) => {
                if let Some((other, _)) = &op {
                    return Err(DefinitionError::new(
                        path,
                        format!("a condition has one operator, found \"{other}\" and \"{name}\""),
                    )
                    .with_hint(r#"combine conditions with {"all": [...]}"#));
                }
                op = Some((name, operand));
            }
            unknown => {
                return Err(
                    DefinitionError::new(path, format!("unknown operator \"{unknown}\"")).with_hint(OPERATOR_HINT)
                );
            }
        }
    }
    let Some((source_key, path_value)) = source else {
        return Err(
            DefinitionError::new(path, r#"expected "property" or "profile" naming what to test"#).with_hint(FORM_HINT)
        );
    };
    let Some((op_name, operand)) = op else {
        return Err(DefinitionError::new(path, "missing operator").with_hint(OPERATOR_HINT));
    };
    let source = if source_key == "property" { Source::Property } else { Source::Profile };
    let json_path = parse_path(path_value, &format!("{path}.{source_key}"))?;
    let op_path = format!("{path}.{op_name}");
    let op = match op_name {
        "eq" => Op::Eq(operand.clone()),
        "ne" => Op::Ne(operand.clone()),
        "in" => match operand {
            Value::Array(items) if !items.is_empty() => Op::In(items.clone()),
            Value::Array(_) => {
                return Err(DefinitionError::new(&op_path, "expected a non-empty array, got an empty array"))
            }
            other => {
                return Err(DefinitionError::new(
                    &op_path,
                    format!("expected a non-empty array, got {}", type_name(other)),
                ))
            }
        },
        "exists" => match operand {
            Value::Bool(b) => Op::Exists(*b),
            other => {
                return Err(DefinitionError::new(&op_path, format!("expected true or false, got {}", show(other))))
            }
        },
        "contains" => match operand {
            Value::String(_) | Value::Number(_) | Value::Bool(_) => Op::Contains(operand.clone()),
            other => {
                return Err(DefinitionError::new(
                    &op_path,
                    format!("expected a string, number or boolean, got {}", type_name(other)),
                ))
            }
        },
        cmp => {
            let comparison = match cmp {
                "lt" => Comparison::Lt,
                "lte" => Comparison::Lte,
                "gt" => Comparison::Gt,
                _ => Comparison::Gte,
            };
            Op::Compare(comparison, parse_operand(operand, &op_path)?)
        }
    };
    Ok(Condition { source, path: json_path, op })
}

fn parse_operand(value: &Value, path: &str) -> Result<Operand, DefinitionError> {
    let expected = || {
        DefinitionError::new(
            path,
            format!(r#"expected a number, an RFC 3339 timestamp or {{"ago": "<duration>"}}, got {}"#, show(value)),
        )
        .with_hint(r#"for example 100, "2026-01-01T00:00:00Z" or {"ago": "30d"}"#)
    };
    match value {
        Value::Number(n) => n.as_f64().map(Operand::Number).ok_or_else(expected),
        Value::String(s) => parse_timestamp(s).map(Operand::Timestamp).ok_or_else(expected),
        Value::Object(map) => {
            if let Some(unknown) = map.keys().find(|k| k.as_str() != "ago") {
                return Err(DefinitionError::new(&format!("{path}.{unknown}"), "unknown field")
                    .with_hint(r#"a relative time is {"ago": "<duration>"}"#));
            }
            let ago = map.get("ago").ok_or_else(expected)?;
            Ok(Operand::Ago(duration::parse(ago, &format!("{path}.ago"))?))
        }
        _ => Err(expected()),
    }
}

pub fn parse_path(value: &Value, path: &str) -> Result<Vec<String>, DefinitionError> {
    let hint = r#"a path is dotted keys, a number indexes an array: "cart.value", "items.0.sku", "$.address.city""#;
    let Value::String(text) = value else {
        return Err(
            DefinitionError::new(path, format!("expected a path string, got {}", type_name(value))).with_hint(hint)
        );
    };
    let trimmed = text.strip_prefix("$.").unwrap_or(text);
    let segments: Vec<String> = trimmed.split('.').map(str::to_string).collect();
    if trimmed.is_empty() || segments.iter().any(String::is_empty) {
        return Err(DefinitionError::new(path, format!("invalid path {}: empty segment", show(value))).with_hint(hint));
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn holds(predicate: Value, properties: Value) -> bool {
        let p = parse(&predicate, "$.where").unwrap();
        let occurred_at = parse_timestamp("2026-06-01T12:00:00Z").unwrap();
        p.holds(&Facts { properties: &properties, profile: &json!({"tier": "gold"}), occurred_at })
    }

    #[test]
    fn operators_on_properties() {
        let props = json!({"cart": {"value": 150, "items": ["a", "gift"]}, "note": "hello world",
                           "at": "2026-05-30T00:00:00Z", "items": [{"sku": "x1"}], "nil": null});
        assert!(holds(json!({"property": "cart.value", "eq": 150.0}), props.clone()));
        assert!(!holds(json!({"property": "cart.value", "eq": "150"}), props.clone()));
        assert!(holds(json!({"property": "missing", "ne": 1}), props.clone()));
        assert!(holds(json!({"property": "cart.value", "in": [1, 150]}), props.clone()));
        assert!(holds(json!({"property": "cart.value", "gt": 100}), props.clone()));
        assert!(!holds(json!({"property": "cart.value", "lt": 150}), props.clone()));
        assert!(holds(json!({"property": "cart.value", "lte": 150}), props.clone()));
        assert!(holds(json!({"property": "cart.value", "gte": 150}), props.clone()));
        assert!(!holds(json!({"property": "note", "gt": 1}), props.clone()));
        assert!(holds(json!({"property": "at", "lt": "2026-06-01T00:00:00Z"}), props.clone()));
        assert!(holds(json!({"property": "at", "gt": {"ago": "3d"}}), props.clone()));
        assert!(!holds(json!({"property": "at", "gt": {"ago": "1d"}}), props.clone()));
        assert!(holds(json!({"property": "nil", "exists": false}), props.clone()));
        assert!(holds(json!({"property": "note", "exists": true}), props.clone()));
        assert!(holds(json!({"property": "note", "contains": "world"}), props.clone()));
        assert!(holds(json!({"property": "cart.items", "contains": "gift"}), props.clone()));
        assert!(holds(json!({"property": "$.items.0.sku", "eq": "x1"}), props.clone()));
        assert!(holds(json!({"profile": "tier", "eq": "gold"}), props.clone()));
        assert!(holds(
            json!({"all": [{"property": "cart.value", "gt": 1}, {"not": {"any": [{"property": "note", "eq": "x"}]}}]}),
            props
        ));
    }

    #[test]
    fn errors_name_the_path() {
        let cases = [
            (json!({"property": "a", "greater": 1}), "$.where", "unknown operator \"greater\""),
            (json!({"property": "a", "gt": "lots"}), "$.where.gt", "expected a number"),
            (json!({"all": []}), "$.where.all", "at least one"),
            (json!({"any": [{"property": "a", "in": 3}]}), "$.where.any[0].in", "non-empty array"),
            (json!({"property": "a..b", "eq": 1}), "$.where.property", "empty segment"),
            (json!({"property": "a", "eq": 1, "ne": 2}), "$.where", "one operator"),
            (json!({"eq": 1}), "$.where", "\"property\" or \"profile\""),
            (json!({"property": "a", "gt": {"ago": "soon"}}), "$.where.gt.ago", "duration"),
            (json!([1]), "$.where", "predicate object"),
        ];
        for (definition, path, text) in cases {
            let err = parse(&definition, "$.where").unwrap_err();
            assert_eq!(err.path, path, "{definition}");
            assert!(err.problem.contains(text), "{definition}: {err}");
        }
    }
}
