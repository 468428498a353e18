//! The trigger-definition language: a JSON object in, a validated `Definition` out.
//!
//! Validation walks the JSON by hand (after serde_json has parsed it) so that every error names
//! the exact JSON path and what was expected there; serde's derive would report Rust-shaped
//! messages. Nothing here touches the database, so `cargo test` covers it directly.

pub mod compiled;
pub mod duration;
pub mod error;
pub mod journey;
pub mod occasion;
pub mod pattern;
pub mod predicate;

pub use error::DefinitionError;
pub use predicate::{Facts, Predicate, Source};

use error::{show, type_name};
use serde_json::{Map, Value};

const FIELDS: &[&str] = &[
    "event",
    "where",
    "action",
    "priority",
    "cap",
    "wait",
    "cancel_on",
    "holdout",
    "category",
    "variants",
    "goal",
    "description",
    "inactive",
    "anniversary",
    "date",
    "crosses",
    "predicted",
    "backfill",
    "pattern",
    "steps",
    "exit",
    "reentry",
    "escalate",
];
const GOAL_FIELDS: &[&str] = &["event", "within", "value"];
const VARIANT_FIELDS: &[&str] = &["name", "weight", "wait", "channel", "template", "payload"];
const CANCEL_FIELDS: &[&str] = &["event", "same"];
const ACTION_FIELDS: &[&str] = &["channel", "fallback", "template", "payload"];
const CAP_FIELDS: &[&str] = &["max", "per"];
const ESCALATE_FIELDS: &[&str] = &["when", "action"];

/// A delivery channel an action can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Email,
    Sms,
    Whatsapp,
    Push,
    Webhook,
}

impl Channel {
    /// Every channel; SQL's domain engage.channel lists the same (a pg_test compares them).
    pub const ALL: [Channel; 5] = [Channel::Email, Channel::Sms, Channel::Whatsapp, Channel::Push, Channel::Webhook];

    pub fn parse(name: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Whatsapp => "whatsapp",
            Channel::Push => "push",
            Channel::Webhook => "webhook",
        }
    }
}

/// Which channel an action uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelChoice {
    Fixed(Channel),
    /// The customer's `preferred_channel`, else the first fallback.
    Preferred,
}

/// What to queue when the trigger fires.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub channel: ChannelChoice,
    /// Channels to try next, in order, when the chosen one has no address or consent or fails
    /// permanently.
    pub fallback: Vec<Channel>,
    pub template: Option<String>,
    /// The payload object as JSON text, serialised once so the insert path does not redo it.
    pub payload: String,
}

/// At most `max` fired decisions per customer per rolling window of `per_micros` of event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    pub max: i64,
    pub per_micros: i64,
}

/// A pending message is cancelled when the same customer has an `event` before it is due whose
/// properties at each `same` path equal the triggering event's.
#[derive(Debug, Clone, PartialEq)]
pub struct CancelOn {
    pub event: String,
    pub same: Vec<Vec<String>>,
}

/// Marketing messages obey consent opt-outs, frequency caps, conflicts and quiet hours;
/// transactional ones (an order confirmation, a password reset) bypass all four. Both obey the
/// suppression list and the trigger's own cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    Marketing,
    Transactional,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Marketing => "marketing",
            Category::Transactional => "transactional",
        }
    }
}

/// One arm of a timing or content experiment: its own wait and action (the trigger's, with this
/// variant's channel, template and payload where it names them), drawn with `weight`.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub name: String,
    pub weight: f64,
    pub wait_micros: i64,
    pub action: Action,
}

/// What counts as a conversion for a trigger: a goal event by the same customer within a window
/// after the message (or, for uplift, after the triggering event), worth the value at a property.
/// Only the analytics views read it (as JSON); it is validated here like everything else.
#[derive(Debug, Clone, PartialEq)]
pub struct Goal {
    pub event: String,
    pub within_micros: i64,
    pub value: Option<Vec<String>>,
}

/// A second action for a human (a sales or support webhook), decided on its own when `when`
/// holds for a match.
#[derive(Debug, Clone, PartialEq)]
pub struct Escalation {
    pub when: Option<Predicate>,
    pub action: Action,
}

/// A validated trigger definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    pub events: Vec<String>,
    pub predicate: Option<Predicate>,
    pub action: Action,
    pub priority: i32,
    pub cap: Option<Cap>,
    /// Delay after the event's occurred_at, microseconds (0: due at once).
    pub wait_micros: i64,
    pub cancel_on: Vec<CancelOn>,
    /// Share of customers in the control group (0 = none).
    pub holdout: f64,
    pub category: Category,
    /// Experiment arms; empty when the trigger runs no experiment.
    pub variants: Vec<Variant>,
    pub goal: Option<Goal>,
    /// Set for triggers that fire on time, a threshold or a prediction rather than on `events`
    /// (which is then empty).
    pub occasion: Option<occasion::Occasion>,
    /// Set for triggers that fire when a pattern of events completes (`events` is then empty).
    pub pattern: Option<pattern::Pattern>,
    /// The steps of a journey after the first (the first is `action`, `wait_micros`, `cancel_on`).
    pub later_steps: Vec<journey::Step>,
    /// A journey's exit events (also among its waiting steps' `cancel_on`).
    pub exit: Vec<CancelOn>,
    pub reentry: journey::Reentry,
    pub escalate: Option<Escalation>,
    /// An inactive or predicted trigger also fires for customers already in that state when it
    /// is created (the scheduler starts it at the beginning of time).
    pub backfill: bool,
}

