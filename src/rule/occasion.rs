//! Occasions: what fires a trigger without a matching event of its own (inactivity, calendar
//! dates, thresholds crossed, predictions). A definition names one of these instead of `"event"`.
//! (The worker that ticks them is `crate::scheduler`.)
//!
//! They fire through a generated event named `trigger:<trigger name>` that engage.tick (or, for a
//! crossing, the statement that crossed) inserts with an idempotency key per customer and episode;
//! the insert path then decides it like any other event: `where`, caps, policy, holdout, wait.

use super::error::{show, DefinitionError};
use super::{duration, object, parse_event_name, predicate, reject_unknown, required};
use serde_json::Value;

/// The top-level fields that name a time-based or threshold trigger.
pub const KINDS: &[&str] = &["inactive", "anniversary", "date", "crosses", "predicted"];

const INACTIVE_FIELDS: &[&str] = &["event", "for"];
const ANNIVERSARY_FIELDS: &[&str] = &["date", "at"];
const DATE_FIELDS: &[&str] = &["date", "before", "after", "at"];
const CROSSES_FIELDS: &[&str] = &["profile", "event", "sum", "within", "at_least", "below"];
const PREDICTED_FIELDS: &[&str] = &["event", "p_alive_below", "min_purchases"];

/// What makes a scheduled trigger fire for a customer.
#[derive(Debug, Clone, PartialEq)]
pub enum Occasion {
    /// No `event` for `for_micros` since the customer's last one: once per inactivity episode.
    Inactive { event: String, for_micros: i64 },
    /// Every year on the month and day of the profile date at `date`, at `at` local time.
    Anniversary { date: Vec<String>, at: chrono::NaiveTime },
    /// Once, at the profile date at `date` moved by `offset_micros` (negative: before), at `at`
    /// local time.
    Date { date: Vec<String>, offset_micros: i64, at: chrono::NaiveTime },
    /// A profile attribute or a windowed sum of an event property crossing `level`.
    Crosses { measure: Measure, level: f64, upward: bool },
    /// P(alive) under the newest purchase model of `event` below `threshold`, for customers with
    /// at least `min_purchases` purchase days.
    Predicted { event: String, threshold: f64, min_purchases: i64 },
}

/// What a `crosses` trigger watches.
#[derive(Debug, Clone, PartialEq)]
pub enum Measure {
    Profile(Vec<String>),
    Sum { event: String, value: Vec<String>, within_micros: i64 },
}

impl Occasion {
    /// The event a windowed-sum crossing watches, if this is one.
    pub fn summed_event(&self) -> Option<&str> {
        match self {
            Occasion::Crosses { measure: Measure::Sum { event, .. }, .. } => Some(event),
            _ => None,
        }
    }
}

/// The name of the events a scheduled trigger fires through.
pub fn event_name_for(trigger_name: &str) -> String {
    format!("trigger:{trigger_name}")
}

