//! Multi-step journeys (drip series): `steps`, each with its own wait (from the entry event),
//! action and cancel conditions; an `exit` that ends the journey; and the `reentry` policy.

use super::error::{show, DefinitionError};
use super::{duration, object, parse_action, parse_cancel_list, reject_unknown, required, Action, CancelOn};
use serde_json::{Map, Value};

const STEP_FIELDS: &[&str] = &["wait", "action", "cancel_on"];
const REENTRY_HINT: &str = r#"reentry is "always", "once", "after_finish" or {"once_per": "30d"}"#;

/// One step of a journey.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Delay from the entry event's occurred_at, microseconds.
    pub wait_micros: i64,
    pub action: Action,
    /// This step's own cancel conditions plus the journey's exit.
    pub cancel_on: Vec<CancelOn>,
}

/// When a customer may enter a trigger again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reentry {
    /// Every match enters (the default for single-message triggers).
    Always,
    /// Only while the customer is not in the journey, in event time: from an entry event until the
    /// last step's due time or the first exit event, whichever comes first (the default for
    /// journeys). Delivery has no say.
    AfterFinish,
    /// Once per window of event time (`once` is a window of forever).
    OncePer(i64),
}

/// A window long enough to mean "ever" (200 years), without overflow in window arithmetic.
pub const FOREVER_MICROS: i64 = 200 * 365 * 86_400_000_000;

/// Parses `steps` and `exit` into the steps (in order; each step that waits carries the exit
/// conditions) and the exit conditions.
pub fn parse_steps(map: &Map<String, Value>) -> Result<(Vec<Step>, Vec<CancelOn>), DefinitionError> {
    let exit = match map.get("exit") {
        None => Vec::new(),
        Some(v) => parse_cancel_list(v, "$.exit")?,
    };
    let items = match required(map, "$", "steps")? {
        Value::Array(items) if !items.is_empty() => items,
        other => {
            return Err(DefinitionError::new(
                "$.steps",
                format!("expected a non-empty array of steps, got {}", show(other)),
            )
            .with_hint(r#"for example [{"action": {...}}, {"wait": "2d", "action": {...}}]"#))
        }
    };
    let mut steps: Vec<Step> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("$.steps[{i}]");
        let step = object(item, &path)?;
        reject_unknown(step, &path, STEP_FIELDS)?;
        let wait_micros = match step.get("wait") {
            None => 0,
            Some(w) => duration::parse(w, &format!("{path}.wait"))?,
        };
        if let Some(previous) = steps.last().filter(|p| p.wait_micros > wait_micros) {
            return Err(DefinitionError::new(
                &format!("{path}.wait"),
                format!(
                    "step {i} would be due before step {} ({}s < {}s after entry)",
                    i - 1,
                    wait_micros / 1_000_000,
                    previous.wait_micros / 1_000_000
                ),
            )
            .with_hint("a step's wait counts from the entry event, so waits must not decrease"));
        }
        let action =
            parse_action(required(step, &path, "action")?).map_err(|e| e.rerooted_at(&format!("{path}.action")))?;
        let mut cancel_on = match step.get("cancel_on") {
            None => Vec::new(),
            Some(v) => parse_cancel_list(v, &format!("{path}.cancel_on"))?,
        };
        if !cancel_on.is_empty() && wait_micros == 0 {
            return Err(DefinitionError::new(
                &format!("{path}.cancel_on"),
                "cancel_on needs a \"wait\": a step due at entry has nothing to wait for",
            ));
        }
        // A step due at entry goes out with the entry event: there is nothing to exit from yet.
        if wait_micros > 0 {
            cancel_on.extend(exit.iter().cloned());
        }
        steps.push(Step { wait_micros, action, cancel_on });
    }
    Ok((steps, exit))
}

/// Parses `reentry`; `journey` picks the default.
pub fn parse_reentry(value: Option<&Value>, journey: bool) -> Result<Reentry, DefinitionError> {
    let bad =
        |v: &Value| DefinitionError::new("$.reentry", format!("unknown reentry {}", show(v))).with_hint(REENTRY_HINT);
    match value {
        None if journey => Ok(Reentry::AfterFinish),
        None => Ok(Reentry::Always),
        Some(Value::String(s)) => match s.as_str() {
            "always" => Ok(Reentry::Always),
            "once" => Ok(Reentry::OncePer(FOREVER_MICROS)),
            "after_finish" if journey => Ok(Reentry::AfterFinish),
            "after_finish" => Err(DefinitionError::new("$.reentry", "\"after_finish\" is for triggers with \"steps\"")
                .with_hint("a single message has finished once it is sent; use \"once\" or {\"once_per\": ...}")),
            _ => Err(bad(&Value::String(s.clone()))),
        },
        Some(Value::Object(m)) if m.len() == 1 && m.contains_key("once_per") => {
            Ok(Reentry::OncePer(duration::parse(&m["once_per"], "$.reentry.once_per")?))
        }
        Some(other) => Err(bad(other)),
    }
}