impl Definition {
    /// Whether matching needs the event's properties or the customer's profile.
    pub fn uses(&self, source: Source) -> bool {
        let preferred = source == Source::Profile && self.action.channel == ChannelChoice::Preferred;
        let correlated = source == Source::Property
            && (self
                .cancel_on
                .iter()
                .chain(self.later_steps.iter().flat_map(|s| &s.cancel_on))
                .any(|c| !c.same.is_empty())
                || self.pattern.as_ref().is_some_and(|p| !p.same.is_empty()));
        let escalation = self.escalate.as_ref().and_then(|e| e.when.as_ref()).is_some_and(|w| w.uses(source));
        preferred || correlated || escalation || self.predicate.as_ref().is_some_and(|p| p.uses(source))
    }

    /// How long after its entry event a journey lasts at most: its last step's wait.
    pub fn journey_micros(&self) -> i64 {
        self.later_steps.last().map_or(self.wait_micros, |s| s.wait_micros)
    }

    /// Whether the definition matches an event, given its facts.
    pub fn matches(&self, facts: &Facts) -> bool {
        self.predicate.as_ref().is_none_or(|p| p.holds(facts))
    }

    /// How far back in event time deciding this trigger reads stored events and decisions, in
    /// microseconds ([`journey::FOREVER_MICROS`]: all of it). History older than this (and than
    /// every other trigger's need) can be deleted without changing a decision:
    /// - its cap (and `reentry once_per`, `once` being forever): decisions on either side;
    /// - its pattern's window and `not_followed_by`; a late event completes a stored one;
    /// - its waits (the message's, every variant's and step's): a late triggering event is
    ///   cancelled by a stored cancelling event within the wait;
    /// - its goal window (attribution reads the goal events after a message);
    /// - scheduled kinds: the inactivity period, the summed window of `crosses`, a year of the
    ///   occasions' own events for `anniversary` and `date` (their idempotency keys), and all
    ///   purchases for `predicted` (the model fits whole histories).
    pub fn history_needed_micros(&self) -> i64 {
        const YEAR_MICROS: i64 = 366 * 86_400_000_000;
        let waits = self.variants.iter().map(|v| v.wait_micros).chain(self.later_steps.iter().map(|s| s.wait_micros));
        let pattern = self
            .pattern
            .as_ref()
            .map(|p| p.within_micros.max(p.not_followed_by.as_ref().map_or(0, |n| n.within_micros)));
        let occasion = self.occasion.as_ref().map(|s| match s {
            occasion::Occasion::Inactive { for_micros, .. } => *for_micros,
            occasion::Occasion::Crosses { measure: occasion::Measure::Sum { within_micros, .. }, .. } => *within_micros,
            occasion::Occasion::Crosses { measure: occasion::Measure::Profile(_), .. } => 0,
            occasion::Occasion::Anniversary { .. } | occasion::Occasion::Date { .. } => YEAR_MICROS,
            occasion::Occasion::Predicted { .. } => journey::FOREVER_MICROS,
        });
        [
            self.cap.map(|c| c.per_micros),
            Some(self.wait_micros),
            pattern,
            self.goal.as_ref().map(|g| g.within_micros),
            occasion,
        ]
        .into_iter()
        .flatten()
        .chain(waits)
        .max()
        .unwrap_or(0)
    }
}

/// A definition holds at most this many JSON values (objects, arrays and scalars together).
pub const MAX_VALUES: usize = 10_000;
/// A definition nests objects and arrays at most this deep (`$` is depth 1).
pub const MAX_DEPTH: usize = 32;
/// A trigger listens to at most this many event names.
pub const MAX_EVENT_NAMES: usize = 100;

/// Refuses a definition too large or too deep to be bounded work on every insert, before any
/// part of it is read.
fn check_bounds(value: &Value) -> Result<(), DefinitionError> {
    let mut values = 0usize;
    let mut pending: Vec<(&Value, usize, String)> = vec![(value, 1, "$".to_string())];
    while let Some((v, depth, path)) = pending.pop() {
        values += 1;
        if values > MAX_VALUES {
            return Err(DefinitionError::new("$", format!("a definition holds at most {MAX_VALUES} JSON values"))
                .with_hint("split it into several triggers"));
        }
        let children: Vec<(&Value, String)> = match v {
            Value::Array(items) => items.iter().enumerate().map(|(i, c)| (c, format!("{path}[{i}]"))).collect(),
            Value::Object(map) => map.iter().map(|(k, c)| (c, format!("{path}.{}", error::excerpt(k)))).collect(),
            _ => continue,
        };
        if depth >= MAX_DEPTH && !children.is_empty() {
            return Err(DefinitionError::new(&path, format!("nested deeper than {MAX_DEPTH} levels"))
                .with_hint("a predicate rarely needs more than a few levels of all/any/not"));
        }
        pending.extend(children.into_iter().map(|(c, p)| (c, depth + 1, p)));
    }
    Ok(())
}