/// Parses the scheduled kind named in `map`, if any; `$.backfill` is only valid with one.
pub fn parse(map: &serde_json::Map<String, Value>) -> Result<Option<Occasion>, DefinitionError> {
    let named: Vec<&str> = KINDS.iter().copied().filter(|k| map.contains_key(*k)).collect();
    let hint = "a trigger fires on \"event\", on a \"pattern\", or on one of \"inactive\", \"anniversary\", \"date\", \"crosses\", \"predicted\"";
    let on_events: Vec<&str> = ["event", "pattern"].into_iter().filter(|k| map.contains_key(*k)).collect();
    if named.len() + on_events.len() > 1 {
        let all: Vec<&str> = on_events.iter().chain(&named).copied().collect();
        return Err(DefinitionError::new("$", format!("\"{}\" cannot be combined", all.join("\", \""))).with_hint(hint));
    }
    if let Some(backfill) = map.get("backfill") {
        if !backfill.is_boolean() {
            return Err(DefinitionError::new("$.backfill", format!("expected true or false, got {}", show(backfill))));
        }
        if !named.iter().any(|k| matches!(*k, "inactive" | "predicted")) {
            return Err(DefinitionError::new("$.backfill", "only inactive and predicted triggers can backfill")
                .with_hint("backfill fires for customers already in that state when the trigger is created"));
        }
    }
    let Some(&kind) = named.first() else {
        return if !on_events.is_empty() {
            Ok(None)
        } else {
            Err(DefinitionError::new("$", "missing required field \"event\"").with_hint(hint))
        };
    };
    let path = format!("$.{kind}");
    let spec = object(&map[kind], &path)?;
    let occasion = match kind {
        "inactive" => {
            reject_unknown(spec, &path, INACTIVE_FIELDS)?;
            Occasion::Inactive {
                event: parse_event_name(required(spec, &path, "event")?, &format!("{path}.event"))?,
                for_micros: duration::parse(required(spec, &path, "for")?, &format!("{path}.for"))?,
            }
        }
        "anniversary" => {
            reject_unknown(spec, &path, ANNIVERSARY_FIELDS)?;
            Occasion::Anniversary {
                date: predicate::parse_path(required(spec, &path, "date")?, &format!("{path}.date"))?,
                at: time_of_day(spec.get("at"), &format!("{path}.at"))?,
            }
        }
        "date" => {
            reject_unknown(spec, &path, DATE_FIELDS)?;
            let offset_micros = match (spec.get("before"), spec.get("after")) {
                (Some(_), Some(_)) => {
                    return Err(DefinitionError::new(&path, "\"before\" and \"after\" cannot be combined")
                        .with_hint(r#"for example {"date": "renewal_date", "before": "7d"}"#))
                }
                (Some(b), None) => -duration::parse(b, &format!("{path}.before"))?,
                (None, Some(a)) => duration::parse(a, &format!("{path}.after"))?,
                (None, None) => 0,
            };
            Occasion::Date {
                date: predicate::parse_path(required(spec, &path, "date")?, &format!("{path}.date"))?,
                offset_micros,
                at: time_of_day(spec.get("at"), &format!("{path}.at"))?,
            }
        }
        "crosses" => {
            reject_unknown(spec, &path, CROSSES_FIELDS)?;
            let (level, upward) = match (spec.get("at_least"), spec.get("below")) {
                (Some(l), None) => (number(l, &format!("{path}.at_least"))?, true),
                (None, Some(l)) => (number(l, &format!("{path}.below"))?, false),
                _ => {
                    return Err(DefinitionError::new(&path, "expected exactly one of \"at_least\" and \"below\"")
                        .with_hint(r#"for example {"profile": "lead_score", "at_least": 80}"#))
                }
            };
            let measure = match (spec.get("profile"), spec.get("event")) {
                (Some(p), None) => {
                    for field in ["sum", "within"] {
                        if spec.contains_key(field) {
                            return Err(DefinitionError::new(
                                &format!("{path}.{field}"),
                                "only a crossing over events has this field",
                            ));
                        }
                    }
                    Measure::Profile(predicate::parse_path(p, &format!("{path}.profile"))?)
                }
                (None, Some(e)) => {
                    if !upward {
                        return Err(DefinitionError::new(&format!("{path}.below"), "a sum over events can only cross upward")
                            .with_hint("a windowed sum falls as time passes, not when an event arrives: use \"at_least\""));
                    }
                    Measure::Sum {
                        event: parse_event_name(e, &format!("{path}.event"))?,
                        value: predicate::parse_path(required(spec, &path, "sum")?, &format!("{path}.sum"))?,
                        within_micros: duration::parse(required(spec, &path, "within")?, &format!("{path}.within"))?,
                    }
                }
                _ => {
                    return Err(DefinitionError::new(&path, "expected exactly one of \"profile\" and \"event\"")
                        .with_hint(r#"{"profile": "lead_score", "at_least": 80} or {"event": "purchase", "sum": "amount", "within": "365d", "at_least": 1000}"#))
                }
            };
            Occasion::Crosses { measure, level, upward }
        }
        _ => {
            reject_unknown(spec, &path, PREDICTED_FIELDS)?;
            let threshold_value = required(spec, &path, "p_alive_below")?;
            let threshold = threshold_value.as_f64().filter(|t| *t > 0.0 && *t <= 1.0).ok_or_else(|| {
                DefinitionError::new(
                    &format!("{path}.p_alive_below"),
                    format!("expected a probability above 0 and at most 1, got {}", show(threshold_value)),
                )
            })?;
            let min_purchases = match spec.get("min_purchases") {
                None => 1,
                Some(v) => v.as_i64().filter(|m| *m >= 1).ok_or_else(|| {
                    DefinitionError::new(
                        &format!("{path}.min_purchases"),
                        format!("expected an integer of at least 1, got {}", show(v)),
                    )
                })?,
            };
            let event = match spec.get("event") {
                None => "purchase".to_string(),
                Some(e) => parse_event_name(e, &format!("{path}.event"))?,
            };
            Occasion::Predicted { event, threshold, min_purchases }
        }
    };
    Ok(Some(occasion))
}

fn number(value: &Value, path: &str) -> Result<f64, DefinitionError> {
    value
        .as_f64()
        .filter(|n| n.is_finite())
        .ok_or_else(|| DefinitionError::new(path, format!("expected a number, got {}", show(value))))
}

/// A local time of day, "HH:MM" or "HH:MM:SS"; 09:00 when absent.
fn time_of_day(value: Option<&Value>, path: &str) -> Result<chrono::NaiveTime, DefinitionError> {
    let Some(value) = value else {
        return Ok(chrono::NaiveTime::from_hms_opt(9, 0, 0).unwrap_or_default());
    };
    value
        .as_str()
        .and_then(|s| {
            chrono::NaiveTime::parse_from_str(s, "%H:%M")
                .or_else(|_| chrono::NaiveTime::parse_from_str(s, "%H:%M:%S"))
                .ok()
        })
        .ok_or_else(|| {
            DefinitionError::new(path, format!("expected a local time \"HH:MM\", got {}", show(value)))
                .with_hint("the time is in the customer's own time zone, for example \"09:00\"")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(v: Value) -> Result<Option<Occasion>, DefinitionError> {
        parse(v.as_object().unwrap())
    }

    #[test]
    fn each_kind_parses() {
        assert_eq!(
            parsed(json!({"inactive": {"event": "purchase", "for": "30d"}})).unwrap(),
            Some(Occasion::Inactive { event: "purchase".into(), for_micros: 30 * 86_400_000_000 })
        );
        assert_eq!(
            parsed(json!({"anniversary": {"date": "birthday"}})).unwrap(),
            Some(Occasion::Anniversary {
                date: vec!["birthday".into()],
                at: chrono::NaiveTime::from_hms_opt(9, 0, 0).unwrap()
            })
        );
        assert_eq!(
            parsed(json!({"date": {"date": "$.plan.renews_on", "before": "7d", "at": "18:30"}})).unwrap(),
            Some(Occasion::Date {
                date: vec!["plan".into(), "renews_on".into()],
                offset_micros: -7 * 86_400_000_000,
                at: chrono::NaiveTime::from_hms_opt(18, 30, 0).unwrap()
            })
        );
        assert_eq!(
            parsed(json!({"crosses": {"profile": "lead_score", "at_least": 80}})).unwrap(),
            Some(Occasion::Crosses { measure: Measure::Profile(vec!["lead_score".into()]), level: 80.0, upward: true })
        );
        assert!(matches!(
            parsed(json!({"crosses": {"event": "purchase", "sum": "amount", "within": "365d", "at_least": 1000}})),
            Ok(Some(Occasion::Crosses { measure: Measure::Sum { .. }, upward: true, .. }))
        ));
        assert_eq!(
            parsed(json!({"predicted": {"p_alive_below": 0.3, "min_purchases": 2}})).unwrap(),
            Some(Occasion::Predicted { event: "purchase".into(), threshold: 0.3, min_purchases: 2 })
        );
        assert_eq!(parsed(json!({"event": "x"})).unwrap(), None);
    }

    #[test]
    fn bad_definitions_name_the_field() {
        let cases = [
            (json!({"event": "x", "inactive": {"event": "y", "for": "1d"}}), "$", "cannot be combined"),
            (json!({}), "$", "missing required field \"event\""),
            (json!({"inactive": {"event": "y", "for": "-3d"}}), "$.inactive.for", "duration"),
            (json!({"inactive": {"for": "3d"}}), "$.inactive", "missing required field \"event\""),
            (json!({"anniversary": {"date": "birthday", "at": "25:00"}}), "$.anniversary.at", "local time"),
            (json!({"date": {"date": "d", "before": "1d", "after": "1d"}}), "$.date", "cannot be combined"),
            (json!({"crosses": {"profile": "s"}}), "$.crosses", "at_least"),
            (json!({"crosses": {"profile": "s", "at_least": "high"}}), "$.crosses.at_least", "expected a number"),
            (json!({"crosses": {"event": "p", "sum": "a", "within": "1d", "below": 3}}), "$.crosses.below", "upward"),
            (json!({"crosses": {"profile": "s", "within": "1d", "at_least": 3}}), "$.crosses.within", "only"),
            (json!({"predicted": {"p_alive_below": 1.5}}), "$.predicted.p_alive_below", "probability"),
            (
                json!({"predicted": {"p_alive_below": 0.2, "min_purchases": 0}}),
                "$.predicted.min_purchases",
                "at least 1",
            ),
            (json!({"event": "x", "backfill": true}), "$.backfill", "only inactive and predicted"),
            (json!({"anniversary": {"date": "d"}, "backfill": true}), "$.backfill", "only inactive and predicted"),
            (json!({"inactive": {"event": "y", "for": "1d"}, "backfill": "yes"}), "$.backfill", "true or false"),
        ];
        for (definition, path, problem) in cases {
            let err = parsed(definition.clone()).unwrap_err();
            assert_eq!(err.path, path, "{definition}: {err}");
            assert!(err.problem.contains(problem), "{definition}: {err}");
        }
    }
}