/// Validates a definition and returns its typed form, or the first problem found.
pub fn parse(value: &Value) -> Result<Definition, DefinitionError> {
    check_bounds(value)?;
    let map = object(value, "$")?;
    reject_unknown(map, "$", FIELDS)?;
    let occasion = occasion::parse(map)?;
    let pattern = map.get("pattern").map(pattern::parse).transpose()?;
    let events = match (&occasion, &pattern) {
        (None, None) => parse_events(required(map, "$", "event")?)?,
        _ => Vec::new(),
    };
    let predicate = map.get("where").map(|w| predicate::parse(w, "$.where")).transpose()?;
    let journey = map.contains_key("steps");
    if journey {
        for (field, why) in [
            ("action", "each step has its own action"),
            ("wait", "each step has its own wait"),
            ("variants", "variants are not supported on journeys"),
            ("cancel_on", "use \"exit\" (ends the whole journey) or a step's own cancel_on"),
        ] {
            if map.contains_key(field) {
                return Err(DefinitionError::new(&format!("$.{field}"), format!("not allowed with \"steps\": {why}")));
            }
        }
    } else if map.contains_key("exit") {
        return Err(DefinitionError::new("$.exit", "\"exit\" ends a journey: it needs \"steps\"")
            .with_hint("a single delayed message is cancelled with \"cancel_on\""));
    }
    let (mut steps, exit) = if journey { journey::parse_steps(map)? } else { (Vec::new(), Vec::new()) };
    let action_value = if journey { &map["steps"][0]["action"] } else { required(map, "$", "action")? };
    let action = if journey { steps[0].action.clone() } else { parse_action(action_value)? };
    let priority = match map.get("priority") {
        None => 0,
        Some(v) => v
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| DefinitionError::new("$.priority", format!("expected an integer, got {}", show(v))))?,
    };
    let mut cap = map.get("cap").map(parse_cap).transpose()?;
    let mut wait_micros = map.get("wait").map(|w| duration::parse(w, "$.wait")).transpose()?.unwrap_or(0);
    let mut cancel_on = match map.get("cancel_on") {
        None => Vec::new(),
        Some(v) => parse_cancel_list(v, "$.cancel_on")?,
    };
    if journey {
        let first = steps.remove(0);
        wait_micros = first.wait_micros;
        cancel_on = first.cancel_on;
    }
    if let Some(nfb) = pattern.as_ref().and_then(|p| p.not_followed_by.as_ref()) {
        if map.contains_key("wait") || journey {
            return Err(DefinitionError::new(
                "$.pattern.not_followed_by",
                "sets the wait itself: it cannot be combined with \"wait\" or \"steps\"",
            )
            .with_hint(
                "not_followed_by {event, within} is the same as \"wait\": within plus \"cancel_on\": [{event}]",
            ));
        }
        wait_micros = nfb.within_micros;
        cancel_on.push(CancelOn { event: nfb.event.clone(), same: nfb.same.clone() });
    }
    let reentry = journey::parse_reentry(map.get("reentry"), journey)?;
    if let journey::Reentry::OncePer(per_micros) = reentry {
        if cap.is_some() {
            return Err(DefinitionError::new(
                "$.reentry",
                "\"reentry\" and \"cap\" both limit how often a customer enters",
            )
            .with_hint("keep one: reentry {\"once_per\": \"7d\"} is cap {\"max\": 1, \"per\": \"7d\"}"));
        }
        let span = steps.last().map_or(wait_micros, |s| s.wait_micros);
        if journey && per_micros < span {
            return Err(DefinitionError::new(
                "$.reentry.once_per",
                format!(
                    "{}s is shorter than the journey ({}s to its last step): a customer could be in it twice at once",
                    per_micros / 1_000_000,
                    span / 1_000_000
                ),
            )
            .with_hint("make once_per at least as long as the last step's wait, or say \"always\" to allow overlapping journeys"));
        }
        cap = Some(Cap { max: 1, per_micros });
    }
    let escalate = map.get("escalate").map(parse_escalation).transpose()?;
    if !cancel_on.is_empty() && wait_micros == 0 {
        return Err(DefinitionError::new(
            "$.cancel_on",
            "cancel_on needs a \"wait\": a message due at once has nothing to wait for",
        )
        .with_hint(r#"add "wait": "2h" (the cancelling event must come within the wait)"#));
    }
    if let Some(d) = map.get("description") {
        if !d.is_string() {
            return Err(DefinitionError::new("$.description", format!("expected a string, got {}", type_name(d))));
        }
    }
    let holdout = match map.get("holdout") {
        None => 0.0,
        Some(v) => v.as_f64().filter(|h| (0.0..1.0).contains(h)).ok_or_else(|| {
            DefinitionError::new(
                "$.holdout",
                format!("expected a share from 0 up to (not including) 1, got {}", show(v)),
            )
            .with_hint("0.1 keeps 10% of customers in a control group that is recorded but not sent")
        })?,
    };
    let category = match map.get("category").map(|c| (c, c.as_str())) {
        None | Some((_, Some("marketing"))) => Category::Marketing,
        Some((_, Some("transactional"))) => Category::Transactional,
        Some((other, _)) => {
            return Err(DefinitionError::new("$.category", format!("unknown category {}", show(other)))
                .with_hint("categories are \"marketing\" (the default) and \"transactional\""))
        }
    };
    let variants = match map.get("variants") {
        None => Vec::new(),
        Some(v) => parse_variants(v, action_value, wait_micros)?,
    };
    let goal = map.get("goal").map(parse_goal).transpose()?;
    Ok(Definition {
        events,
        predicate,
        action,
        priority,
        cap,
        wait_micros,
        cancel_on,
        holdout,
        category,
        variants,
        goal,
        occasion,
        pattern,
        later_steps: steps,
        exit,
        reentry,
        escalate,
        backfill: map.get("backfill").and_then(Value::as_bool).unwrap_or(false),
    })
}

/// Parses a non-empty array of cancel conditions (`cancel_on`, `exit`).
fn parse_cancel_list(value: &Value, path: &str) -> Result<Vec<CancelOn>, DefinitionError> {
    match value {
        Value::Array(items) if items.len() > MAX_EVENT_NAMES => Err(DefinitionError::new(
            "$.event",
            format!("a trigger listens to at most {MAX_EVENT_NAMES} event names, got {}", items.len()),
        )),
        Value::Array(items) if !items.is_empty() => {
            items.iter().enumerate().map(|(i, item)| parse_cancel_on(item, &format!("{path}[{i}]"))).collect()
        }
        other => Err(DefinitionError::new(path, format!("expected a non-empty array, got {}", show(other)))
            .with_hint(r#"for example [{"event": "order_completed", "same": ["cart_id"]}]"#)),
    }
}

/// Parses `escalate`: a webhook action for a team, and the condition under which it is sent.
fn parse_escalation(value: &Value) -> Result<Escalation, DefinitionError> {
    let map = object(value, "$.escalate")?;
    reject_unknown(map, "$.escalate", ESCALATE_FIELDS)?;
    let when = map.get("when").map(|w| predicate::parse(w, "$.escalate.when")).transpose()?;
    let action =
        parse_action(required(map, "$.escalate", "action")?).map_err(|e| e.rerooted_at("$.escalate.action"))?;
    if action.channel != ChannelChoice::Fixed(Channel::Webhook) || !action.fallback.is_empty() {
        return Err(DefinitionError::new("$.escalate.action.channel", "an escalation goes to a team: use \"webhook\"")
            .with_hint("point the webhook channel at the sales or support tool (CRM, chat, ticketing)"));
    }
    Ok(Escalation { when, action })
}

/// Parses `variants`: at least two arms with unique names and positive weights; each arm's action
/// is the trigger's action with the arm's own channel, template and payload put over it.
fn parse_variants(value: &Value, action: &Value, default_wait: i64) -> Result<Vec<Variant>, DefinitionError> {
    let hint = r#"for example [{"name": "1h", "wait": "1h"}, {"name": "6h", "wait": "6h"}]"#;
    let items = match value {
        Value::Array(items) if items.len() >= 2 => items,
        other => {
            return Err(DefinitionError::new(
                "$.variants",
                format!("expected an array of at least two variants, got {}", show(other)),
            )
            .with_hint(hint))
        }
    };
    let mut variants: Vec<Variant> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("$.variants[{i}]");
        let map = object(item, &path)?;
        reject_unknown(map, &path, VARIANT_FIELDS)?;
        let name = match required(map, &path, "name")? {
            Value::String(s) if !s.trim().is_empty() && s.len() <= 100 => s.clone(),
            other => {
                return Err(DefinitionError::new(
                    &format!("{path}.name"),
                    format!("expected a name of 1 to 100 characters, got {}", show(other)),
                ))
            }
        };
        if variants.iter().any(|v| v.name == name) {
            return Err(DefinitionError::new(&format!("{path}.name"), format!("variant \"{name}\" is listed twice")));
        }
        let weight = match map.get("weight") {
            None => 1.0,
            Some(w) => w.as_f64().filter(|w| *w > 0.0 && w.is_finite()).ok_or_else(|| {
                DefinitionError::new(&format!("{path}.weight"), format!("expected a positive number, got {}", show(w)))
            })?,
        };
        let wait_micros =
            map.get("wait").map(|w| duration::parse(w, &format!("{path}.wait"))).transpose()?.unwrap_or(default_wait);
        let mut merged = action.clone();
        if let Value::Object(target) = &mut merged {
            for key in ["channel", "template", "payload"] {
                if let Some(v) = map.get(key) {
                    target.insert(key.to_string(), v.clone());
                }
            }
            if let (Some(channel), Some(Value::Array(fallback))) = (map.get("channel"), target.get_mut("fallback")) {
                fallback.retain(|f| f != channel);
            }
        }
        let action = parse_action(&merged).map_err(|e| e.rerooted_at(&path))?;
        variants.push(Variant { name, weight, wait_micros, action });
    }
    Ok(variants)
}

fn object<'v>(value: &'v Value, path: &str) -> Result<&'v Map<String, Value>, DefinitionError> {
    value
        .as_object()
        .ok_or_else(|| DefinitionError::new(path, format!("expected a JSON object, got {}", type_name(value))))
}

fn required<'v>(map: &'v Map<String, Value>, path: &str, field: &str) -> Result<&'v Value, DefinitionError> {
    map.get(field).ok_or_else(|| DefinitionError::new(path, format!("missing required field \"{field}\"")))
}

fn reject_unknown(map: &Map<String, Value>, path: &str, allowed: &[&str]) -> Result<(), DefinitionError> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(DefinitionError::new(&format!("{path}.{unknown}"), "unknown field")
            .with_hint(format!("fields are {}", allowed.join(", ")))),
        None => Ok(()),
    }
}

fn parse_events(value: &Value) -> Result<Vec<String>, DefinitionError> {
    let name = |v: &Value, path: &str| match v {
        Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
        other => Err(DefinitionError::new(path, format!("expected a non-empty event name, got {}", show(other)))),
    };
    match value {
        Value::Array(items) if items.len() > MAX_EVENT_NAMES => Err(DefinitionError::new(
            "$.event",
            format!("a trigger listens to at most {MAX_EVENT_NAMES} event names, got {}", items.len()),
        )),
        Value::Array(items) if !items.is_empty() => {
            items.iter().enumerate().map(|(i, v)| name(v, &format!("$.event[{i}]"))).collect()
        }
        Value::Array(_) => Err(DefinitionError::new("$.event", "expected at least one event name, got an empty array")),
        other => Ok(vec![name(other, "$.event")?]),
    }
}

fn parse_action(value: &Value) -> Result<Action, DefinitionError> {
    let map = object(value, "$.action")?;
    reject_unknown(map, "$.action", ACTION_FIELDS)?;
    let channel_value = required(map, "$.action", "channel")?;
    let names: Vec<&str> = Channel::ALL.iter().map(|c| c.as_str()).collect();
    let unknown = |path: &str, value: &Value| {
        DefinitionError::new(path, format!("unknown channel {}", show(value))).with_hint(format!(
            "channels are {}, or \"preferred\" for the customer's preferred channel",
            names.join(", ")
        ))
    };
    let channel = match channel_value.as_str() {
        Some("preferred") => ChannelChoice::Preferred,
        Some(name) => {
            ChannelChoice::Fixed(Channel::parse(name).ok_or_else(|| unknown("$.action.channel", channel_value))?)
        }
        None => return Err(unknown("$.action.channel", channel_value)),
    };
    let fallback = match map.get("fallback") {
        None => Vec::new(),
        Some(Value::Array(items)) => {
            let mut channels = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let path = format!("$.action.fallback[{i}]");
                let c = item.as_str().and_then(Channel::parse).ok_or_else(|| unknown(&path, item))?;
                if channels.contains(&c) || channel == ChannelChoice::Fixed(c) {
                    return Err(DefinitionError::new(&path, format!("channel \"{}\" is listed twice", c.as_str())));
                }
                channels.push(c);
            }
            channels
        }
        Some(other) => {
            return Err(DefinitionError::new(
                "$.action.fallback",
                format!("expected an array of channels, got {}", type_name(other)),
            ))
        }
    };
    if channel == ChannelChoice::Preferred && fallback.is_empty() {
        return Err(DefinitionError::new("$.action", "channel \"preferred\" needs a non-empty \"fallback\" list")
            .with_hint("the first fallback is used for customers without a preferred channel"));
    }
    let template =
        match map.get("template") {
            None if channel == ChannelChoice::Fixed(Channel::Webhook) && fallback.is_empty() => None,
            None => return Err(DefinitionError::new("$.action", "missing required field \"template\"").with_hint(
                "every channel but webhook needs a template name (templates are per channel, looked up by this name)",
            )),
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            Some(other) => {
                return Err(DefinitionError::new(
                    "$.action.template",
                    format!("expected a template name, got {}", show(other)),
                ))
            }
        };
    let payload = match map.get("payload") {
        None => "{}".to_string(),
        Some(p @ Value::Object(_)) => p.to_string(),
        Some(other) => {
            return Err(DefinitionError::new(
                "$.action.payload",
                format!("expected an object, got {}", type_name(other)),
            ))
        }
    };
    Ok(Action { channel, fallback, template, payload })
}

fn parse_cancel_on(value: &Value, path: &str) -> Result<CancelOn, DefinitionError> {
    let map = object(value, path)?;
    reject_unknown(map, path, CANCEL_FIELDS)?;
    let event = parse_event_name(required(map, path, "event")?, &format!("{path}.event"))?;
    Ok(CancelOn { event, same: parse_same(map, path)? })
}

/// Parses the optional `same` list of property paths of a cancel condition at `path`.
fn parse_same(map: &Map<String, Value>, path: &str) -> Result<Vec<Vec<String>>, DefinitionError> {
    match map.get("same") {
        None => Ok(Vec::new()),
        Some(Value::Array(paths)) => {
            paths.iter().enumerate().map(|(i, p)| predicate::parse_path(p, &format!("{path}.same[{i}]"))).collect()
        }
        Some(other) => Err(DefinitionError::new(
            &format!("{path}.same"),
            format!("expected an array of property paths, got {}", type_name(other)),
        )),
    }
}

/// Parses an event name (a non-empty string) at `path`: the one definition, for every part of the
/// language that names an event.
fn parse_event_name(value: &Value, path: &str) -> Result<String, DefinitionError> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
        other => Err(DefinitionError::new(path, format!("expected an event name, got {}", show(other)))),
    }
}

fn parse_goal(value: &Value) -> Result<Goal, DefinitionError> {
    let map = object(value, "$.goal")?;
    reject_unknown(map, "$.goal", GOAL_FIELDS)?;
    let event = parse_event_name(required(map, "$.goal", "event")?, "$.goal.event")?;
    let within_micros = duration::parse(required(map, "$.goal", "within")?, "$.goal.within")?;
    let value = map.get("value").map(|v| predicate::parse_path(v, "$.goal.value")).transpose()?;
    Ok(Goal { event, within_micros, value })
}

fn parse_cap(value: &Value) -> Result<Cap, DefinitionError> {
    let map = object(value, "$.cap")?;
    reject_unknown(map, "$.cap", CAP_FIELDS)?;
    let max_value = required(map, "$.cap", "max")?;
    let max = max_value.as_i64().filter(|m| *m >= 1).ok_or_else(|| {
        DefinitionError::new("$.cap.max", format!("expected an integer of at least 1, got {}", show(max_value)))
    })?;
    let per_micros = duration::parse(required(map, "$.cap", "per")?, "$.cap.per")?;
    Ok(Cap { max, per_micros })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_full_definition_parses() {
        let d = parse(&json!({
            "event": ["cart_updated", "cart_viewed"],
            "where": {"property": "cart.value", "gt": 100},
            "action": {"channel": "email", "template": "cart", "payload": {"coupon": "X"}},
            "priority": 10,
            "cap": {"max": 1, "per": "24h"},
            "description": "big carts"
        }))
        .unwrap();
        assert_eq!(d.events, vec!["cart_updated", "cart_viewed"]);
        assert_eq!(d.priority, 10);
        assert_eq!(d.cap, Some(Cap { max: 1, per_micros: 86_400_000_000 }));
        assert_eq!(d.action.channel, ChannelChoice::Fixed(Channel::Email));
        assert_eq!(d.action.payload, r#"{"coupon":"X"}"#);
        assert!(d.uses(Source::Property) && !d.uses(Source::Profile));
    }

    #[test]
    fn preferred_channel_with_fallback_reads_the_profile() {
        let d = parse(
            &json!({"event": "x", "action": {"channel": "preferred", "fallback": ["email", "sms"], "template": "t"}}),
        )
        .unwrap();
        assert_eq!(d.action.channel, ChannelChoice::Preferred);
        assert_eq!(d.action.fallback, vec![Channel::Email, Channel::Sms]);
        assert!(d.uses(Source::Profile));
    }

    #[test]
    fn wait_and_cancel_on_parse() {
        let d = parse(&json!({"event": "cart_updated", "wait": "2h",
            "cancel_on": [{"event": "order_completed", "same": ["cart.id"]}],
            "action": {"channel": "email", "template": "t"}}))
        .unwrap();
        assert_eq!(d.wait_micros, 7_200_000_000);
        assert_eq!(
            d.cancel_on,
            vec![CancelOn { event: "order_completed".into(), same: vec![vec!["cart".into(), "id".into()]] }]
        );
        assert!(d.uses(Source::Property));
        let err = parse(&json!({"event": "e", "wait": "1h", "cancel_on": [{"event": "x", "same": ["a..b"]}],
            "action": {"channel": "email", "template": "t"}}))
        .unwrap_err();
        assert_eq!(err.path, "$.cancel_on[0].same[0]");
    }

    #[test]
    fn variants_override_wait_channel_and_template() {
        let d = parse(&json!({"event": "cart_updated", "wait": "1h",
            "cancel_on": [{"event": "order_completed"}],
            "action": {"channel": "email", "fallback": ["sms"], "template": "cart"},
            "variants": [{"name": "1h"}, {"name": "6h", "wait": "6h", "weight": 3},
                         {"name": "sms", "channel": "sms", "template": "cart_sms"}]}))
        .unwrap();
        assert_eq!(d.category, Category::Marketing);
        let waits: Vec<i64> = d.variants.iter().map(|v| v.wait_micros / 3_600_000_000).collect();
        assert_eq!(waits, vec![1, 6, 1]);
        assert_eq!(d.variants[1].weight, 3.0);
        assert_eq!(d.variants[0].action, d.action);
        assert_eq!(d.variants[2].action.channel, ChannelChoice::Fixed(Channel::Sms));
        assert_eq!(d.variants[2].action.fallback, Vec::<Channel>::new());
        assert_eq!(d.variants[2].action.template.as_deref(), Some("cart_sms"));
    }

    #[test]
    fn a_goal_names_the_event_the_window_and_the_value() {
        let d = parse(&json!({"event": "cart", "action": {"channel": "webhook"},
            "goal": {"event": "purchase", "within": "7d", "value": "order.amount"}}))
        .unwrap();
        assert_eq!(
            d.goal,
            Some(Goal {
                event: "purchase".into(),
                within_micros: 7 * 86_400_000_000,
                value: Some(vec!["order".into(), "amount".into()])
            })
        );
    }

    #[test]
    fn a_journey_has_steps_an_exit_and_one_active_entry_by_default() {
        let d = parse(&json!({"event": "signed_up",
            "steps": [{"action": {"channel": "email", "template": "welcome"}},
                      {"wait": "2d", "action": {"channel": "email", "template": "tips"},
                       "cancel_on": [{"event": "tips_read"}]},
                      {"wait": "5d", "action": {"channel": "sms", "template": "offer"}}],
            "exit": [{"event": "purchase"}]}))
        .unwrap();
        assert_eq!(d.wait_micros, 0);
        assert!(d.cancel_on.is_empty(), "a step due at entry has nothing to exit from");
        assert_eq!(d.action.template.as_deref(), Some("welcome"));
        assert_eq!(d.later_steps.len(), 2);
        assert_eq!(d.later_steps[0].wait_micros, 2 * 86_400_000_000);
        let names = |s: &journey::Step| s.cancel_on.iter().map(|c| c.event.clone()).collect::<Vec<_>>();
        assert_eq!(names(&d.later_steps[0]), vec!["tips_read", "purchase"]);
        assert_eq!(names(&d.later_steps[1]), vec!["purchase"]);
        assert_eq!(d.reentry, journey::Reentry::AfterFinish);
        assert_eq!(d.cap, None);
    }

    #[test]
    fn reentry_once_is_a_cap_of_one_and_not_followed_by_is_a_wait_with_cancel() {
        let d =
            parse(&json!({"event": "e", "reentry": {"once_per": "30d"}, "action": {"channel": "webhook"}})).unwrap();
        assert_eq!(d.cap, Some(Cap { max: 1, per_micros: 30 * 86_400_000_000 }));
        assert_eq!(d.reentry, journey::Reentry::OncePer(30 * 86_400_000_000));
        let d = parse(&json!({"pattern": {"sequence": [{"event": "a"}, {"event": "b"}], "within": "1d",
                                          "not_followed_by": {"event": "c", "within": "2h", "same": ["id"]}},
                              "action": {"channel": "webhook"}}))
        .unwrap();
        assert!(d.events.is_empty());
        assert_eq!(d.wait_micros, 7_200_000_000);
        assert_eq!(d.cancel_on, vec![CancelOn { event: "c".into(), same: vec![vec!["id".into()]] }]);
        assert!(d.uses(Source::Property));
    }

    #[test]
    fn an_escalation_is_a_webhook_with_a_condition() {
        let d = parse(&json!({"event": "cart", "action": {"channel": "email", "template": "t"},
            "escalate": {"when": {"property": "value", "gte": 1000}, "action": {"channel": "webhook", "payload": {"team": "sales"}}}}))
        .unwrap();
        let e = d.escalate.unwrap();
        assert_eq!(e.action.payload, r#"{"team":"sales"}"#);
        assert!(e.when.is_some());
    }

    #[test]
    fn transactional_category_parses() {
        let d =
            parse(&json!({"event": "order", "category": "transactional", "action": {"channel": "webhook"}})).unwrap();
        assert_eq!(d.category, Category::Transactional);
    }

    #[test]
    fn webhook_needs_no_template() {
        let d = parse(&json!({"event": "x", "action": {"channel": "webhook"}})).unwrap();
        assert_eq!(d.action.template, None);
        assert_eq!(d.action.payload, "{}");
    }

    #[test]
    fn each_mistake_is_reported_at_its_path() {
        let base = || json!({"event": "e", "action": {"channel": "email", "template": "t"}});
        let with = |key: &str, v: Value| {
            let mut d = base();
            d[key] = v;
            d
        };
        let cases = [
            (json!([]), "$", "expected a JSON object"),
            (with("colour", json!(1)), "$.colour", "unknown field"),
            (json!({"action": {"channel": "email", "template": "t"}}), "$", "missing required field \"event\""),
            (json!({"event": "e"}), "$", "missing required field \"action\""),
            (with("event", json!([])), "$.event", "empty array"),
            (with("event", json!(["a", 2])), "$.event[1]", "event name"),
            (with("priority", json!("high")), "$.priority", "integer"),
            (with("cap", json!({"max": 0, "per": "1h"})), "$.cap.max", "at least 1"),
            (with("cap", json!({"max": 1, "per": "soon"})), "$.cap.per", "duration"),
            (with("cap", json!({"max": 1, "per": "-2h"})), "$.cap.per", "duration"),
            (with("cap", json!({"max": 1})), "$.cap", "missing required field \"per\""),
            (with("action", json!({"channel": "fax", "template": "t"})), "$.action.channel", "unknown channel"),
            (with("action", json!({"channel": "sms"})), "$.action", "\"template\""),
            (with("action", json!({"channel": "sms", "template": "t", "payload": []})), "$.action.payload", "object"),
            (with("action", json!({"channel": "preferred", "template": "t"})), "$.action", "fallback"),
            (
                with("action", json!({"channel": "email", "fallback": ["sms", "fax"], "template": "t"})),
                "$.action.fallback[1]",
                "unknown channel",
            ),
            (
                with("action", json!({"channel": "email", "fallback": ["email"], "template": "t"})),
                "$.action.fallback[0]",
                "twice",
            ),
            (with("where", json!({"property": "a", "gt": "lots"})), "$.where.gt", "expected a number"),
            (with("description", json!(5)), "$.description", "string"),
            (with("wait", json!("-2h")), "$.wait", "duration"),
            (with("holdout", json!(1)), "$.holdout", "share"),
            (with("holdout", json!("10%")), "$.holdout", "share"),
            (with("cancel_on", json!([{"event": "buy"}])), "$.cancel_on", "needs a \"wait\""),
            (with("cancel_on", json!([])), "$.cancel_on", "non-empty array"),
            (with("category", json!("promo")), "$.category", "unknown category"),
            (with("goal", json!({"within": "7d"})), "$.goal", "\"event\""),
            (with("goal", json!({"event": "buy"})), "$.goal", "\"within\""),
            (with("goal", json!({"event": "buy", "within": "soon"})), "$.goal.within", "duration"),
            (with("goal", json!({"event": "buy", "within": "1d", "value": "a..b"})), "$.goal.value", "empty segment"),
            (with("variants", json!([{"name": "a"}])), "$.variants", "at least two"),
            (with("variants", json!([{"name": "a"}, {"name": "a"}])), "$.variants[1].name", "twice"),
            (with("variants", json!([{"name": "a"}, {"weight": 1}])), "$.variants[1]", "\"name\""),
            (with("variants", json!([{"name": "a"}, {"name": "b", "weight": 0}])), "$.variants[1].weight", "positive"),
            (with("variants", json!([{"name": "a"}, {"name": "b", "wait": "0s"}])), "$.variants[1].wait", "positive"),
            (
                with("variants", json!([{"name": "a"}, {"name": "b", "channel": "fax"}])),
                "$.variants[1].channel",
                "unknown channel",
            ),
            (
                with("variants", json!([{"name": "a"}, {"name": "b", "colour": 1}])),
                "$.variants[1].colour",
                "unknown field",
            ),
            (
                with("pattern", json!({"count": {"event": "v", "at_least": 2}, "within": "1d"})),
                "$",
                "\"event\", \"pattern\" cannot be combined",
            ),
            (
                json!({"pattern": {"count": {"event": "v", "at_least": 2}}, "action": {"channel": "webhook"}}),
                "$.pattern",
                "\"within\"",
            ),
            (with("steps", json!([])), "$.action", "not allowed with \"steps\""),
            (json!({"event": "e", "steps": []}), "$.steps", "non-empty array"),
            (
                json!({"event": "e", "steps": [{"wait": "2d", "action": {"channel": "webhook"}},
                                               {"wait": "1d", "action": {"channel": "webhook"}}]}),
                "$.steps[1].wait",
                "due before step 0",
            ),
            (json!({"event": "e", "steps": [{"action": {"channel": "sms"}}]}), "$.steps[0].action", "\"template\""),
            (
                json!({"event": "e", "steps": [{"action": {"channel": "webhook"}, "cancel_on": [{"event": "x"}]}]}),
                "$.steps[0].cancel_on",
                "needs a \"wait\"",
            ),
            (
                json!({"event": "e", "steps": [{"action": {"channel": "webhook"}}], "cancel_on": [{"event": "x"}]}),
                "$.cancel_on",
                "exit",
            ),
            (with("exit", json!([{"event": "buy"}])), "$.exit", "needs \"steps\""),
            (
                json!({"event": "e", "steps": [{"action": {"channel": "webhook"}}, {"wait": "5d", "action": {"channel": "webhook"}}],
                       "reentry": {"once_per": "1d"}}),
                "$.reentry.once_per",
                "shorter than the journey",
            ),
            (with("reentry", json!("sometimes")), "$.reentry", "unknown reentry"),
            (with("reentry", json!("after_finish")), "$.reentry", "steps"),
            (
                json!({"event": "e", "reentry": "once", "cap": {"max": 1, "per": "1d"}, "action": {"channel": "webhook"}}),
                "$.reentry",
                "both limit",
            ),
            (
                with("escalate", json!({"action": {"channel": "email", "template": "t"}})),
                "$.escalate.action.channel",
                "webhook",
            ),
            (with("escalate", json!({"action": {"channel": "fax"}})), "$.escalate.action.channel", "unknown channel"),
            (
                with("escalate", json!({"when": {"property": "v", "gt": "x"}, "action": {"channel": "webhook"}})),
                "$.escalate.when.gt",
                "number",
            ),
            (
                json!({"pattern": {"sequence": [{"event": "a"}, {"event": "b"}], "within": "1d",
                                   "not_followed_by": {"event": "c", "within": "1h"}},
                       "wait": "2h", "action": {"channel": "webhook"}}),
                "$.pattern.not_followed_by",
                "cannot be combined",
            ),
        ];
        for (definition, path, text) in cases {
            let err = parse(&definition).unwrap_err();
            assert_eq!(err.path, path, "{definition}");
            assert!(err.problem.contains(text), "{definition}: {err}");
        }
    }

    #[test]
    fn history_needed_is_the_longest_window_a_decision_reads() {
        const DAY: i64 = 86_400_000_000;
        let needed = |definition: Value| parse(&definition).unwrap().history_needed_micros();
        let hook = json!({"channel": "webhook"});
        assert_eq!(needed(json!({"event": "a", "action": hook})), 0);
        assert_eq!(needed(json!({"event": "a", "action": hook, "cap": {"max": 1, "per": "40d"}})), 40 * DAY);
        assert_eq!(
            needed(json!({"event": "a", "action": hook, "wait": "2d", "cancel_on": [{"event": "b"}],
                          "goal": {"event": "buy", "within": "9d"}})),
            9 * DAY
        );
        assert_eq!(
            needed(json!({"pattern": {"sequence": [{"event": "a"}, {"event": "b"}], "within": "3d",
                                      "not_followed_by": {"event": "c", "within": "5d"}}, "action": hook})),
            5 * DAY
        );
        let journey = json!({"event": "a", "steps": [{"action": hook}, {"wait": "12d", "action": hook}]});
        assert_eq!(needed(journey.clone()), 12 * DAY);
        let mut once = journey;
        once["reentry"] = json!("once");
        assert_eq!(needed(once), journey::FOREVER_MICROS);
        assert_eq!(needed(json!({"inactive": {"event": "login", "for": "30d"}, "action": hook})), 30 * DAY);
        assert_eq!(
            needed(json!({"predicted": {"event": "purchase", "p_alive_below": 0.3}, "action": hook})),
            journey::FOREVER_MICROS
        );
    }
}
